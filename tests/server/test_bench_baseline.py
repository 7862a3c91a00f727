"""The gateway bench's /aigc baseline (``direct-aigc``) sends the upstream what /aigc does.

/aigc adds the default instruction's system prompt, and the upstream takes longer over the
longer prompt (0.25-0.3 ms for the bench's fake), so /aigc's added latency is measured over
a direct call with the same messages; if the instruction changed, the baseline must too.
"""

from __future__ import annotations

import json

from bench.gateway import QUESTION, aigc_bodies, aigc_upstream_messages, openai_bodies
from tests.server.conftest import Server


def test_direct_aigc_sends_what_aigc_sends_the_upstream(server: Server) -> None:
    body = json.loads(aigc_bodies()["invoke"])
    answer = server.client.post("/aigc/chat/", json=body, headers=server.headers())
    assert answer.status_code == 200 and answer.json()["status"] == 200

    sent = server.last_messages()
    assert sent == aigc_upstream_messages()
    assert [m["role"] for m in sent] == ["system", "user"] and sent[1]["content"] == QUESTION
    assert json.loads(openai_bodies(messages=sent)["invoke"])["messages"] == sent
