"""The official openai SDK, used the way Moonshot's documentation uses it, unchanged against
the fake Moonshot server: chat, a stream whose usage sits in ``choices[0]``, the Files API
(upload, extracted content, list, delete) and the SDK's error classes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.moonshot import FakeMoonshot
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendor_sdks import run_vendor_sdk

pytestmark = pytest.mark.timeout(900)

CLIENT = """
from openai import OpenAI
import openai
client = OpenAI(base_url={url!r} + "/v1", api_key={key!r}, max_retries=0)
"""


@pytest.fixture(scope="module")
def moonshot_server() -> Iterator[tuple[FakeMoonshot, str]]:
    fake = FakeMoonshot()
    with serve_in_thread(fake.app) as url:
        yield fake, url


@pytest.fixture
def fake(moonshot_server: tuple[FakeMoonshot, str]) -> Iterator[FakeMoonshot]:
    served, _ = moonshot_server
    served.clear_faults()
    served.requests.clear()
    served.files.clear()
    yield served
    served.clear_faults()


def test_sdk_chat_and_stream(moonshot_server: tuple[FakeMoonshot, str], fake: FakeMoonshot) -> None:
    _, url = moonshot_server
    result = run_vendor_sdk(
        "openai",
        CLIENT.format(url=url, key="sk-test")
        + """
messages = [{"role": "user", "content": "hello there"}]
answer = client.chat.completions.create(model="moonshot-v1-8k", messages=messages,
    temperature=0.3, max_tokens=50)
raw = client.chat.completions.with_raw_response.create(model="moonshot-v1-8k",
    messages=messages)
chunks = list(client.chat.completions.create(model="moonshot-v1-8k", messages=messages,
    stream=True))
result = {
    "text": answer.choices[0].message.content,
    "finish": answer.choices[0].finish_reason,
    "id": answer.id,
    "usage": answer.usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens"}),
    "request_id": raw.headers.get("msh-request-id"),
    "streamed": "".join(c.choices[0].delta.content or "" for c in chunks),
    "stream_usage": [(c.choices[0].model_extra or {}).get("usage") for c in chunks
                     if (c.choices[0].model_extra or {}).get("usage")],
    "top_level_usage": [c.usage for c in chunks if c.usage],
    "last_finish": chunks[-1].choices[0].finish_reason,
}
""",
    )
    assert result["text"] == "Echo: hello there"
    assert result["finish"] == "stop"
    assert result["id"].startswith("cmpl-")
    assert result["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert result["request_id"]
    assert result["streamed"] == result["text"]
    assert result["stream_usage"] == [result["usage"]]
    assert result["top_level_usage"] == []
    assert result["last_finish"] == "stop"


def test_sdk_files_api_as_moonshot_documents_it(
    moonshot_server: tuple[FakeMoonshot, str], fake: FakeMoonshot
) -> None:
    _, url = moonshot_server
    result = run_vendor_sdk(
        "openai",
        CLIENT.format(url=url, key="sk-test")
        + """
import tempfile
from pathlib import Path
folder = Path(tempfile.mkdtemp())
(folder / "报告.md").write_text("# 季度报告\\n收入增长。", encoding="utf-8")
(folder / "xlnet.pdf").write_bytes(b"%PDF-1.4 fake pdf")
text_file = client.files.create(file=folder / "报告.md", purpose="file-extract")
pdf_file = client.files.create(file=folder / "xlnet.pdf", purpose="file-extract")
file_content = client.files.content(file_id=text_file.id).text
messages = [
    {"role": "system", "content": "你是 Kimi。"},
    {"role": "system", "content": file_content},
    {"role": "user", "content": "请简单介绍报告讲了啥"},
]
completion = client.chat.completions.create(model="moonshot-v1-32k", messages=messages)
listed = [f.id for f in client.files.list().data]
deleted = client.files.delete(file_id=text_file.id)
result = {
    "object": text_file.model_dump(),
    "content": json.loads(file_content),
    "pdf_content": json.loads(client.files.content(file_id=pdf_file.id).text),
    "answer": completion.choices[0].message.content,
    "listed": sorted(listed),
    "expected": sorted([text_file.id, pdf_file.id]),
    "deleted": deleted.deleted,
    "left": [f.id for f in client.files.list().data],
    "pdf": pdf_file.id,
}
""",
    )
    stored = result["object"]
    assert stored["object"] == "file" and stored["purpose"] == "file-extract"
    assert stored["status"] == "ok" and stored["filename"] == "报告.md"
    assert stored["bytes"] == len("# 季度报告\n收入增长。".encode())
    assert result["content"] == {
        "content": "# 季度报告\n收入增长。",
        "file_type": "text/markdown",
        "filename": "报告.md",
        "title": "",
        "type": "file",
    }
    assert result["pdf_content"]["filename"] == "xlnet.pdf"
    assert result["pdf_content"]["content"].startswith("[xlnet.pdf: 17 bytes")
    assert result["answer"] == "Echo: 请简单介绍报告讲了啥"
    assert result["listed"] == result["expected"]
    assert result["deleted"] is True
    assert result["left"] == [result["pdf"]]
    upload = next(r for r in fake.requests if r.get("method") == "POST" and "/files" in r["path"])
    assert upload["purpose"] == "file-extract"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.UNAUTHORIZED, ("AuthenticationError", 401, "invalid_authentication_error")),
        (Fault.RATE_LIMITED, ("RateLimitError", 429, "rate_limit_reached_error")),
        (Fault.SERVER_ERROR, ("InternalServerError", 500, "server_error")),
        (Fault.CONTEXT_TOO_LONG, ("BadRequestError", 400, "invalid_request_error")),
        (Fault.CONTENT_FILTERED, ("BadRequestError", 400, "content_filter")),
    ],
)
def test_sdk_maps_fake_errors(
    moonshot_server: tuple[FakeMoonshot, str],
    fake: FakeMoonshot,
    fault: Fault,
    expected: tuple[str, int, str],
) -> None:
    _, url = moonshot_server
    fake.inject(fault, retry_after=1)
    result = run_vendor_sdk(
        "openai",
        CLIENT.format(url=url, key="sk-test")
        + """
try:
    client.chat.completions.create(model="moonshot-v1-8k",
        messages=[{"role": "user", "content": "hi"}])
    result = None
except openai.APIStatusError as exc:
    result = {"class": type(exc).__name__, "status": exc.status_code, "type": exc.type,
              "message": exc.message}
""",
    )
    assert (result["class"], result["status"], result["type"]) == expected


def test_sdk_file_upload_errors(
    moonshot_server: tuple[FakeMoonshot, str], fake: FakeMoonshot
) -> None:
    _, url = moonshot_server
    result = run_vendor_sdk(
        "openai",
        CLIENT.format(url=url, key="sk-wrong")
        + """
outcomes = []
try:
    client.files.create(file=("a.txt", b"hi"), purpose="file-extract")
except openai.APIStatusError as exc:
    outcomes.append((type(exc).__name__, exc.status_code))
good = OpenAI(base_url=client.base_url, api_key="sk-test", max_retries=0)
for name in ("tool.exe", "a.txt"):
    try:
        good.files.create(file=(name, b"MZ"), purpose="fine-tune")
    except openai.APIStatusError as exc:
        outcomes.append((type(exc).__name__, exc.status_code))
try:
    good.files.content(file_id="cnmissing")
except openai.APIStatusError as exc:
    outcomes.append((type(exc).__name__, exc.status_code))
result = outcomes
""",
    )
    assert result == [
        ["AuthenticationError", 401],
        ["BadRequestError", 400],
        ["BadRequestError", 400],
        ["NotFoundError", 404],
    ]
