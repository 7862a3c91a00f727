"""``fengchao usage`` against real PostgreSQL with known usage_events rows: the operator's
view of every key, as JSON and as a table, filters and groupings, and refused options."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from fengchao_chains.db import Database
from fengchao_chains.settings import Settings
from tests.gateway.test_usage_reports import T0, event, insert_usage
from tests.processes import ok, settings_env
from tests.processes import run_cli as run_installed
from tests.processes import run_cli_in_process as run_cli

RANGE = ("--since", "2026-03-01", "--until", "2026-03-03")
MARKUP = "[bold red]model[/bold red]"


@pytest.fixture
def env(settings: Settings, database: Database) -> dict[str, str]:
    """The CLI's settings, over a schema holding: key A 2 GPT calls (USD) and 1 GLM call
    (CNY) on 2 March, 1 GPT call on 3 March; key B 1 call of a model named like markup."""
    with database.pool.connection() as conn:
        insert_usage(
            conn,
            [
                event(api_key="fc-a", prompt=10, completion=20, cost="0.0012", latency_ms=80),
                event(api_key="fc-a", prompt=1, completion=2, cost="0.0001", status="error"),
                event(api_key="fc-a", model="glm-4", unit="CNY", prompt=50, completion=50,
                      cost="0.02", ttft_ms=30),
                event(api_key="fc-a", ended_at=T0 + timedelta(days=1), prompt=4, completion=4,
                      cost="0.0002", estimated=True),
                event(api_key="fc-b", model=MARKUP, unit="CNY", prompt=3, completion=3,
                      cost="0.5", front_door="v1"),
                event(api_key="fc-b", ended_at=T0 + timedelta(days=30), prompt=999),
            ],
        )  # fmt: skip
    return settings_env(settings)


def test_json_is_every_keys_usage_with_exact_sums(env: dict[str, str]) -> None:
    data = json.loads(ok(run_cli("usage", *RANGE, "--group-by", "key", "--json", env=env)).stdout)
    assert data["group_by"] == "key"
    assert (data["since"], data["until"]) == ("2026-03-01T00:00:00Z", "2026-03-04T00:00:00Z")
    rows = {row["group"]: row for row in data["rows"]}
    assert list(rows) == ["fc-a", "fc-b"]
    assert (rows["fc-a"]["requests"], rows["fc-a"]["errors"]) == (4, 1)
    assert rows["fc-a"]["total_tokens"] == 141 and rows["fc-a"]["estimated_tokens"] == 8
    assert rows["fc-a"]["cost"] == {"CNY": 0.02, "USD": 0.0015}
    assert rows["fc-b"]["cost"] == {"CNY": 0.5}
    assert data["total"]["cost"] == {"CNY": 0.52, "USD": 0.0015}
    assert data["total"]["total_tokens"] == 147


def test_filters_and_grouping_by_day(env: dict[str, str]) -> None:
    days = json.loads(
        ok(run_cli("usage", *RANGE, "--group-by", "day", "--key", "fc-a", "--json", env=env)).stdout
    )
    assert [(r["group"], r["requests"], r["total_tokens"]) for r in days["rows"]] == [
        ("2026-03-02", 3, 133),
        ("2026-03-03", 1, 8),
    ]
    assert days["filters"] == {"key": "fc-a"}
    door = json.loads(ok(run_cli("usage", *RANGE, "--front-door", "v1", "--json", env=env)).stdout)
    assert [row["group"] for row in door["rows"]] == [MARKUP]
    glm = json.loads(ok(run_cli("usage", *RANGE, "--model", "glm-4", "--json", env=env)).stdout)
    assert glm["total"]["requests"] == 1 and glm["total"]["p50_ttft_ms"] == 30.0


def test_the_table_shows_groups_costs_per_unit_and_the_total(env: dict[str, str]) -> None:
    out = ok(run_cli("usage", *RANGE, env=env)).stdout
    assert "usage 2026-03-01 00:00 to 2026-03-04 00:00 UTC by model" in out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 5}
    assert set(lines) == {"gpt-3.5-turbo", "glm-4", MARKUP, "total"}  # markup as text
    total = [cell.strip() for cell in lines["total"].split("│")[1:-1]]
    assert total == ["total", "5", "1", "0", "68", "79", "147", "8", "0.52 CNY + 0.0015 USD",
                     "100.0", "30.0"]  # fmt: skip
    gpt = [cell.strip() for cell in lines["gpt-3.5-turbo"].split("│")[1:-1]]
    assert gpt[1:9] == ["3", "1", "0", "15", "26", "41", "8", "0.0015 USD"]


def test_default_range_is_the_last_seven_days(env: dict[str, str]) -> None:
    data = json.loads(ok(run_cli("usage", "--json", env=env)).stdout)
    assert data["rows"] == [] and data["total"]["requests"] == 0  # the rows are from 2026-03


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--since", "tomorrow"), 1, "error: since must be an ISO date"),
        (("--since", "2026-03-05", "--until", "2026-03-01"), 1, "must be before until"),
        (("--group-by", "hour", "--since", "90d"), 1, "group_by=hour is for ranges up to 31"),
        (("--group-by", "owner"), 2, "'owner' is not one of"),
        (("--front-door", "ftp"), 2, "'ftp' is not one of"),
    ],
)
def test_refused_options(
    env: dict[str, str], args: tuple[str, ...], code: int, message: str
) -> None:
    result = run_cli("usage", *args, env=env)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_installed_command(env: dict[str, str]) -> None:
    done = run_installed("usage", *RANGE, "--key", "fc-b", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total"]["cost"] == {"CNY": 0.5}
    help_text = run_installed("usage", "--help", env=env)
    assert help_text.returncode == 0 and "--group-by" in help_text.stdout
