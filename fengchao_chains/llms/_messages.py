"""Pure converters from LangChain messages to the shapes vendors take.

No I/O and no model state here, so each converter is tested on its own and reused by every
vendor whose wire format matches (most take OpenAI's ``{"role", "content"}`` list).
"""

from __future__ import annotations

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


def openai_messages(messages: list[BaseMessage], vendor: str) -> list[dict[str, Any]]:
    """Messages in OpenAI's chat format (text only), keeping ``name`` where set."""
    converted: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {
            "role": role_of(message, vendor),
            "content": text_of(message, vendor),
        }
        if message.name:
            item["name"] = message.name
        converted.append(item)
    return converted


def split_system(messages: list[BaseMessage], vendor: str) -> tuple[str | None, list[BaseMessage]]:
    """The system prompt (system messages joined) and the other messages, for vendors that
    take the system prompt as a top-level field (Anthropic, Qianfan)."""
    system = [text_of(m, vendor) for m in messages if isinstance(m, SystemMessage)]
    rest = [m for m in messages if not isinstance(m, SystemMessage)]
    return ("\n\n".join(system) if system else None), rest
