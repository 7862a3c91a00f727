"""The hourly sweep deletes old anonymous uploads and idle conversations, nothing else."""

from __future__ import annotations

import asyncio

from langchain_core.messages import AIMessage, HumanMessage

from fengchao_chains.server.housekeeping import sweep
from tests.server.conftest import Server


def test_sweep_deletes_only_what_is_past_its_time(server: Server) -> None:
    def upload(name: str) -> str:
        files = [("files", (name, b"some text", "text/plain"))]
        file_id: str = server.client.post("/aigc/uploadfiles/", files=files).json()["files"][0]
        return file_id

    old_upload, fresh_upload = upload("old.txt"), upload("fresh.txt")
    runtime = server.runtime
    for conversation in ("old", "fresh"):
        history = runtime.conversations.history("fc-owner", conversation)
        history.add_messages([HumanMessage("q"), AIMessage("a")])
    with runtime.database.pool.connection() as conn:
        conn.execute(
            "UPDATE uploads SET created_at = now() - interval '2 days' WHERE id = %s", (old_upload,)
        )
        conn.execute(
            "UPDATE conversations SET updated_at = now() - interval '60 days'"
            " WHERE conversation_id = 'old'"
        )

    assert asyncio.run(sweep(runtime)) == (1, 1)

    assert server.chat(query="q", files=[old_upload]).status_code == 445
    assert server.chat(query="q", files=[fresh_upload]).json()["status"] == 200
    assert runtime.conversations.history("fc-owner", "old").messages == []
    assert len(runtime.conversations.history("fc-owner", "fresh").messages) == 2
