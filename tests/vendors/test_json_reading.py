"""Vendor JSON: orjson first, the standard library for what orjson refuses, one error."""

from __future__ import annotations

import math

import pytest
from httpx_sse import ServerSentEvent

from fengchao_chains.llms._http import loads_json
from fengchao_chains.llms._sse import event_json
from fengchao_chains.llms.errors import UpstreamError
from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible


def test_what_either_parser_reads_is_read() -> None:
    assert loads_json(b'{"usage": {"prompt_tokens": 3}}') == {"usage": {"prompt_tokens": 3}}
    assert loads_json('{"text": "晴\\u2028"}') == {"text": "晴\u2028"}
    assert math.isnan(loads_json('{"score": NaN}')["score"])  # the standard library's
    assert loads_json('"\\ud83d"') == "\ud83d"  # a lone surrogate: the standard library's
    assert loads_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}  # a UTF-8 BOM
    assert loads_json(b"2") == 2


@pytest.mark.parametrize("raw", ["{x", "", "[1,", b"\xff\xfe{"])
def test_what_neither_reads_is_a_value_error(raw: str | bytes) -> None:
    with pytest.raises(ValueError):
        loads_json(raw)


def test_an_unreadable_stream_event_is_an_upstream_error_naming_what_came() -> None:
    model = ChatOpenAICompatible(model="m", api_key="sk-test", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(UpstreamError, match="unreadable stream event") as caught:
        event_json(model, ServerSentEvent(data="{broken"))
    assert "{broken" in str(caught.value)
