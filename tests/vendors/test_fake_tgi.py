"""The fake TGI against the official clients, unchanged: huggingface_hub's ``InferenceClient``
and ``AsyncInferenceClient`` (2.4.0, in the project's venv) and TGI's own ``text-generation``
client (0.7.0, in a venv of its own). What they parse, raise and send is the proof that the fake
speaks TGI; one test reads the raw wire for the framing both clients are lenient about."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from huggingface_hub import (
    AsyncInferenceClient,
    ChatCompletionInputStreamOptions,
    InferenceClient,
)
from huggingface_hub.errors import (
    GenerationError,
    HfHubHTTPError,
    OverloadedError,
    UnknownError,
    ValidationError,
)

from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.tgi import FakeTGI
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendor_sdks import run_vendor_sdk

pytestmark = pytest.mark.timeout(900)

QUESTION = "hello there"
MESSAGES = [{"role": "user", "content": QUESTION}]
# what a caller of /generate sends for MESSAGES: Qwen1.5's ChatML, default system prompt added
CHATML = (
    "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
    f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
)
ANSWER = "Echo: hello there"
TOKENS = ["Echo", ":", " hello", " there", "<|im_end|>"]  # the reply, then the eos token
INCLUDE_USAGE = ChatCompletionInputStreamOptions(include_usage=True)
SETTINGS = ("context_window", "healthy", "messages_api", "stream_input_length", "api_token")


@pytest.fixture(scope="module")
def tgi_server() -> Iterator[tuple[FakeTGI, str]]:
    fake = FakeTGI()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(tgi_server: tuple[FakeTGI, str]) -> Iterator[FakeTGI]:
    served, _ = tgi_server
    defaults = FakeTGI()

    def reset() -> None:
        served.clear_faults()
        served.requests.clear()
        for name in (*SETTINGS, "model_id"):
            setattr(served, name, getattr(defaults, name))

    reset()
    yield served
    reset()


@pytest.fixture
def url(tgi_server: tuple[FakeTGI, str]) -> str:
    return tgi_server[1]


@pytest.fixture
def client(url: str) -> InferenceClient:
    return InferenceClient(base_url=url)


def status_of(error: BaseException) -> int:
    """The HTTP status behind a huggingface_hub error (its own, or the one it was raised from)."""
    for candidate in (error, error.__cause__):
        response = getattr(candidate, "response", None)
        if response is not None:
            return int(response.status_code)
    raise AssertionError(f"no HTTP response behind {error!r}")


# --------------------------------------------------------------------------- huggingface_hub


def test_text_generation_goes_to_the_compat_route(client: InferenceClient, fake: FakeTGI) -> None:
    assert client.text_generation(CHATML, max_new_tokens=20) == ANSWER
    assert fake.last_request["route"] == "/"
    assert fake.last_request["body"] == {"inputs": CHATML, "parameters": {"max_new_tokens": 20}}
    assert client.text_generation("ping") == "Echo: ping"  # not ChatML: the whole input
    assert client.text_generation("ping", return_full_text=True) == "pingEcho: ping"

    out = client.text_generation(CHATML, details=True)
    assert out.generated_text == ANSWER  # the special eos token is no part of the text
    assert out.details is not None
    assert out.details.finish_reason == "eos_token"
    assert out.details.generated_tokens == 5  # eos counted
    assert [t.text for t in out.details.tokens] == TOKENS
    assert [t.special for t in out.details.tokens] == [False] * 4 + [True]
    assert out.details.tokens[-1].id == 151645
    assert out.details.prefill == []
    assert out.details.seed is None

    prefilled = client.text_generation(CHATML, details=True, decoder_input_details=True, seed=7)
    assert prefilled.details is not None
    assert prefilled.details.prefill
    assert vars(prefilled.details.prefill[0])["logprob"] is None  # the first input token
    assert prefilled.details.seed == 7

    cut = client.text_generation(CHATML, details=True, max_new_tokens=2)
    assert cut.details is not None
    assert (cut.generated_text, cut.details.finish_reason, cut.details.generated_tokens) == (
        "Echo:",
        "length",
        2,
    )
    stopped = client.text_generation(CHATML, details=True, stop=["hello"])
    assert stopped.details is not None
    # as TGI does, the stop sequence stays in the text
    assert (stopped.generated_text, stopped.details.finish_reason) == (
        "Echo: hello",
        "stop_sequence",
    )


def test_text_generation_stream(client: InferenceClient, fake: FakeTGI) -> None:
    assert list(client.text_generation(CHATML, stream=True)) == TOKENS
    assert fake.last_request["body"] == {"inputs": CHATML, "parameters": {}, "stream": True}

    events = list(client.text_generation(CHATML, stream=True, details=True))
    assert [e.token.text for e in events] == TOKENS
    assert [e.index for e in events] == [1, 2, 3, 4, 5]
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    last = events[-1]
    assert last.token.special
    assert last.generated_text == ANSWER
    assert last.details is not None
    assert (last.details.finish_reason, last.details.generated_tokens) == ("eos_token", 5)
    # the chat route renders the same ChatML, so it counts the same prompt
    chat = client.chat_completion(MESSAGES)
    assert last.details.input_length == chat.usage.prompt_tokens > 0

    cut = list(client.text_generation(CHATML, stream=True, details=True, max_new_tokens=3))
    assert [e.token.text for e in cut] == TOKENS[:3]
    assert cut[-1].details is not None
    assert (cut[-1].generated_text, cut[-1].details.finish_reason) == ("Echo: hello", "length")

    fake.stream_input_length = False  # TGI 1.x: no index, no input_length
    old = list(client.text_generation(CHATML, stream=True, details=True))
    assert old[-1].details is not None
    assert vars(old[-1])["index"] is None  # typed int, but 1.x sent none
    assert vars(old[-1].details)["input_length"] is None
    assert old[-1].generated_text == ANSWER


def test_chat_completion(client: InferenceClient, fake: FakeTGI) -> None:
    out = client.chat_completion(MESSAGES, model="anything", max_tokens=20)
    assert out.choices[0].message.content == ANSWER
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason == "stop"
    assert (out.id, out.model) == ("", "Qwen/Qwen1.5-0.5B-Chat")
    assert out.system_fingerprint == "3.3.7-native"
    usage = out.usage
    assert usage.completion_tokens == 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert fake.last_request["route"] == "/v1/chat/completions"
    assert fake.last_request["body"]["model"] == "anything"

    chunks = list(client.chat_completion(MESSAGES, stream=True, stream_options=INCLUDE_USAGE))
    *content, final = chunks
    assert "".join(c.choices[0].delta.content or "" for c in content) == ANSWER
    assert [c.choices[0].delta.role for c in content] == ["assistant"] * 5
    assert [c.choices[0].finish_reason for c in content] == [None] * 4 + ["stop"]
    assert content[-1].choices[0].delta.content == ""  # the eos token
    assert all(c.usage is None for c in content)
    assert final.choices == []
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (usage.prompt_tokens, 5)
    without_usage = list(client.chat_completion(MESSAGES, stream=True))
    assert len(without_usage) == 5

    cut = client.chat_completion(MESSAGES, max_tokens=2)
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("Echo:", "length")
    stopped = client.chat_completion(MESSAGES, stop=["hello"])
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == (
        "Echo: hello",
        "stop_sequence",
    )
    greedy = client.chat_completion(MESSAGES, temperature=0.0)  # 0 means greedy on this route
    assert greedy.choices[0].message.content == ANSWER

    fake.model_id = "Qwen/Qwen1.5-1.8B-Chat"
    assert client.chat_completion(MESSAGES).model == "Qwen/Qwen1.5-1.8B-Chat"


def test_validation_errors(client: InferenceClient, fake: FakeTGI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"temperature": 0.0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"stop": list("abcde")}, "`stop` supports up to 4 stop sequences. Given: 5"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValidationError) as caught:
            client.text_generation(CHATML, **kwargs)
        assert str(caught.value) == f"Input validation error: {message}"
        assert status_of(caught.value) == 422

    fake.context_window = 20
    too_long = (
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 20."
        " Given: 30 `inputs` tokens and 100 `max_new_tokens`"
    )
    with pytest.raises(ValidationError) as caught:
        client.text_generation("word " * 30)
    assert str(caught.value) == too_long
    # the stream routes report validation in-band, as one event of an HTTP 200 stream
    with pytest.raises(ValidationError) as streamed:
        list(client.text_generation("word " * 30, stream=True))
    assert str(streamed.value) == too_long
    with pytest.raises(UnknownError) as chat_streamed:  # OpenAI-flavoured: no error_type
        list(client.chat_completion(MESSAGES, stream=True))
    assert "must be <= 20" in str(chat_streamed.value)
    assert "'http_status_code': 422" in str(chat_streamed.value)
    with pytest.raises(HfHubHTTPError) as chat_refused:  # chat errors are not parsed by type
        client.chat_completion(MESSAGES)
    assert status_of(chat_refused.value) == 422
    assert "must be <= 20" in str(chat_refused.value)

    fake.context_window = 8192
    fake.inject(Fault.CONTEXT_TOO_LONG)
    with pytest.raises(ValidationError, match="must be <= 8192"):
        client.text_generation(CHATML)
    streamed_cases: list[tuple[dict[str, Any], str]] = [
        ({"best_of": 2}, "`best_of` != 1 is not supported when streaming tokens"),
        (
            {"details": True, "decoder_input_details": True},
            "`decoder_input_details` == true is not supported when streaming tokens",
        ),
    ]
    for kwargs, message in streamed_cases:
        with pytest.raises(ValidationError) as caught:
            list(client.text_generation(CHATML, stream=True, **kwargs))
        assert str(caught.value) == f"Input validation error: {message}"


def test_refusals(client: InferenceClient, fake: FakeTGI, url: str) -> None:
    fake.inject(Fault.RATE_LIMITED, retry_after=1)
    with pytest.raises(OverloadedError, match=r"^Model is overloaded$") as overloaded:
        client.text_generation(CHATML)
    assert status_of(overloaded.value) == 429
    cause = overloaded.value.__cause__
    assert isinstance(cause, HfHubHTTPError)
    assert cause.response.headers["retry-after"] == "1"

    fake.inject(Fault.SERVER_ERROR)
    with pytest.raises(GenerationError) as failed:
        client.text_generation(CHATML)
    assert str(failed.value) == "Request failed during generation: Server error: CUDA out of memory"
    assert status_of(failed.value) == 424

    fake.inject(Fault.RATE_LIMITED)  # refused before the stream: nothing was streamed
    with pytest.raises(OverloadedError):
        list(client.text_generation(CHATML, stream=True))

    fake.inject(Fault.RATE_LIMITED)
    fake.inject(Fault.SERVER_ERROR)
    for status in (429, 424):
        with pytest.raises(HfHubHTTPError) as chat_refused:
            client.chat_completion(MESSAGES)
        assert status_of(chat_refused.value) == status

    # TGI has no auth; a gateway's 401 carries an error_type huggingface_hub does not know
    fake.inject(Fault.UNAUTHORIZED)
    with pytest.raises(UnknownError) as refused:
        client.text_generation(CHATML)
    assert str(refused.value) == "Authorization header is correct, but the token seems invalid"
    assert status_of(refused.value) == 401

    fake.api_token = "hf_test"
    with pytest.raises(UnknownError) as missing:
        client.text_generation(CHATML)
    assert status_of(missing.value) == 401
    keyed = InferenceClient(base_url=url, api_key="hf_test")
    assert keyed.text_generation(CHATML) == ANSWER
    assert fake.last_request["headers"]["authorization"] == "Bearer hf_test"

    fake.inject(Fault.SLOW, delay=0.3)
    started = time.monotonic()
    assert keyed.text_generation(CHATML) == ANSWER
    assert time.monotonic() - started >= 0.3


def test_errors_mid_stream(client: InferenceClient, fake: FakeTGI) -> None:
    fake.inject(Fault.MID_STREAM_ERROR)
    received: list[str] = []
    with pytest.raises(GenerationError, match="CUDA out of memory"):
        for piece in client.text_generation(CHATML, stream=True):
            received.append(piece)
    assert received == TOKENS[:2]

    fake.inject(Fault.MID_STREAM_ERROR, after_chunks=1)
    chunks: list[Any] = []
    with pytest.raises(UnknownError) as caught:  # {"error": {"message", "http_status_code"}}
        for chunk in client.chat_completion(MESSAGES, stream=True):
            chunks.append(chunk)
    assert [c.choices[0].delta.content for c in chunks] == ["Echo"]
    assert "CUDA out of memory" in str(caught.value)
    assert "'http_status_code': 424" in str(caught.value)

    fake.inject(Fault.CUT_STREAM)
    received.clear()
    with pytest.raises(Exception, match="incomplete chunked read"):
        for piece in client.text_generation(CHATML, stream=True):
            received.append(piece)
    assert received == TOKENS[:2]


def test_info_health_and_the_messages_api(url: str, fake: FakeTGI) -> None:
    client = InferenceClient(base_url=url, provider="hf-inference")
    info = client.get_endpoint_info()
    assert info["model_id"] == "Qwen/Qwen1.5-0.5B-Chat"
    assert (info["max_input_tokens"], info["max_total_tokens"]) == (8191, 8192)
    assert (info["max_stop_sequences"], info["version"]) == (4, "3.3.7")
    assert info["router"] == "text-generation-router"
    fake.context_window = 4096
    assert client.get_endpoint_info()["max_total_tokens"] == 4096
    assert client.health_check() is True
    fake.healthy = False
    assert client.health_check() is False

    fake.messages_api = False  # an old TGI: no /v1/chat/completions, /generate_stream still
    with pytest.raises(HfHubHTTPError) as missing:
        client.chat_completion(MESSAGES)
    assert status_of(missing.value) == 404
    assert "".join(client.text_generation(CHATML, stream=True)).startswith(ANSWER)
    assert [r["route"] for r in fake.requests][-2:] == ["/v1/chat/completions", "/"]


async def test_async_client(url: str, fake: FakeTGI) -> None:
    client = AsyncInferenceClient(base_url=url)
    events = [e async for e in await client.text_generation(CHATML, stream=True, details=True)]
    assert [e.token.text for e in events] == TOKENS
    assert events[-1].generated_text == ANSWER
    stream = await client.chat_completion(MESSAGES, stream=True, stream_options=INCLUDE_USAGE)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == ANSWER
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    fake.inject(Fault.RATE_LIMITED)
    with pytest.raises(OverloadedError):
        await client.text_generation(CHATML)


def test_raw_wire(url: str, fake: FakeTGI) -> None:
    """What the lenient clients do not show: the exact framing, bodies and other routes."""
    with httpx.Client(base_url=url) as http:
        stream = http.post("/generate_stream", json={"inputs": CHATML})
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = stream.text.split("\n\n")
        assert events[-1] == ""  # every event ends with a blank line...
        assert all(e.startswith('data:{"index":') for e in events[:-1])  # ...no space, no [DONE]
        assert len(events) == 6
        chat = http.post("/v1/chat/completions", json={"messages": MESSAGES, "stream": True})
        lines = [e for e in chat.text.split("\n\n") if e]
        assert all(e.startswith("data: {") for e in lines[:-1])
        assert lines[-1] == "data: [DONE]"
        assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in lines[:-1])
        whole = http.post("/v1/chat/completions", json={"messages": MESSAGES}).json()
        assert (whole["object"], whole["choices"][0]["logprobs"]) == ("chat.completion", None)
        answer = http.post("/generate", json={"inputs": CHATML, "parameters": {}})
        assert answer.json() == {"generated_text": ANSWER}
        assert answer.headers["x-generated-tokens"] == "5"
        assert int(answer.headers["x-prompt-tokens"]) > 0
        assert http.post("/", json={"inputs": CHATML}).json() == [{"generated_text": ANSWER}]
        health = http.get("/health")
        assert (health.status_code, health.content) == (200, b"")
        fake.healthy = False
        unhealthy = http.get("/health")
        assert unhealthy.status_code == 503
        assert unhealthy.json() == {"error": "unhealthy", "error_type": "healthcheck"}
        models = http.get("/v1/models").json()
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["Qwen/Qwen1.5-0.5B-Chat"]
        tokens = http.post("/tokenize", json={"inputs": "hello world"}).json()
        assert [(t["text"], t["start"], t["stop"]) for t in tokens] == [
            ("hello", 0, 5),
            (" world", 5, 11),
        ]
        fake.messages_api = False
        gone = http.post("/v1/chat/completions", json={"messages": MESSAGES})
        assert (gone.status_code, gone.content) == (404, b"")
        fake.inject(Fault.RATE_LIMITED, retry_after=2)
        refused = http.post("/generate", json={"inputs": CHATML})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "2"
        assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}


# --------------------------------------------------------------------------- text-generation 0.7.0

CLIENT = """
import asyncio
import text_generation
from text_generation import AsyncClient, Client
from text_generation.types import Message
client = Client({url!r})
chatml = {chatml!r}
"""


def test_text_generation_client_generate_and_stream(url: str, fake: FakeTGI) -> None:
    result = run_vendor_sdk(
        "text-generation",
        CLIENT.format(url=url, chatml=CHATML)
        + """
def summary(response):
    d = response.details
    return [response.generated_text, d.finish_reason.value, d.generated_tokens,
            [t.text for t in d.tokens], [t.special for t in d.tokens], len(d.prefill)]
events = [[e.token.text, e.token.special, e.generated_text,
           e.details and [e.details.finish_reason.value, e.details.generated_tokens]]
          for e in client.generate_stream(chatml, max_new_tokens=20)]
result = {
    "answer": summary(client.generate(chatml, max_new_tokens=20)),
    "cut": summary(client.generate(chatml, max_new_tokens=2)),
    "stopped": summary(client.generate(chatml, stop_sequences=["hello"])),
    "prefill": summary(client.generate(chatml, decoder_input_details=True)),
    "events": events,
}
""",
    )
    assert result["answer"] == [ANSWER, "eos_token", 5, TOKENS, [False] * 4 + [True], 0]
    assert result["cut"] == ["Echo:", "length", 2, TOKENS[:2], [False, False], 0]
    assert result["stopped"][:3] == ["Echo: hello", "stop_sequence", 3]
    assert result["prefill"][5] > 0
    assert [e[0] for e in result["events"]] == TOKENS
    assert all(e[2] is None and e[3] is None for e in result["events"][:-1])
    assert result["events"][-1] == ["<|im_end|>", True, ANSWER, ["eos_token", 5]]
    # generate() and generate_stream() both POST to the base URL, always asking for details
    sent = [(r["route"], r["body"]["stream"], r["body"]["parameters"]) for r in fake.requests]
    assert [(route, stream) for route, stream, _ in sent] == [("/", True)] + [("/", False)] * 4
    assert all(parameters["details"] is True for _, _, parameters in sent)
    assert sent[3][2]["stop"] == ["hello"]


def test_text_generation_client_errors(url: str, fake: FakeTGI) -> None:
    for fault in (
        Fault.RATE_LIMITED,
        Fault.SERVER_ERROR,
        Fault.UNAUTHORIZED,
        Fault.CONTEXT_TOO_LONG,
        Fault.RATE_LIMITED,
        Fault.CONTEXT_TOO_LONG,
        Fault.MID_STREAM_ERROR,
    ):
        fake.inject(fault, retry_after=1)
    result = run_vendor_sdk(
        "text-generation",
        CLIENT.format(url=url, chatml=CHATML)
        + """
def attempt(call):
    seen = []
    try:
        for piece in call():
            seen.append(piece.token.text)
    except Exception as exc:
        return [type(exc).__name__, str(exc), seen]
    return [None, None, seen]
once = lambda **kw: lambda: [client.generate(chatml, **kw)]
streamed = lambda **kw: lambda: client.generate_stream(chatml, **kw)
result = [
    attempt(once()),  # 429
    attempt(once()),  # 424
    attempt(once()),  # a gateway's 401
    attempt(once()),  # context too long
    attempt(streamed()),  # 429 before the stream
    attempt(streamed()),  # context too long, in-band
    attempt(streamed()),  # fails after two tokens
    attempt(once(stop_sequences=list("abcde"))),  # TGI's limit is 4
]
""",
    )
    classes = [r[0] for r in result]
    assert classes == [
        "OverloadedError",
        "GenerationError",
        "UnknownError",
        "ValidationError",
        "OverloadedError",
        "ValidationError",
        "GenerationError",
        "ValidationError",
    ]
    assert result[0][1] == "Model is overloaded"
    assert result[2][1] == "Authorization header is correct, but the token seems invalid"
    assert result[3][1].startswith("Input validation error: `inputs` tokens + `max_new_tokens`")
    assert result[5][1] == result[3][1]
    assert result[6][2] == TOKENS[:2]
    assert result[7][1] == (
        "Input validation error: `stop` supports up to 4 stop sequences. Given: 5"
    )


def test_text_generation_async_client_chat(url: str, fake: FakeTGI) -> None:
    """``AsyncClient.chat`` reads the Messages API; its streaming half cannot parse TGI's
    chunks: its pydantic model requires ``delta.tool_calls``, which TGI leaves out of a text
    delta (and it would then choke on ``data: [DONE]``). The fake stays faithful to TGI, so the
    client's bug shows here as it would against a real server."""
    result = run_vendor_sdk(
        "text-generation",
        CLIENT.format(url=url, chatml=CHATML)
        + """
async def main():
    client = AsyncClient(sync_client.base_url)
    messages = [Message(role="user", content="hello there")]
    answer = await client.chat(messages, max_tokens=20)
    streamed = []
    try:
        async for chunk in await client.chat(messages, stream=True):
            streamed.append(chunk.choices[0].delta.content)
        failure = None
    except Exception as exc:
        failure = [type(exc).__name__, str(exc)]
    events = [e.token.text async for e in client.generate_stream(chatml, max_new_tokens=20)]
    return {
        "answer": [answer.choices[0].message.content, answer.choices[0].finish_reason,
                   answer.model, answer.system_fingerprint, answer.usage],
        "streamed": streamed, "failure": failure, "events": events,
    }
sync_client = client
result = asyncio.run(main())
""",
    )
    content, finish, model, fingerprint, usage = result["answer"]
    assert (content, finish, model, fingerprint) == (
        ANSWER,
        "stop",
        "Qwen/Qwen1.5-0.5B-Chat",
        "3.3.7-native",
    )
    assert usage["completion_tokens"] == 5
    assert result["streamed"] == []
    assert result["failure"] == ["KeyError", "'error'"]
    assert result["events"] == TOKENS
    chat_requests = [r for r in fake.requests if r["route"] == "/v1/chat/completions"]
    assert [r["body"]["stream"] for r in chat_requests] == [False, True]
    assert all(r["body"]["model"] == "tgi" for r in chat_requests)
