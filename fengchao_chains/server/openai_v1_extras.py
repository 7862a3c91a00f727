"""What a ``/v1/chat/completions`` request adds to the plain model call: its sampling, tools
and JSON mode (passed through where the model takes them; for a model without, tools are
refused and JSON mode is the chat chain's instruction), and the gateway's extras (the
OpenAI SDK's ``extra_body``): ``knowledge`` (with ``top_k`` and ``threshold``), ``prompt``
(with ``prompt_fill``) and ``is_sensitive``, meaning what they mean on /aigc.

With ``knowledge`` or ``prompt`` the last user message is the question: the chat chain's
own retrieval and instruction rendering (:func:`~fengchao_chains.chains.chat.retrieve`,
:func:`~fengchao_chains.chains.chat.render_messages`) turn it into the instruction's system
and user messages; the client's leading system messages are the ``system``, the messages
between them and the question stay as history, and any after it (tool calls and results)
follow the rendered question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import ValidationError

from fengchao_chains.catalog import ModelCard
from fengchao_chains.chains.chat import JSON_INSTRUCTION, ChatInput, render_messages, retrieve
from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible
from fengchao_chains.server.openai_v1_errors import invalid
from fengchao_chains.server.openai_v1_wire import ChatCompletionRequest

if TYPE_CHECKING:
    from fengchao_chains.gateway.sensitive import SensitiveWords
    from fengchao_chains.runtime import Runtime


def sampling(body: ChatCompletionRequest) -> dict[str, Any]:
    """The call's sampling arguments (``max_completion_tokens`` wins over ``max_tokens``)."""
    max_tokens = body.max_completion_tokens or body.max_tokens
    given = {"temperature": body.temperature, "top_p": body.top_p, "max_tokens": max_tokens}
    kwargs: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    if body.stop_list:
        kwargs["stop"] = body.stop_list
    return kwargs


def add_response_format(
    body: ChatCompletionRequest, model: BaseChatModel, kwargs: dict[str, Any]
) -> bool:
    """Add ``tools`` and ``response_format`` to the call for a model that takes them; for
    one that does not, tools are refused and JSON mode becomes an instruction (True: the
    answer is then cleaned of code fences)."""
    native = isinstance(model, ChatOpenAICompatible) and model.supports_tools
    tool_kwargs = body.tool_kwargs()
    if tool_kwargs.get("tools"):
        if not native:
            raise invalid(
                f"the model `{body.model}` does not support tools (function calling)",
                param="tools",
                code="tools_not_supported",
            )
        kwargs.update(tool_kwargs)
    response_format = body.response_format
    if response_format is None or response_format.type == "text":
        return False
    if native:
        kwargs["response_format"] = response_format.model_dump(by_alias=True, exclude_none=True)
        return False
    if response_format.type == "json_schema":
        raise invalid(
            f"the model `{body.model}` does not support json_schema; use json_object",
            param="response_format",
        )
    return True


def with_json_instruction(messages: list[BaseMessage]) -> list[BaseMessage]:
    """JSON mode for a model without it: the chat chain's instruction in the system prompt."""
    if messages and isinstance(messages[0], SystemMessage):
        system = SystemMessage(f"{messages[0].text}\n\n{JSON_INSTRUCTION}".strip())
        return [system, *messages[1:]]
    return [SystemMessage(JSON_INSTRUCTION), *messages]


def wants_extras(body: ChatCompletionRequest) -> bool:
    return bool(body.knowledge or (body.prompt or "").strip())


def check_input(words: SensitiveWords, messages: Sequence[BaseMessage]) -> None:
    """Raise :class:`~fengchao_chains.gateway.sensitive.SensitiveContentError` if what the
    client wrote (every message but the assistant's own answers) has a listed word."""
    for message in messages:
        if not isinstance(message, AIMessage):
            words.check(message.text)


async def apply_extras(
    runtime: Runtime, body: ChatCompletionRequest, card: ModelCard, messages: list[BaseMessage]
) -> tuple[list[BaseMessage], list[Document] | None]:
    """The messages with the question rendered through the instruction (and grounded in
    the knowledge base's hits, which are returned too; None without ``knowledge``)."""
    asked = [i for i, message in enumerate(messages) if isinstance(message, HumanMessage)]
    if not asked:
        raise invalid("knowledge and prompt need a user message to answer", param="messages")
    at = asked[-1]
    query = messages[at].text
    lead = 0
    while lead < at and isinstance(messages[lead], SystemMessage):
        lead += 1
    system = "\n\n".join(message.text for message in messages[:lead]) or None
    request = _chat_input(body, card, query, system)
    documents = await retrieve(runtime, request, query) if request.knowledge else []
    rendered = render_messages(
        runtime, request, query=query, documents=documents, files=[], card=card
    )
    merged = [*rendered[:-1], *messages[lead:at], rendered[-1], *messages[at + 1 :]]
    return merged, (documents if request.knowledge else None)


def _chat_input(
    body: ChatCompletionRequest, card: ModelCard, query: str, system: str | None
) -> ChatInput:
    given: dict[str, Any] = {
        "query": query,
        "model": card.id,
        "system": system,
        "prompt": body.prompt,
        "prompt_fill": body.prompt_fill,
        "knowledge": body.knowledge,
        "top_k": body.top_k,
        "threshold": body.threshold,
        "is_sensitive": body.is_sensitive,
    }
    try:
        return ChatInput.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:  # pragma: no cover - the /v1 body has the same bounds
        raise invalid(str(exc).splitlines()[0]) from None
