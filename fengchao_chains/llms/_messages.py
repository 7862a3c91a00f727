"""Pure converters from LangChain messages to the shapes vendors take.

No I/O and no model state here, so each converter is tested on its own and reused by every
vendor whose wire format matches (most take OpenAI's ``{"role", "content"}`` list).

Tool calling is OpenAI's: an assistant message's ``tool_calls`` and the ``tool`` messages
answering them are converted only for models that call tools (``tools=True``); every other
model refuses them with a clear error instead of silently sending the text alone.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from fengchao_chains.llms.errors import InvalidRequestError

TEXT_BLOCK_TYPES = ("text", "text-plain")
TOOL_CALL_BLOCK_TYPES = ("tool_call", "tool_call_chunk", "tool_use")
"""Blocks restating a message's ``tool_calls`` (LangChain v1 content, Anthropic's format)."""
_TOKEN = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]|\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    """A rough token count, for servers that report none: one per CJK character, word or
    punctuation mark."""
    return len(_TOKEN.findall(text))


def role_of(message: BaseMessage, vendor: str) -> str:
    """The OpenAI role name of a message (``system``, ``user``, ``assistant``)."""
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        if message.tool_calls or message.invalid_tool_calls:
            raise InvalidRequestError(
                "tool calls are not supported by this chat model", vendor=vendor
            )
        return "assistant"
    if isinstance(message, ChatMessage):
        return message.role
    if isinstance(message, (ToolMessage, FunctionMessage)):
        raise InvalidRequestError(
            "tool and function messages are not supported by this chat model", vendor=vendor
        )
    raise InvalidRequestError(f"unsupported message type {message.type!r}", vendor=vendor)


def text_of(message: BaseMessage, vendor: str, *, skip_types: tuple[str, ...] = ()) -> str:
    """A message's text; content blocks other than text (and ``skip_types``) are refused
    with a clear error rather than silently dropped."""
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type")
        if kind in TEXT_BLOCK_TYPES:
            parts.append(str(block.get("text", "")))
        elif kind not in skip_types:
            raise InvalidRequestError(
                f"content blocks of type {kind!r} are not supported by this model; send text",
                vendor=vendor,
            )
    return "".join(parts)


def openai_messages(
    messages: list[BaseMessage], vendor: str, *, tools: bool = False
) -> list[dict[str, Any]]:
    """Messages in OpenAI's chat format (text), keeping ``name`` where set; with ``tools``
    also assistant tool calls and ``tool`` results (:func:`openai_tool_message`)."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        item = openai_tool_message(message, vendor) if tools else None
        if item is None:
            item = {"role": role_of(message, vendor), "content": text_of(message, vendor)}
        if message.name and item["role"] != "tool":  # OpenAI's tool messages have no name
            item["name"] = message.name
        converted.append(item)
    return converted


def openai_tool_message(message: BaseMessage, vendor: str) -> dict[str, Any] | None:
    """A tool result or an assistant message with tool calls in OpenAI's format (arguments
    as the JSON text OpenAI sends, ``content`` null when there is no text); None for any
    other message."""
    if isinstance(message, ToolMessage):
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "content": text_of(message, vendor),
        }
    if not isinstance(message, AIMessage) or not (message.tool_calls or message.invalid_tool_calls):
        return None
    calls = [
        _function_call(call["id"], call["name"], json.dumps(call["args"], ensure_ascii=False))
        for call in message.tool_calls
    ]
    calls += [  # arguments that did not parse go back as they came
        _function_call(call["id"], call["name"], call["args"])
        for call in message.invalid_tool_calls
    ]
    text = text_of(message, vendor, skip_types=TOOL_CALL_BLOCK_TYPES)
    return {"role": "assistant", "content": text or None, "tool_calls": calls}


def _function_call(call_id: str | None, name: str | None, arguments: str | None) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name or "", "arguments": arguments or ""},
    }


def split_system(messages: list[BaseMessage], vendor: str) -> tuple[str | None, list[BaseMessage]]:
    """The system prompt (system messages joined) and the other messages, for vendors that
    take the system prompt as a top-level field (Anthropic, Qianfan)."""
    system = [text_of(m, vendor) for m in messages if isinstance(m, SystemMessage)]
    rest = [m for m in messages if not isinstance(m, SystemMessage)]
    return ("\n\n".join(system) if system else None), rest
