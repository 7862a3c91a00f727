"""The chat logic every front door serves, in one implementation: LangServe routes run it
as the runnable :func:`chat_chain`; the /aigc API and its async tasks run the same steps as
plain calls (:func:`prepare_chat`, then :func:`answer_chat` or :func:`astream_answer`).

One request goes: input sensitive-word check -> uploaded files and the stored conversation
(``request_id``) -> optional retrieval from a knowledge base -> the instruction (library id or
a custom template, sandboxed) -> the catalog model with the request's sampling -> the output
sensitive-word guard (a sliding window, so a word split across chunks is still caught) -> the
turn appended to the conversation. The chain's output is ``{"documents": [...], "answer":
message}``; streamed, the documents come first (as soon as retrieval is done), then the
answer's chunks.

Why two shapes of the same steps: as a runnable, every layer (route, messages, sequence,
guard, memory) is a LangChain run with its own config, callback manager and events, and a
stream is merged chunk by chunk at each layer. LangServe needs that (``stream_log``, the
playground); /aigc does not, and py-spy of it under load put langchain_core at about half
of the busy CPU. The plain calls make one LangChain run per request, the chat model's (the
usage recorder's), and pass its chunks through :func:`aguard_chunks` and
:func:`aremember_chunks`, the generator functions the chain's ``output_guard`` and
``remember_turn`` wrap, so both shapes guard and remember alike. Measured on the event
loop's thread, in process: an /aigc answer 4.6 -> 3.4 CPU ms (/v1, which calls the model
directly: 3.0), a short stream 6.2 -> 4.2; ``bench/gateway.py`` at concurrency 100, a
20-chunk stream 25-34 -> 12-17 server CPU ms.

The caller (an API key) comes from the run's config, ``configurable["fengchao_caller"]``, which
the front doors set after authentication and which a client cannot choose: files and
conversations are looked up as that caller's.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnableGenerator,
    RunnableLambda,
)
from langchain_core.runnables.utils import AddableDict
from pydantic import BaseModel, ConfigDict, Field

from fengchao_chains.callbacks import MODEL_METADATA_KEY
from fengchao_chains.catalog import ModelCard
from fengchao_chains.chains.knowledge import KNOWLEDGE_PROMPT, document_chunks
from fengchao_chains.llms.answer_first import RunTail
from fengchao_chains.retrievers import NEWS_STORE, aget_retriever

if TYPE_CHECKING:
    from fengchao_chains.gateway.conversations import PostgresChatMessageHistory
    from fengchao_chains.gateway.sensitive import SensitiveWords
    from fengchao_chains.gateway.uploads import StoredFile
    from fengchao_chains.runtime import Runtime

CALLER_KEY = "fengchao_caller"
"""The ``configurable`` key holding the authenticated caller's api_key."""
ANONYMOUS_CALLER = "anonymous"
JSON_INSTRUCTION = (
    "Reply with one JSON object only: no prose before or after it, no code fences."
    " 只输出一个 JSON 对象，不要输出任何其他文字。"
)
MOONSHOT_VENDOR = "moonshot"


def optional_without_null(schema: dict[str, Any]) -> None:
    """Optional fields as plain optional properties in the JSON schema: ``X | None`` is
    ``anyOf [X, null]`` with ``default: null``, which LangServe's playground form cannot
    render (langserve#777, #782). Leaving a field out still means ``None``."""
    for prop in schema.get("properties", {}).values():
        branches = prop.get("anyOf")
        if branches and {"type": "null"} in branches:
            rest = [branch for branch in branches if branch != {"type": "null"}]
            del prop["anyOf"]
            if len(rest) == 1:
                prop.update(rest[0])
            else:
                prop["anyOf"] = rest
        if "default" in prop and prop["default"] is None:
            del prop["default"]


TopK = Annotated[int, Field(ge=1, le=50)]
Threshold = Annotated[float, Field(ge=0, le=2000)]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
MaxTokens = Annotated[int, Field(gt=0)]
"""The ranges of :class:`ChatInput`'s numbers, shared with the front doors that validate
the same fields in their own body (/aigc's) and then build the input without validating
it again."""


class ChatInput(BaseModel):
    """One chat request, in the fields of the fengchao API (every front door's input)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=optional_without_null)

    query: str = Field(description="The user's question or text.")
    model: str | None = Field(default=None, description="Catalog model id (default: the server's).")
    system: str | None = Field(default=None, description="System prompt (default: the prompt's).")
    prompt: str | None = Field(
        default=None, description="Instruction id from /aigc/prompts/, or a custom template."
    )
    prompt_fill: dict[str, Any] = Field(default_factory=dict, description="Template variables.")
    history: list[dict[str, Any]] = Field(
        default_factory=list, description='Earlier turns: [{"role": "user", "content": ...}]'
    )
    request_id: str | None = Field(
        default=None, description="Conversation id: its stored turns are continued."
    )
    knowledge: str | None = Field(default=None, description="Knowledge base id to answer from.")
    top_k: TopK = Field(default=5, description="Knowledge-base hits to use.")
    threshold: Threshold = Field(
        default=0, description="Max cosine distance x 1000 of a hit (0: off)."
    )
    files: list[str] = Field(default_factory=list, description="Ids from /aigc/uploadfiles/.")
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    do_sample: bool = Field(default=True, description="False: greedy decoding.")
    response_format: Literal["text", "json"] = "text"
    is_sensitive: bool = Field(default=True, description="Check input and output words.")
    sensitive_replace: bool = Field(
        default=False, description="Mask sensitive words with * instead of refusing."
    )


@dataclass
class PreparedChat:
    """A request made concrete: the model (the runtime's shared one) and the call's sampling
    arguments, its messages and the retrieved documents."""

    request: ChatInput
    card: ModelCard
    model: BaseChatModel
    sampling: dict[str, Any]
    messages: list[BaseMessage]
    documents: list[Document]
    history: PostgresChatMessageHistory | None


def caller_of(config: RunnableConfig | None) -> str:
    return str((config or {}).get("configurable", {}).get(CALLER_KEY) or ANONYMOUS_CALLER)


def chat_chain(runtime: Runtime) -> Runnable[dict[str, Any], dict[str, Any]]:
    """``ChatInput`` fields -> ``{"documents": [Document], "answer": AIMessage}``.

    The prepared request (the model object with its credentials, the caller's stored
    conversation) lives only inside this runnable: no step outputs it, so LangServe's
    ``stream_events`` and ``stream_log`` never serialise it to a client.
    """

    async def route(inputs: dict[str, Any], config: RunnableConfig) -> Runnable[Any, Any]:
        request = ChatInput.model_validate(inputs)
        prepared = await prepare_chat(runtime, request, caller_of(config))
        return DocumentsThenAnswer(prepared.documents, _answer(runtime, prepared))

    return RunnableLambda(route, name="fengchao_chat")


class DocumentsThenAnswer(Runnable[Any, dict[str, Any]]):
    """``{"documents", "answer"}``: the hits retrieved while preparing, and the answer;
    streamed as the documents first, then the answer's chunks (``AddableDict`` s, which sum
    to the whole output as LangChain's stream aggregation expects).

    Not a ``RunnableParallel``: that streams each branch in a task of its own, which outlives
    a consumer that is cancelled (a client hanging up), so the vendor call would run on
    unheard. Here the answer streams in the caller's task and stops with it.
    """

    def __init__(self, documents: list[Document], answer: Runnable[Any, Any]) -> None:
        self.documents = documents
        self.answer = answer

    def invoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return {"documents": self.documents, "answer": self.answer.invoke(input, config)}

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return {"documents": self.documents, "answer": await self.answer.ainvoke(input, config)}

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        yield AddableDict(documents=self.documents)
        for chunk in self.answer.stream(input, config):
            yield AddableDict(answer=chunk)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        yield AddableDict(documents=self.documents)
        async for chunk in self.answer.astream(input, config):
            yield AddableDict(answer=chunk)


def _answer(runtime: Runtime, prepared: PreparedChat) -> Runnable[Any, Any]:
    """The prepared messages -> the model -> the output guard -> the stored turn."""
    model = prepared.model.bind(**prepared.sampling).with_config(metadata=model_metadata(prepared))
    messages = prepared.messages

    def given(_: Any) -> list[BaseMessage]:
        return messages

    async def agiven(_: Any) -> list[BaseMessage]:  # no worker-thread hop in async runs
        return messages

    steps: Runnable[Any, Any] = RunnableLambda(given, afunc=agiven, name="messages") | model
    if prepared.request.is_sensitive:
        guard = output_guard(runtime.sensitive_words, replace=prepared.request.sensitive_replace)
        steps = steps | guard
    if prepared.history is not None:
        steps = steps | remember_turn(prepared.history, prepared.request.query)
    return steps


def model_metadata(prepared: PreparedChat) -> dict[str, Any]:
    """What the model's run carries for the usage recorder: the catalog id it prices by."""
    return {MODEL_METADATA_KEY: prepared.card.id}


def model_config(prepared: PreparedChat, config: RunnableConfig | None) -> RunnableConfig:
    """``config`` (the request's callbacks and metadata) with the model's metadata added."""
    given = config or {}
    metadata = {**given.get("metadata", {}), **model_metadata(prepared)}
    return {**given, "metadata": metadata}


async def answer_chat(
    runtime: Runtime,
    prepared: PreparedChat,
    config: RunnableConfig | None = None,
    tail: RunTail | None = None,
) -> AIMessage:
    """The whole answer as a plain call: one model ``ainvoke`` with ``config`` (the only
    LangChain run), the guard over the whole text, the turn remembered. Raises the model's
    errors and :class:`~fengchao_chains.gateway.sensitive.SensitiveContentError` (nothing is
    stored then). With ``tail`` the answer comes as soon as the model has it, and the run
    ends when the caller finishes the tail (:mod:`fengchao_chains.llms.answer_first`)."""
    request = prepared.request
    config = model_config(prepared, config)
    if tail is None:
        message = await prepared.model.ainvoke(prepared.messages, config, **prepared.sampling)
    else:
        message = await tail.ainvoke(prepared.model, prepared.messages, config, **prepared.sampling)
    if not isinstance(message, AIMessage):  # pragma: no cover - chat models answer AIMessage
        raise TypeError(f"unexpected answer {type(message).__name__}")
    if request.is_sensitive:
        message = guard_message(runtime.sensitive_words, message, replace=request.sensitive_replace)
    if prepared.history is not None:
        await prepared.history.aadd_messages(turn(request.query, message.text))
    return message


def astream_answer(
    runtime: Runtime,
    prepared: PreparedChat,
    config: RunnableConfig | None = None,
    tail: RunTail | None = None,
) -> AsyncGenerator[AIMessageChunk, None]:
    """The answer's chunks as a plain call: the model's ``astream`` with ``config`` (the
    only LangChain run) through the sliding-window guard, the turn remembered at the end.
    With ``tail`` the chunks end with the model's last one, and the run ends when the
    caller finishes the tail (:meth:`RunTail.astream`).

    When the consumer stops early (a client hanging up closes this generator, or cancels
    the task iterating it) the model's stream is closed here at once, so the upstream
    connection ends and the call is recorded as aborted, rather than whenever the garbage
    collector gets to it."""
    config = model_config(prepared, config)
    model_stream = (
        cast(
            AsyncGenerator[AIMessageChunk, None],
            prepared.model.astream(prepared.messages, config, **prepared.sampling),
        )
        if tail is None
        else tail.astream(prepared.model, prepared.messages, config, **prepared.sampling)
    )
    return _answer_stages(runtime, prepared, model_stream)


async def aopen_answer(
    runtime: Runtime, prepared: PreparedChat, config: RunnableConfig | None, tail: RunTail
) -> AsyncGenerator[AIMessageChunk, None]:
    """:func:`astream_answer` with ``tail``, the model's request already sent when this
    returns (:meth:`RunTail.aopen_stream`): what the caller does next, such as setting up
    its response, overlaps the vendor's work."""
    config = model_config(prepared, config)
    model_stream = await tail.aopen_stream(
        prepared.model, prepared.messages, config, **prepared.sampling
    )
    return _answer_stages(runtime, prepared, model_stream)


async def _answer_stages(
    runtime: Runtime, prepared: PreparedChat, model_stream: AsyncGenerator[AIMessageChunk, None]
) -> AsyncGenerator[AIMessageChunk, None]:
    """The model's chunks through the guard, the turn remembered at the end."""
    request = prepared.request
    stages = [model_stream]
    if request.is_sensitive:
        words = runtime.sensitive_words
        stages.append(aguard_chunks(words, stages[-1], replace=request.sensitive_replace))
    if prepared.history is not None:
        stages.append(aremember_chunks(prepared.history, request.query, stages[-1]))
    try:
        async for chunk in stages[-1]:
            yield chunk
    finally:  # outermost first: each stage is left at a yield, the model's at its read
        for stage in reversed(stages):
            await stage.aclose()


async def prepare_chat(runtime: Runtime, request: ChatInput, caller: str) -> PreparedChat:
    """Everything before the model call; raises the library's errors (unknown model, prompt,
    knowledge base or file, sensitive input) before any token is spent."""
    card = runtime.catalog[request.model or runtime.settings.default_model]
    if request.is_sensitive and not request.sensitive_replace:
        runtime.sensitive_words.check(request.query)
    query = request.query
    if request.is_sensitive and request.sensitive_replace:
        query = runtime.sensitive_words.mask(query)
    files = await runtime.uploads.aresolve(caller, request.files) if request.files else []
    history = None
    past: list[BaseMessage] = []
    max_messages = runtime.settings.conversation_max_messages
    if request.request_id and max_messages > 0:
        history = runtime.conversations.history(caller, request.request_id)
        past = await history.aget_messages()
    documents = await retrieve(runtime, request, query) if request.knowledge else []
    messages = render_messages(
        runtime, request, query=query, documents=documents, files=files, card=card
    )
    if past:  # after the system message and the client's history, before this question
        messages = [*messages[:-1], *past, messages[-1]]
    model = runtime.chat_model(card.id)
    return PreparedChat(request, card, model, _sampling(request), messages, documents, history)


def _sampling(request: ChatInput) -> dict[str, Any]:
    """The request's sampling as standard ChatModel parameters; ``do_sample: false`` is
    greedy decoding (temperature 0) whatever temperature says."""
    overrides: dict[str, Any] = {"temperature": request.temperature, "top_p": request.top_p}
    if not request.do_sample:
        overrides = {"temperature": 0}
    overrides["max_tokens"] = request.max_tokens
    return {k: v for k, v in overrides.items() if v is not None}


def render_messages(
    runtime: Runtime,
    request: ChatInput,
    *,
    query: str,
    documents: list[Document],
    files: list[StoredFile],
    card: ModelCard,
) -> list[BaseMessage]:
    """The instruction's messages: system, the request's history, the user message (the /v1
    front door renders its extras with it too). With a knowledge base and no prompt the
    知识库 instruction lays out the hits; an instruction that takes ``documents`` gets them
    too; any other prompt gets them, like uploaded files' text, as context in front of the
    question."""
    prompt, fill = request.prompt, dict(request.prompt_fill)
    context_blocks: list[str] = []
    if request.knowledge:
        if not (prompt or "").strip():
            prompt = KNOWLEDGE_PROMPT
        if "documents" in runtime.prompts.resolve(prompt).variables:
            fill.setdefault("documents", document_chunks(documents))
        else:
            context_blocks.append(_knowledge_context(documents))
    moonshot_files = card.vendor == MOONSHOT_VENDOR
    if files and not moonshot_files:
        context_blocks.append(_files_context(files, runtime.settings.file_context_max_chars))
    full_query = "\n\n".join([*context_blocks, query]) if context_blocks else query
    system = request.system
    if request.response_format == "json":
        base = system if system is not None else runtime.prompts.resolve(prompt).system
        system = f"{base}\n\n{JSON_INSTRUCTION}".strip()
    messages = runtime.prompts.messages(
        full_query, prompt=prompt, system=system, prompt_fill=fill, history=request.history
    )
    if files and moonshot_files:
        messages[-1] = _with_file_blocks(messages[-1], files)
    return messages


def _knowledge_context(documents: Sequence[Document]) -> str:
    lines = ["已知信息："]
    for number, chunk in enumerate(document_chunks(documents), start=1):
        lines.append(f"【资料{number}】{chunk['title'] or '（无标题）'}\n{chunk['content']}")
    if not documents:
        lines.append("（没有检索到相关资料）")
    return "\n\n".join(lines)


def _files_context(files: Sequence[StoredFile], max_chars: int) -> str:
    """Uploaded files' text, cut to ``max_chars`` in all (the cut is said, not hidden)."""
    parts, budget = ["以下是用户上传的文件内容："], max_chars
    for stored in files:
        text = stored.text
        if len(text) > budget:
            text = text[:budget] + "\n（文件内容过长，以下已截断）"
        budget = max(0, budget - len(stored.text))
        parts.append(f"【文件：{stored.name}】\n{text}")
    return "\n\n".join(parts)


def _with_file_blocks(message: BaseMessage, files: Sequence[StoredFile]) -> HumanMessage:
    """Moonshot reads documents through its Files API: the files go as LangChain ``file``
    content blocks, which ChatMoonshot uploads and turns into the vendor's file messages."""
    blocks: list[str | dict[str, Any]] = [{"type": "text", "text": str(message.content)}]
    for stored in files:
        blocks.append(
            {
                "type": "file",
                "base64": base64.b64encode(stored.path.read_bytes()).decode("ascii"),
                "mime_type": stored.content_type,
                "filename": stored.name,
            }
        )
    return HumanMessage(content=blocks)


async def retrieve(runtime: Runtime, request: ChatInput, query: str) -> list[Document]:
    """The knowledge base's hits for ``query`` (``threshold``: the API's scale, 0 = off)."""
    retriever = await aget_retriever(
        request.knowledge or NEWS_STORE,
        top_k=request.top_k,
        threshold=request.threshold,
        database=runtime.database,
        settings=runtime.settings,
    )
    return await retriever.ainvoke(query)


def output_guard(
    words: SensitiveWords, *, replace: bool
) -> RunnableGenerator[BaseMessage, AIMessageChunk]:
    """:func:`guard_chunks` as a chain step (``aguard_chunks`` in async runs)."""

    def guarded(chunks: Iterator[BaseMessage]) -> Iterator[AIMessageChunk]:
        yield from guard_chunks(words, chunks, replace=replace)  # must be a generator function

    def aguarded(chunks: AsyncIterator[BaseMessage]) -> AsyncIterator[AIMessageChunk]:
        return aguard_chunks(words, chunks, replace=replace)

    return RunnableGenerator(guarded, aguarded, name="sensitive_word_guard")


def guard_message(words: SensitiveWords, message: AIMessage, *, replace: bool) -> AIMessage:
    """A whole answer through the guard: what :func:`guard_chunks` releases for any cut of
    the text is what the whole text gives, so the text is checked (or masked) at once."""
    text = message.text
    if not replace:
        words.check(text)
        return message
    masked = words.mask(text)
    return message if masked == text else message.model_copy(update={"content": masked})


def guard_chunks(
    words: SensitiveWords, chunks: Iterable[BaseMessage], *, replace: bool
) -> Iterator[AIMessageChunk]:
    """The model's chunks through a sliding-window sensitive-word guard: text is released
    only once no list word can still be completing in it; a hit masks it (``replace``) or
    raises :class:`~fengchao_chains.gateway.sensitive.SensitiveContentError` before the word
    is released. Usage and metadata pass through untouched; at least one chunk comes out."""
    guard, sent = words.guard(replace=replace), False
    for chunk in chunks:
        if (released := _rechunk(chunk, guard.feed(chunk.text))) is not None:
            sent = True
            yield released
    if (tail := guard.flush()) or not sent:
        yield AIMessageChunk(content=tail)


async def aguard_chunks(
    words: SensitiveWords, chunks: AsyncIterator[BaseMessage], *, replace: bool
) -> AsyncGenerator[AIMessageChunk, None]:
    """:func:`guard_chunks` over an async stream."""
    guard, sent = words.guard(replace=replace), False
    async for chunk in chunks:
        if (released := _rechunk(chunk, guard.feed(chunk.text))) is not None:
            sent = True
            yield released
    if (tail := guard.flush()) or not sent:
        yield AIMessageChunk(content=tail)


def _rechunk(chunk: BaseMessage, text: str) -> AIMessageChunk | None:
    """``chunk`` with the released text, or None when it would carry nothing (the text is
    held back and there is no usage or finish reason to pass on). A text chunk whose text
    is released as it came, most of them, passes as it is: no new message object per chunk.
    One carrying tool calls or extra fields comes out as a plain text chunk."""
    usage = chunk.usage_metadata if isinstance(chunk, AIMessage) else None
    if not text and not usage and not chunk.response_metadata.get("finish_reason"):
        return None
    if isinstance(chunk, AIMessageChunk) and not (
        chunk.tool_call_chunks or chunk.additional_kwargs
    ):  # a text chunk: as it is, or a copy with the released text (half a new one's cost)
        return chunk if text == chunk.content else chunk.model_copy(update={"content": text})
    return AIMessageChunk(
        content=text, id=chunk.id, usage_metadata=usage, response_metadata=chunk.response_metadata
    )


def remember_turn(
    history: PostgresChatMessageHistory, query: str
) -> RunnableGenerator[AIMessageChunk, AIMessageChunk]:
    """:func:`remember_chunks` as a chain step (``aremember_chunks`` in async runs)."""

    def store(chunks: Iterator[AIMessageChunk]) -> Iterator[AIMessageChunk]:
        yield from remember_chunks(history, query, chunks)  # must be a generator function

    def astore(chunks: AsyncIterator[AIMessageChunk]) -> AsyncIterator[AIMessageChunk]:
        return aremember_chunks(history, query, chunks)

    return RunnableGenerator(store, astore, name="remember_turn")


def remember_chunks(
    history: PostgresChatMessageHistory, query: str, chunks: Iterable[AIMessageChunk]
) -> Iterator[AIMessageChunk]:
    """Pass the answer through, then store the turn (question + whole answer) in one write;
    a failed, refused or abandoned answer stores nothing."""
    total = ""
    for chunk in chunks:
        total += chunk.text
        yield chunk
    history.add_messages(turn(query, total))


async def aremember_chunks(
    history: PostgresChatMessageHistory, query: str, chunks: AsyncIterator[AIMessageChunk]
) -> AsyncGenerator[AIMessageChunk, None]:
    """:func:`remember_chunks` over an async stream."""
    total = ""
    async for chunk in chunks:
        total += chunk.text
        yield chunk
    await history.aadd_messages(turn(query, total))


def turn(query: str, answer: str) -> list[BaseMessage]:
    """What one exchange adds to a stored conversation, in one write."""
    return [HumanMessage(query), AIMessage(answer)]


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def json_answer(text: str) -> str:
    """``response_format: json``: the answer without the code fences models like to add,
    compacted if it parses (else returned as the model gave it)."""
    match = _FENCE.match(text)
    candidate = match.group(1) if match else text.strip()
    try:
        return json.dumps(json.loads(candidate), ensure_ascii=False)
    except ValueError:
        return text
