"""A stream's text chunks in the SDK's shape: ``Answer.delta_line`` serialises the parts
that do not change within a stream once, and must give the very bytes of
``event_line(Answer.payload(...))``."""

from __future__ import annotations

import itertools

import pytest
from langchain_core.documents import Document

from fengchao_chains.callbacks import Bill
from fengchao_chains.catalog import load_catalog
from fengchao_chains.server.aigc_answer import Answer, event_line

HITS = [
    Document(
        page_content="第二十四届冬奥会在北京开幕。",
        metadata={"title": "冬奥会", "url": "https://e.x/1", "similarity": 0.8123},
    ),
    Document(page_content='quotes " and \\ and \u2028', metadata={"similarity": None}),
]
TEXTS = ["", "你好", 'say "hi"\n', "\u2028line\u2029", "emoji 😀", "\x00\x1f"]


@pytest.mark.parametrize("knowledge", [[], HITS], ids=["no hits", "hits"])
def test_a_delta_line_is_the_payloads_event_line(
    knowledge: list[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = Answer(load_catalog()["gpt-3.5-turbo"], 'req-"1"')
    clock = itertools.cycle(["2026-11-22 10:00:00", "2026-11-22 10:00:00", "2026-11-22 10:00:01"])
    now = next(clock)
    monkeypatch.setattr("fengchao_chains.server.aigc_answer.time.strftime", lambda _f: now)
    for index, text in enumerate(TEXTS * 2):
        line = answer.delta_line(text, index=index, knowledge=knowledge)
        assert line == event_line(answer.payload(text, index=index, knowledge=knowledge))
        now = next(clock)  # the second changes now and then within a stream


BILLS = [Bill(0, 0, 0.0), Bill(120, 20, 0.00234), Bill(7, 3, 1e-05), Bill(1, 2, 0.1 + 0.2)]


@pytest.mark.parametrize("knowledge", [[], HITS], ids=["no hits", "hits"])
def test_a_closing_line_is_the_payloads_event_line(
    knowledge: list[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = Answer(load_catalog()["gpt-3.5-turbo"], "req-2")
    monkeypatch.setattr(
        "fengchao_chains.server.aigc_answer.time.strftime", lambda _f: "2026-11-22 10:00:00"
    )
    for index, (bill, reason) in enumerate(itertools.product(BILLS, ["stop", "length", 'a"b'])):
        line = answer.closing_line(
            index=index, finish_reason=reason, usage=bill, knowledge=knowledge
        )
        expected = answer.payload(
            "", index=index, finish_reason=reason, usage=bill, knowledge=knowledge
        )
        assert line == event_line(expected)
