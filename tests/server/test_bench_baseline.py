"""The gateway bench's baselines ask the upstream for what the gateway asks it.

/aigc adds the default instruction's system prompt, and the upstream takes longer over the
longer prompt (0.25-0.3 ms for the bench's fake), so /aigc's added latency is measured over
a direct call with the same messages (``direct-aigc``); if the instruction changed, the
baseline must too. Every stream asks for the usage chunk, which the gateway asks the
upstream for whatever its client asks (the fake counts the tokens for it: 0.075 ms).
"""

from __future__ import annotations

import json

from bench.gateway import (
    QUESTION,
    STREAM_OPTIONS,
    aigc_bodies,
    aigc_upstream_messages,
    openai_bodies,
)
from tests.server.conftest import ONLINE, Server


def test_direct_aigc_sends_what_aigc_sends_the_upstream(server: Server) -> None:
    body = json.loads(aigc_bodies()["invoke"])
    answer = server.client.post("/aigc/chat/", json=body, headers=server.headers())
    assert answer.status_code == 200 and answer.json()["status"] == 200

    sent = server.last_messages()
    assert sent == aigc_upstream_messages()
    assert [m["role"] for m in sent] == ["system", "user"] and sent[1]["content"] == QUESTION
    assert json.loads(openai_bodies(messages=sent)["invoke"])["messages"] == sent


def test_every_stream_asks_for_usage_as_the_gateway_asks_the_upstream(server: Server) -> None:
    assert json.loads(openai_bodies()["stream"])["stream_options"] == STREAM_OPTIONS
    assert "stream_options" not in json.loads(openai_bodies()["invoke"])

    server.stream()  # /aigc: the SDK never asks for usage; the gateway asks the upstream
    assert server.openai.last_request["body"]["stream_options"] == STREAM_OPTIONS

    body = json.loads(openai_bodies(model=ONLINE)["stream"])
    del body["stream_options"]  # a /v1 client that does not ask
    with server.client.stream(
        "POST", "/v1/chat/completions", json=body, headers=server.headers()
    ) as answer:
        assert answer.status_code == 200 and b"[DONE]" in answer.read()
    assert server.openai.last_request["body"]["stream_options"] == STREAM_OPTIONS
