"""``fengchao serve`` as an operator runs it: embedded database, signals, restarts, sharing."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fengchao_chains.catalog import load_catalog
from fengchao_chains.db.migrate import discover_migrations
from tests.processes import ServeProcess, clean_env, postgres_running_on, run_cli, wait_until
from tests.sdk import run_sdk

# /aigc/models/ item fields and the types the fengchao SDK validates (protocol doc, section 4).
SDK_MODEL_FIELDS = {
    "id": str,
    "owned_by": str,
    "max_input_token": int,
    "max_output_token": int,
    "in_price": float,
    "out_price": float,
    "unit": str,
    "mode": list,
    "channel": str,
}


@pytest.fixture
def data_home(tmp_path: Path) -> Path:
    """conftest points XDG_DATA_HOME here, so this is where the *default* data dir lands."""
    return tmp_path / "xdg-data" / "fengchao"


@pytest.fixture
def servers() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for server in started:  # graceful first, so no embedded postgres outlives the test
        try:
            server.stop(timeout=30)
        finally:
            server.kill()


def serve(servers: list[ServeProcess], *args: str, **env: str) -> ServeProcess:
    server = ServeProcess(clean_env(**env), args).start()
    servers.append(server)
    return server


def db_status(**env: str) -> dict[str, object]:
    result = run_cli("db", "--json", env=clean_env(**env))
    assert result.returncode == 0, result.stderr
    status: dict[str, object] = json.loads(result.stdout)
    return status


def test_serve_on_embedded_defaults_answers_models_and_stops_cleanly(
    servers: list[ServeProcess], data_home: Path
) -> None:
    server = serve(servers)
    base_url = server.wait_ready()
    pgdata = data_home / "pgdata"

    response = httpx.get(f"{base_url}/aigc/models/")
    assert response.status_code == 200
    payload = response.json()
    assert [item["id"] for item in payload["data"]] == list(load_catalog())
    for item in payload["data"]:
        for name, kind in SDK_MODEL_FIELDS.items():
            assert isinstance(item[name], kind), (item["id"], name)
        assert item["channel"] in ("在线模型", "本地模型")
        assert item["mode"] == ["invoke", "async", "async_result", "stream"]
    # The SDK's own spelling without the slash redirects to the same list.
    assert httpx.get(f"{base_url}/aigc/models", follow_redirects=True).json() == payload

    status = db_status()
    assert status["mode"] == "embedded"
    assert str(pgdata) in str(status["target"])
    assert str(status["pgvector_version"]).startswith("0.8")
    assert postgres_running_on(pgdata)
    first_created = status["created_at"]

    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.stderr
    assert wait_until(lambda: not postgres_running_on(pgdata)), "embedded postgres left running"

    # Warm start: the same data directory is reused, nothing is initialised again.
    again = serve(servers)
    again.wait_ready()
    assert db_status()["created_at"] == first_created
    assert again.stop(signal.SIGINT) == 130
    assert wait_until(lambda: not postgres_running_on(pgdata))


def test_two_servers_started_at_once_share_one_database(
    servers: list[ServeProcess], data_home: Path
) -> None:
    first, second = serve(servers), serve(servers)
    first_url, second_url = first.wait_ready(), second.wait_ready()
    assert first_url != second_url
    pgdata = data_home / "pgdata"

    first.stop()
    # The survivor still has its database: the last process to leave stops the server.
    assert httpx.get(f"{second_url}/healthz").status_code == 200
    assert postgres_running_on(pgdata)
    second.stop()
    assert wait_until(lambda: not postgres_running_on(pgdata))

    status = db_status()
    migrations = status["migrations"]
    assert isinstance(migrations, list)
    assert len(migrations) == len(discover_migrations())
    assert all(m["applied_at"] for m in migrations)
    assert "Traceback" not in first.stderr + second.stderr


def test_a_killed_server_does_not_strand_the_database(
    servers: list[ServeProcess], data_home: Path
) -> None:
    pgdata = data_home / "pgdata"
    crashed = serve(servers)
    crashed.wait_ready()
    crashed.kill()  # SIGKILL: no shutdown code runs, postgres keeps running
    assert postgres_running_on(pgdata)

    survivor = serve(servers)
    survivor.wait_ready()
    survivor.stop()
    # The dead process's handle was pruned, so the last live process stopped the server.
    assert wait_until(lambda: not postgres_running_on(pgdata))


def test_busy_port_is_one_clear_line(servers: list[ServeProcess]) -> None:
    server = serve(servers)
    port = server.wait_ready().rsplit(":", 1)[1]
    result = run_cli("serve", "--port", port, env=clean_env())
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: 127.0.0.1:{port} is already in use; stop the other server or pass --port"
    )


def test_unwritable_data_dir_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_cli("serve", env=clean_env(FENGCHAO_DATA_DIR=str(blocker / "data")))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: data directory {blocker / 'data'} is not writable: Not a directory"]


def test_bad_database_url_is_one_clear_line() -> None:
    result = run_cli(
        "serve",
        env=clean_env(FENGCHAO_DATABASE_URL="postgresql://app:s3cret-pw@127.0.0.1:1/x"),
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot connect to PostgreSQL at app@127.0.0.1:1/x:")
    assert "s3cret-pw" not in result.stderr


def test_malformed_catalog_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "models.toml"
    bad.write_text('[models."glm-4"]\nin_price = "free"\n', encoding="utf-8")
    env = clean_env(FENGCHAO_CATALOG_FILES=json.dumps([str(bad)]))
    for command in ("serve", "models"):
        result = run_cli(command, env=env)
        assert result.returncode == 1, command
        assert result.stderr.strip().splitlines() == [
            f"error: catalog file {bad}: models.glm-4: in_price: Input should be a valid number,"
            " unable to parse string as a number"
        ]


def test_external_database_url_is_used_instead_of_embedded(
    servers: list[ServeProcess], postgres_url: str, schema_name: str, tmp_path: Path
) -> None:
    env = {
        "FENGCHAO_DATABASE_URL": postgres_url,
        "FENGCHAO_DATABASE_SCHEMA": schema_name,
        "FENGCHAO_DATA_DIR": str(tmp_path / "unused"),
    }
    server = serve(servers, **env)
    server.wait_ready()
    status = db_status(**env)
    assert status["mode"] == "external"
    assert status["schema"] == schema_name
    server.stop()
    assert not (tmp_path / "unused" / "pgdata").exists()


def test_serve_honours_host_and_log_level_flags(servers: list[ServeProcess]) -> None:
    server = serve(servers, "--host", "127.0.0.1", "--log-level", "warning")
    server.wait_ready()
    server.stop()
    assert not any(" INFO " in line for line in server.lines), server.stderr
    assert os.environ.get("FENGCHAO_LOG_LEVEL") is None


def test_published_fengchao_sdk_reads_the_model_list(servers: list[ServeProcess]) -> None:
    server = serve(servers)
    base_url = server.wait_ready()
    result = run_sdk(
        "response = client.models()\n"
        "result = {'status': response.status,\n"
        "          'cards': [card.model_dump() for card in response.data.data],\n"
        "          'qwen': client.check_model_channel('Qwen1.5-0.5B-Chat'),\n"
        "          'glm': client.check_model_channel('glm-4')}",
        base_url,
    )
    assert result["status"] == 200
    cards = {card["id"]: card for card in result["cards"]}
    assert list(cards) == list(load_catalog())
    assert cards["glm-4"]["in_price"] == 0.1
    assert cards["glm-4"]["mode"] == ["invoke", "async", "async_result", "stream"]
    # The SDK routes 本地模型 to /aigc/local_chat/ and everything else to /aigc/chat/.
    assert (result["qwen"], result["glm"]) == ("本地模型", "在线模型")


def test_broken_embedded_cluster_is_one_line_with_the_servers_reason(tmp_path: Path) -> None:
    pgdata = tmp_path / "data" / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("18\n")  # as an interrupted first start leaves it
    result = run_cli("serve", env=clean_env(FENGCHAO_DATA_DIR=str(tmp_path / "data")))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: embedded PostgreSQL in {pgdata} failed to start: ")
    assert "postgresql.conf" in lines[0]
    assert lines[0].endswith(f"(server log: {pgdata / 'log'})")


PROMPT_FILE = """{#
id = "润色"
description = "润色中文文本"
#}
{% block system %}你是一位中文编辑。{% endblock %}
{% block prompt %}请润色：{{ query }}{% endblock %}
"""


def test_published_sdk_reads_the_prompt_list_and_sighup_reloads_it(
    servers: list[ServeProcess], postgres_url: str, schema_name: str, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "polish.jinja").write_text(PROMPT_FILE, encoding="utf-8")
    server = serve(
        servers,
        FENGCHAO_DATABASE_URL=postgres_url,
        FENGCHAO_DATABASE_SCHEMA=schema_name,
        FENGCHAO_PROMPT_DIRS=str(prompts),
    )
    base_url = server.wait_ready()
    result = run_sdk(
        "response = client.prompts()\n"
        "result = {'status': response.status,\n"
        "          'cards': [card.model_dump() for card in response.data.data]}",
        base_url,
    )
    assert result["status"] == 200
    cards = {card["id"]: card for card in result["cards"]}
    assert len(cards) == 23 and list(cards)[:3] == ["默认", "知识库", "中译英"]
    assert cards["润色"]["prompt"] == "请润色：{{ query }}"
    assert cards["润色"]["prefix"] == "{{ system }}"
    assert cards["润色"]["system"] == "你是一位中文编辑。"

    def polish_prompt() -> str:
        data = httpx.get(f"{base_url}/aigc/prompts/").json()["data"]
        return str(next(card["prompt"] for card in data if card["id"] == "润色"))

    (prompts / "polish.jinja").write_text(PROMPT_FILE.replace("请润色", "请认真润色"), "utf-8")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: polish_prompt() == "请认真润色：{{ query }}")
    assert wait_until(
        lambda: any("prompt library reloaded: 23 prompts" in line for line in server.lines)
    )

    (prompts / "polish.jinja").write_text(PROMPT_FILE.replace("{{ query }}", ""), "utf-8")
    server.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "prompt library not reloaded" in server.stderr)
    assert polish_prompt() == "请认真润色：{{ query }}"  # the broken edit did not land
    assert server.proc.poll() is None
