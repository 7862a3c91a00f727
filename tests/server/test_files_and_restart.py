"""Uploaded files as chat context (Moonshot's through its Files API), and async tasks that
survive a server restart."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from fengchao_chains.gateway.auth import issue_token
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from fengchao_chains.testing.serve import serve_in_thread
from tests.processes import ServeProcess, clean_env, run_cli
from tests.server.conftest import Server, sdk_body


def upload(server: Server, name: str, data: bytes, token: str | None = None) -> list[str]:
    headers = {"Authorization": token} if token else {}
    response = server.client.post(
        "/aigc/uploadfiles/", files=[("files", (name, data, "text/plain"))], headers=headers
    )
    body = response.json()
    assert response.status_code == 200 and body["status"] == 200, body
    files: list[str] = body["files"]
    return files


def test_uploaded_text_is_context_for_the_question(server: Server) -> None:
    files = upload(server, "报告.txt", "季度营收为三百万元。".encode())
    answer = server.chat(query="营收多少", files=files).json()
    assert answer["status"] == 200
    sent = server.last_messages()[-1]["content"]
    assert "季度营收为三百万元。" in sent and "报告.txt" in sent and sent.endswith("营收多少")


def test_an_anonymous_upload_belongs_to_the_first_key_that_uses_it(server: Server) -> None:
    files = upload(server, "a.txt", b"private notes")
    assert server.chat(query="q", files=files).json()["status"] == 200
    stolen = server.chat(token=server.other_token, query="q", files=files)
    assert stolen.status_code == 445
    assert "private notes" not in stolen.text


def test_a_moonshot_model_reads_files_through_its_files_api(server: Server) -> None:
    files = upload(server, "合同.txt", "甲方应于三十日内付款。".encode())
    answer = server.chat(model="moonshot-v1-8k", query="付款期限是多久", files=files).json()
    assert answer["status"] == 200, answer
    uploads = [r for r in server.moonshot.requests if r.get("path", "").endswith("/files")]
    chat = server.moonshot.last_request["body"]
    assert uploads or "甲方应于三十日内付款" in json.dumps(chat, ensure_ascii=False)
    system_texts = [m["content"] for m in chat["messages"] if m["role"] == "system"]
    assert any("甲方应于三十日内付款" in text for text in system_texts)


def test_pending_async_tasks_survive_a_restart(tmp_path: Path) -> None:
    """Tasks queued in one server process are answered by the next one, each exactly once:
    the first finishes the task it is running at SIGTERM and leaves the rest queued."""
    fake = FakeOpenAI()
    with serve_in_thread(fake.app) as url:
        env = clean_env(
            FENGCHAO_DATA_DIR=str(tmp_path / "data"),
            FENGCHAO_TASK_WORKERS="1",
            OPENAI_BASE_URL=f"{url}/v1",
            OPENAI_API_KEY="sk-test",
        )
        created = run_cli("keys", "create", "--json", env=env)
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)
        token = issue_token(key["api_key"], key["secret_key"], 600)
        fake.inject("slow", delay=1.0, times=5)

        first = ServeProcess(env, ()).start()
        try:
            base = first.wait_ready()
            task_ids = [
                _post(base, token, sdk_body(query=f"任务{n}", mode="async"))["choices"][0][
                    "message"
                ]["content"]
                for n in range(5)
            ]
            deadline = time.monotonic() + 30
            while not fake.requests and time.monotonic() < deadline:
                time.sleep(0.05)
            assert fake.requests, "the first server never started a task"
        finally:
            first.stop(timeout=60)  # SIGTERM: a graceful shutdown
        answered_by_first = len(fake.requests)
        assert answered_by_first < 5  # some were still queued at the restart

        second = ServeProcess(env, ()).start()
        try:
            base = second.wait_ready()
            results = [_wait(base, token, task_id) for task_id in task_ids]
        finally:
            second.stop(timeout=60)
    assert [r["status"] for r in results] == [200] * 5
    for n, result in enumerate(results):
        assert f"任务{n}" in result["choices"][0]["message"]["content"]
    asked = [m["content"] for r in fake.requests for m in r["body"]["messages"][-1:]]
    assert sorted(asked) == sorted(f"任务{n}" for n in range(5))  # each exactly once


def _post(base: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{base}/aigc/chat/", json=body, headers={"Authorization": token}, timeout=30
    )
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    return payload


def _wait(base: str, token: str, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = _post(base, token, sdk_body(mode="async_result", task_id=task_id, query=None))
        if body["status"] != 6602:
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} was never answered")
