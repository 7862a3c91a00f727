"""Tool calling of the OpenAI-compatible models (OpenAI, Moonshot, Ark) against their fakes,
and the message conversion that refuses tool messages for every other vendor."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from fengchao_chains.llms._messages import openai_messages
from fengchao_chains.llms.errors import InvalidRequestError
from fengchao_chains.llms.openai_compatible import openai_tool_choice, with_tool_calls
from tests.vendors.harness import ARK, MOONSHOT, OPENAI

openai_fake, openai_url, openai_model = OPENAI.fixtures(
    fake="openai_fake", url="openai_url", model="openai_model"
)
moonshot_fake, moonshot_url, moonshot_model = MOONSHOT.fixtures(
    fake="moonshot_fake", url="moonshot_url", model="moonshot_model"
)
ark_fake, ark_url, ark_model = ARK.fixtures(fake="ark_fake", url="ark_url", model="ark_model")


@tool
def lookup(city: str, days: int) -> str:
    """The forecast for a city."""
    return f"{city}: sunny for {days} days"


@pytest.mark.parametrize("vendor", ["openai", "moonshot", "ark"])
async def test_tool_calls_invoke_stream_and_round_trip(
    vendor: str, request: pytest.FixtureRequest
) -> None:
    """Each OpenAI-style vendor: the call is parsed from the answer and from the streamed
    deltas alike, and the tool's result goes back as a ``tool`` message."""
    model = request.getfixturevalue(f"{vendor}_model")
    fake = request.getfixturevalue(f"{vendor}_fake")
    bound = model.bind_tools([lookup], tool_choice="lookup")
    question = HumanMessage("Lhasa in 5 days")
    answer = await bound.ainvoke([question])
    sent = fake.last_request["body"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert sent["tools"][0]["function"]["name"] == "lookup"
    (call,) = answer.tool_calls
    assert call["name"] == "lookup" and call["args"] == {"city": "Lhasa in 5 days", "days": 5}
    assert answer.response_metadata["finish_reason"] == "tool_calls"
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0

    streamed: Any = None
    async for chunk in bound.astream([question]):
        streamed = chunk if streamed is None else streamed + chunk
    assert [c["args"] for c in streamed.tool_calls] == [call["args"]]
    assert len(streamed.tool_call_chunks) == 1  # the deltas merged under one index
    assert streamed.usage_metadata == answer.usage_metadata

    result = lookup.invoke(call)
    final = await model.bind_tools([lookup]).ainvoke([question, answer, result])
    assert final.content == "Echo: Lhasa in 5 days: sunny for 5 days"
    assistant, tool_message = fake.last_request["body"]["messages"][1:]
    assert assistant["content"] is None
    assert assistant["tool_calls"][0]["function"] == {
        "name": "lookup",
        "arguments": json.dumps(call["args"]),
    }
    assert tool_message == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": "Lhasa in 5 days: sunny for 5 days",
    }


def test_tool_choice_in_openai_terms() -> None:
    names = {"lookup"}
    assert openai_tool_choice("any", names) == "required"
    assert openai_tool_choice(True, names) == "required"
    assert openai_tool_choice("lookup", names) == {
        "type": "function",
        "function": {"name": "lookup"},
    }
    assert openai_tool_choice("auto", names) == "auto"
    assert openai_tool_choice("none", names) == "none"


def test_arguments_that_are_not_a_json_object_are_invalid_tool_calls() -> None:
    raw = [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{not json"}},
        {"id": "c", "type": "function", "function": {"name": "h", "arguments": "[1, 2]"}},
        {"id": "d", "type": "function", "function": {"name": "k", "arguments": ""}},
    ]
    message = with_tool_calls(AIMessage("", id="m1"), raw)
    assert [(c["id"], c["args"]) for c in message.tool_calls] == [("a", {"x": 1}), ("d", {})]
    assert [(c["id"], c["args"]) for c in message.invalid_tool_calls] == [
        ("b", "{not json"),
        ("c", "[1, 2]"),
    ]
    resent = openai_messages([message], "openai", tools=True)[0]
    assert [c["function"]["arguments"] for c in resent["tool_calls"]] == [
        '{"x": 1}',
        "{}",
        "{not json",
        "[1, 2]",
    ]


def test_models_without_tools_refuse_tool_messages() -> None:
    calls = [{"name": "f", "args": {}, "id": "1", "type": "tool_call"}]
    for message in (AIMessage("", tool_calls=calls), ToolMessage("42", tool_call_id="1")):
        with pytest.raises(InvalidRequestError, match="not supported by this chat model"):
            openai_messages([message], "zhipu")
    plain = openai_messages([SystemMessage("s"), HumanMessage("q", name="ann")], "zhipu")
    assert plain == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q", "name": "ann"},
    ]
