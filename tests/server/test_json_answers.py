"""The chat answers' JSON (``server.json_answers``): what Starlette's ``JSONResponse``
writes, rendered by orjson."""

from __future__ import annotations

import json

from starlette.responses import JSONResponse

from fengchao_chains.server.json_answers import JSONAnswer

ANSWER = {
    "request_id": "r-1",
    "created": "2026-11-23 22:00:00",
    "model": "ERNIE-Bot-4",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": '故宫 "new" exhibits\n\\ ok'},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 120, "completion_tokens": 20, "total_tokens": 140, "cost": 0.00234},
    "msg": "执行成功",
    "knowledge": [],
    "status": 200,
    "search": None,
}


def test_an_answer_is_byte_for_byte_what_starlette_writes() -> None:
    ours, theirs = JSONAnswer(ANSWER), JSONResponse(ANSWER)
    assert ours.body == theirs.body
    assert ours.headers == theirs.headers
    assert "故宫".encode() in ours.body  # UTF-8, not \\u escapes


def test_numbers_keep_their_values_where_the_spelling_differs() -> None:
    numbers = {"cost": 1e-05, "big": 1.5e300, "third": 1 / 3, "count": 2**62}
    body = bytes(JSONAnswer(numbers).body)
    assert json.loads(body) == numbers
    assert body != JSONResponse(numbers).body  # orjson writes 1e-5 where json writes 1e-05
