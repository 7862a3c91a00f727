"""The Moonshot chat model, with its Files API, against the fake Moonshot server (what every
vendor shares is in ``test_contract.py``)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from starlette.requests import Request
from starlette.responses import Response

from fengchao_chains import get_chat_model
from fengchao_chains.llms import moonshot
from fengchao_chains.llms.errors import (
    AuthenticationError,
    ContentFilteredError,
    ContextTooLongError,
    InvalidRequestError,
    RateLimitError,
)
from fengchao_chains.llms.moonshot import ChatMoonshot
from fengchao_chains.testing.fakes._common import Fault
from fengchao_chains.testing.fakes.moonshot import FakeFile, FakeMoonshot
from fengchao_chains.testing.serve import serve_in_thread
from tests.vendors.checks import assert_no_secret, summed, tuned
from tests.vendors.harness import MOONSHOT

NOTES = "会议纪要：周五发布 v2。\nNotes: ship v2 on Friday."


fake, url, model = MOONSHOT.fixtures()


def chats(fake: FakeMoonshot) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["path"].endswith("/chat/completions")]


def file_calls(fake: FakeMoonshot) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in fake.requests if "/files" in r["path"]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def document_message(fake: FakeMoonshot, index: int = 0) -> dict[str, Any]:
    """The ``index``-th system message of the last chat request holding a document."""
    found = [
        json.loads(m["content"])
        for m in chats(fake)[-1]["body"]["messages"]
        if m["role"] == "system" and m["content"].startswith("{")
    ]
    return dict(found[index])


# ---------------------------------------------------------------------------- chat


def test_factory_overrides_win_over_settings(url: str, fake: FakeMoonshot) -> None:
    from fengchao_chains.settings import Settings

    settings = Settings(moonshot_api_key="sk-wrong", moonshot_base_url="http://unused.invalid")
    chat = get_chat_model(
        "moonshot-v1-32k", settings=settings, api_key="sk-test", base_url=url, temperature=0.2
    )
    assert chat.invoke("hi").content == "Echo: hi"
    assert chats(fake)[-1]["body"]["temperature"] == 0.2


def test_payload_maps_standard_parameters(model: ChatMoonshot, fake: FakeMoonshot) -> None:
    tuned_model = tuned(model, model_kwargs={"presence_penalty": 0.5, "n": 1})
    tuned_model.invoke([SystemMessage("be brief"), HumanMessage("hi")], stop=["\n\n"])
    body = chats(fake)[-1]["body"]
    assert body == {
        "model": "moonshot-v1-8k",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 50,
        "stop": ["\n\n"],
        "presence_penalty": 0.5,
        "n": 1,
        "stream": False,
    }
    answer = tuned_model.invoke("hi", model="moonshot-v1-128k")
    assert chats(fake)[-1]["body"]["model"] == "moonshot-v1-128k"
    assert answer.response_metadata["model_name"] == "moonshot-v1-128k"


def test_stream_usage_comes_from_the_last_choice_without_stream_options(
    model: ChatMoonshot, fake: FakeMoonshot
) -> None:
    streamed = summed(list(model.stream("count these words please")))
    body = chats(fake)[-1]["body"]
    assert body["stream"] is True
    assert "stream_options" not in body
    assert streamed.usage_metadata == {"input_tokens": 4, "output_tokens": 6, "total_tokens": 10}


def test_request_id_is_moonshots_header(model: ChatMoonshot) -> None:
    answer = model.invoke("hi")
    streamed = summed(list(model.stream("hi")))
    for message in (answer, streamed):
        request_id = message.response_metadata["request_id"]
        assert len(request_id) == 24 and not request_id.startswith("cmpl-")
    assert answer.id is not None and answer.id.startswith("cmpl-")


def test_missing_key_names_the_variable_and_sends_nothing(url: str, fake: FakeMoonshot) -> None:
    chat = ChatMoonshot(model="moonshot-v1-8k", base_url=url)
    with pytest.raises(AuthenticationError, match="MOONSHOT_API_KEY"):
        chat.invoke("hi")
    assert fake.requests == []


def test_key_and_base_url_come_from_the_environment(
    url: str, fake: FakeMoonshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOONSHOT_API_KEY", "sk-test")
    monkeypatch.setenv("MOONSHOT_BASE_URL", url)
    assert ChatMoonshot(model="moonshot-v1-8k").invoke("hi").content == "Echo: hi"
    assert ChatMoonshot(model="m").default_base_url == "https://api.moonshot.cn/v1"


def test_bad_key_on_the_files_api_never_leaks(url: str, fake: FakeMoonshot) -> None:
    secret = "sk-moonshot-very-secret-42"
    chat = ChatMoonshot(model="moonshot-v1-8k", api_key=secret, base_url=url)
    with pytest.raises(AuthenticationError) as caught:
        chat.invoke("hi", files=[("a.txt", b"text")])
    assert caught.value.status_code == 401
    assert file_calls(fake) == [("POST", "/v1/files")]
    assert chats(fake) == []
    assert_no_secret(secret, chat, caught.value)


def test_exhausted_balance_is_not_retried(model: ChatMoonshot, fake: FakeMoonshot) -> None:
    fake.exhausted = True
    with pytest.raises(RateLimitError) as caught:
        model.invoke("hi")
    assert caught.value.code == "exceeded_current_quota_error"
    assert caught.value.status_code == 429
    assert len(fake.requests) == 1


def test_unknown_url_gets_the_gateway_error(moonshot_server: tuple[FakeMoonshot, str]) -> None:
    chat = ChatMoonshot(model="m", api_key="sk-test", base_url=f"{moonshot_server[1]}/v2")
    with pytest.raises(InvalidRequestError) as caught:
        chat.invoke("hi")
    assert caught.value.status_code == 404
    assert caught.value.code == "url.not_found"


# ---------------------------------------------------------------------------- documents


def test_a_document_becomes_a_system_message_before_its_question(
    model: ChatMoonshot, fake: FakeMoonshot
) -> None:
    question = HumanMessage(
        [
            {"type": "text", "text": "When do we ship?"},
            {
                "type": "file",
                "base64": b64(NOTES.encode()),
                "mime_type": "text/plain",
                "filename": "纪要.txt",
            },
        ]
    )
    answer = model.invoke([SystemMessage("be brief"), question])
    assert answer.content == "Echo: When do we ship?"
    messages = chats(fake)[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "system", "user"]
    assert messages[0]["content"] == "be brief"
    assert json.loads(messages[1]["content"]) == {
        "content": NOTES,
        "file_type": "text/plain",
        "filename": "纪要.txt",
        "title": "",
        "type": "file",
    }
    assert messages[2] == {"role": "user", "content": "When do we ship?"}
    upload = fake.requests[0]
    assert (upload["method"], upload["path"]) == ("POST", "/v1/files")
    assert upload["purpose"] == "file-extract"
    assert upload["filename"] == "纪要.txt"
    assert upload["headers"]["authorization"] == "Bearer sk-test"
    assert upload["headers"]["content-type"].startswith("multipart/form-data")
    file_id = upload_id(fake)
    assert file_calls(fake) == [
        ("POST", "/v1/files"),
        ("GET", f"/v1/files/{file_id}/content"),
        ("DELETE", f"/v1/files/{file_id}"),
    ]
    assert fake.files == {}
    assert answer.usage_metadata is not None and answer.usage_metadata["input_tokens"] > 20


def upload_id(fake: FakeMoonshot) -> str:
    content = next(r for r in fake.requests if r["path"].endswith("/content"))
    return str(content["path"].split("/")[-2])


@pytest.mark.parametrize(
    "block",
    [
        {"type": "file", "base64": b64(NOTES.encode()), "mime_type": "text/plain"},
        {
            "type": "file",
            "source_type": "base64",
            "data": b64(NOTES.encode()),
            "mime_type": "text/plain",
        },
        {
            "type": "file",
            # LangChain reads OpenAI's form as a PDF; Moonshot goes by the file name.
            "file": {
                "filename": "document.txt",
                "file_data": f"data:text/plain;base64,{b64(NOTES.encode())}",
            },
        },
        {"type": "file", "data": b64(NOTES.encode()), "mime_type": "text/plain"},
        {"type": "text-plain", "base64": b64(NOTES.encode()), "mime_type": "text/plain"},
    ],
    ids=["v1-base64", "v0-base64", "openai-file-data", "data-key", "text-plain"],
)
def test_every_langchain_file_block_form(
    model: ChatMoonshot, fake: FakeMoonshot, block: dict[str, Any]
) -> None:
    model.invoke([HumanMessage([{"type": "text", "text": "When?"}, block])])
    extracted = document_message(fake)
    assert extracted["content"] == NOTES
    assert extracted["filename"] == "document.txt"
    assert chats(fake)[-1]["body"]["messages"][-1] == {"role": "user", "content": "When?"}


def test_inline_plain_text_stays_in_the_question(model: ChatMoonshot, fake: FakeMoonshot) -> None:
    v0_text = {"type": "file", "source_type": "text", "url": "Ship on Friday."}
    model.invoke([HumanMessage(["Notes: ", v0_text])])
    assert chats(fake)[-1]["body"]["messages"] == [
        {"role": "user", "content": "Notes: Ship on Friday."}
    ]
    assert file_calls(fake) == []


def test_the_filename_may_sit_in_extras_or_metadata(
    model: ChatMoonshot, fake: FakeMoonshot
) -> None:
    pdf = b"%PDF-1.4 fake"
    blocks: list[str | dict[str, Any]] = [
        {"type": "file", "base64": b64(pdf), "mime_type": "application/pdf",
         "extras": {"filename": "a.pdf"}},
        {"type": "file", "source_type": "base64", "data": b64(pdf + b"2"),
         "mime_type": "application/pdf", "metadata": {"filename": "b.pdf"}},
        {"type": "file", "file": {"filename": "c.pdf", "file_data": b64(pdf + b"3")}},
    ]  # fmt: skip
    model.invoke([HumanMessage(["Compare.", *blocks])])
    assert [document_message(fake, i)["filename"] for i in range(3)] == ["a.pdf", "b.pdf", "c.pdf"]
    assert document_message(fake, 2)["file_type"] == "application/pdf"


def test_an_uploaded_file_id_is_read_not_uploaded_nor_deleted(url: str, fake: FakeMoonshot) -> None:
    fake.files["cnkept0000000000001"] = FakeFile(
        "cnkept0000000000001", "kept.md", "file-extract", b"# Kept", "text/markdown", 0
    )
    for block in (
        {"type": "file", "file_id": "cnkept0000000000001"},
        {"type": "file", "source_type": "id", "id": "cnkept0000000000001"},
        {"type": "file", "file": {"file_id": "cnkept0000000000001"}},
    ):
        chat = ChatMoonshot(model="moonshot-v1-8k", api_key="sk-test", base_url=url)
        chat.invoke([HumanMessage(["What is kept?", block])])
        assert document_message(fake)["content"] == "# Kept"
    assert file_calls(fake) == [("GET", "/v1/files/cnkept0000000000001/content")] * 3
    assert "cnkept0000000000001" in fake.files


def test_files_argument_takes_paths_and_pairs(
    model: ChatMoonshot, fake: FakeMoonshot, tmp_path: Path
) -> None:
    path = tmp_path / "notes.md"
    path.write_text(NOTES, encoding="utf-8")
    history = [HumanMessage("hello"), AIMessage("Echo: hello"), HumanMessage("When?")]
    chunks = list(model.stream(history, files=[path, ("data.csv", b"a,b\n1,2\n")]))
    assert summed(chunks).content == "Echo: When?"
    messages = chats(fake)[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "system", "system", "user"]
    assert document_message(fake, 0)["content"] == NOTES
    assert document_message(fake, 0)["filename"] == "notes.md"
    assert document_message(fake, 1) == {
        "content": "a,b\n1,2\n",
        "file_type": "text/csv",
        "filename": "data.csv",
        "title": "",
        "type": "file",
    }
    assert "files" not in chats(fake)[-1]["body"]


async def test_files_argument_async_and_in_a_chain(
    model: ChatMoonshot, fake: FakeMoonshot, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("alpha", encoding="utf-8")
    (tmp_path / "b.txt").write_text("beta", encoding="utf-8")
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | model.bind(
        files=[tmp_path / "a.txt", str(tmp_path / "b.txt")]
    )
    answer = await chain.ainvoke({"q": "Which letters?"})
    assert answer.content == "Echo: Which letters?"
    assert [document_message(fake, i)["content"] for i in range(2)] == ["alpha", "beta"]
    assert sorted(m for m, _ in file_calls(fake)) == ["DELETE"] * 2 + ["GET"] * 2 + ["POST"] * 2
    streamed = [c async for c in model.astream("Again?", files=[("c.txt", b"gamma")])]
    assert summed(streamed).content == "Echo: Again?"
    assert document_message(fake)["content"] == "gamma"
    assert fake.files == {}


def test_a_document_in_the_history_is_uploaded_once(
    url: str, model: ChatMoonshot, fake: FakeMoonshot
) -> None:
    first = HumanMessage(
        ["Read this.", {"type": "file", "base64": b64(b"text"), "mime_type": "text/plain"}]
    )
    answer = model.invoke([first])
    model.invoke([first, answer, HumanMessage("And now?")])
    assert [m for m, _ in file_calls(fake)] == ["POST", "GET", "DELETE"]
    sent = chats(fake)[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    ChatMoonshot(model="moonshot-v1-8k", api_key="sk-test", base_url=url).invoke([first])
    assert [m for m, _ in file_calls(fake)].count("POST") == 2


async def test_same_document_twice_in_one_async_call_is_uploaded_once(
    model: ChatMoonshot, fake: FakeMoonshot
) -> None:
    block = {"type": "file", "base64": b64(b"same"), "mime_type": "text/plain"}
    await model.ainvoke([HumanMessage(["One.", block]), HumanMessage(["Two.", block])])
    assert [m for m, _ in file_calls(fake)] == ["POST", "GET", "DELETE"]
    roles = [m["role"] for m in chats(fake)[-1]["body"]["messages"]]
    assert roles == ["system", "user", "system", "user"]


def test_a_message_holding_only_a_document_leaves_just_the_document(
    model: ChatMoonshot, fake: FakeMoonshot
) -> None:
    only = HumanMessage([{"type": "file", "base64": b64(b"facts"), "mime_type": "text/plain"}])
    model.invoke([only, HumanMessage("Summarise.")])
    sent = chats(fake)[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    assert sent[1]["content"] == "Summarise."


def test_the_document_cache_is_bounded(url: str, fake: FakeMoonshot, tmp_path: Path) -> None:
    class Forgetful(ChatMoonshot):
        document_cache_size = 1

    chat = Forgetful(model="moonshot-v1-8k", api_key="sk-test", base_url=url)
    (tmp_path / "a.txt").write_text("alpha", encoding="utf-8")
    chat.invoke("Read.", files=tmp_path / "a.txt")  # one path needs no list
    chat.invoke("Read.", files=[("b.txt", b"beta")])  # pushes a.txt out
    chat.invoke("Read.", files=[tmp_path / "a.txt"])  # so it is uploaded again
    chat.invoke("Read.", files=[tmp_path / "a.txt"])  # and now remembered
    assert [m for m, _ in file_calls(fake)].count("POST") == 3


def test_uploads_can_be_kept(model: ChatMoonshot, fake: FakeMoonshot) -> None:
    keeping = model.model_copy(update={"delete_files_after_use": False})
    keeping.invoke("Read.", files=[("keep.txt", b"keep me")])
    assert [f.filename for f in fake.files.values()] == ["keep.txt"]
    assert [m for m, _ in file_calls(fake)] == ["POST", "GET"]


def test_upload_errors_are_invalid_requests(model: ChatMoonshot, fake: FakeMoonshot) -> None:
    fake.max_file_bytes = 10
    with pytest.raises(InvalidRequestError) as too_large:
        model.invoke("Read.", files=[("big.txt", b"x" * 11)])
    assert too_large.value.status_code == 400
    assert "too large" in too_large.value.message
    fake.too_large_message = "file size exceeds the limit of 10 bytes"
    with pytest.raises(InvalidRequestError) as sniffed:
        model.invoke("Read.", files=[("big.txt", b"x" * 11)])
    assert not isinstance(sniffed.value, ContextTooLongError)
    assert "big.txt" in sniffed.value.message
    with pytest.raises(InvalidRequestError, match="unsupported file type"):
        model.invoke("Run.", files=[("tool.exe", b"MZ")])
    assert chats(fake) == []
    assert fake.files == {}


def test_a_failed_extraction_is_an_invalid_request_and_the_file_is_deleted(
    model: ChatMoonshot, fake: FakeMoonshot
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        model.invoke("Read.", files=[("broken.pdf", b"not a pdf")])
    assert caught.value.code == "file_extract_error"
    assert "broken.pdf" in caught.value.message
    assert [m for m, _ in file_calls(fake)] == ["POST", "DELETE"]
    assert fake.files == {}


def test_documents_are_refused_before_any_request(
    model: ChatMoonshot, fake: FakeMoonshot, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url_block = {"type": "file", "url": "http://169.254.169.254/latest/meta-data"}
    with pytest.raises(InvalidRequestError, match="URLs are not fetched"):
        model.invoke([HumanMessage(["Read.", url_block])])
    with pytest.raises(InvalidRequestError, match="not valid base64"):
        model.invoke(
            [HumanMessage(["Read.", {"type": "file", "base64": "@@@", "mime_type": "a/b"}])]
        )
    with pytest.raises(InvalidRequestError, match="cannot read"):
        model.invoke("Read.", files=[tmp_path / "missing.pdf"])
    with pytest.raises(InvalidRequestError, match="not a Moonshot file id"):
        model.invoke([HumanMessage(["Read.", {"type": "file", "file_id": "../files"}])])
    with pytest.raises(InvalidRequestError, match="needs base64 data"):
        model.invoke([HumanMessage(["Read.", {"type": "file", "path": "/etc/passwd"}])])
    monkeypatch.setattr(moonshot, "MAX_FILE_BYTES", 4)
    with pytest.raises(InvalidRequestError, match="over Moonshot's limit of 4 bytes"):
        model.invoke("Read.", files=[("five.txt", b"12345")])
    assert fake.requests == []


def test_file_api_auth_and_rate_limits(model: ChatMoonshot, fake: FakeMoonshot) -> None:
    fake.inject(Fault.RATE_LIMITED, retry_after=0)
    fake.inject(Fault.SERVER_ERROR)
    assert model.invoke("Read.", files=[("a.txt", b"alpha")]).content == "Echo: Read."
    assert [m for m, _ in file_calls(fake)] == ["POST", "POST", "POST", "GET", "DELETE"]
    fake.inject(Fault.UNAUTHORIZED)
    with pytest.raises(AuthenticationError):
        model.invoke("Read.", files=[("b.txt", b"beta")])
    fake.inject(Fault.CONTENT_FILTERED)  # a chat-only fault waits for the chat request
    with pytest.raises(ContentFilteredError):
        model.invoke("Read.", files=[("c.txt", b"gamma")])
    assert [m for m, _ in file_calls(fake)[-3:]] == ["POST", "GET", "DELETE"]


class FailingDelete(FakeMoonshot):
    async def delete_file(self, request: Request) -> Response:
        return self.error(500, "server error", "server_error")


def test_a_failed_delete_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    failing = FailingDelete()
    with serve_in_thread(failing.app) as base:
        chat = ChatMoonshot(model="m", api_key="sk-test", base_url=f"{base}/v1", max_retries=0)
        with caplog.at_level(logging.WARNING, logger="fengchao_chains.llms"):
            assert chat.invoke("Read.", files=[("a.txt", b"alpha")]).content == "Echo: Read."
    assert any("could not delete Moonshot file" in r.getMessage() for r in caplog.records)
    assert len(failing.files) == 1


# ---------------------------------------------------------------------------- the fake itself


def test_fake_files_routes(url: str, fake: FakeMoonshot) -> None:
    auth = {"Authorization": "Bearer sk-test"}
    with httpx.Client(base_url=url, headers=auth) as client:
        made = client.post(
            "/files",
            files={"file": ("r.txt", b"hi", "text/plain")},
            data={"purpose": "file-extract"},
        )
        assert made.status_code == 200 and made.headers["msh-request-id"]
        info = made.json()
        assert info["object"] == "file" and info["status"] == "ok" and info["bytes"] == 2
        assert client.get("/files").json() == {"object": "list", "data": [info]}
        assert client.get(f"/files/{info['id']}").json() == info
        assert client.get(f"/files/{info['id']}/content").json()["content"] == "hi"
        gone = client.delete(f"/files/{info['id']}").json()
        assert gone == {"id": info["id"], "object": "file", "deleted": True}
        missing = client.get(f"/files/{info['id']}/content")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "resource_not_found_error"
        bad_purpose = client.post(
            "/files", files={"file": ("r.txt", b"hi")}, data={"purpose": "fine-tune"}
        )
        assert bad_purpose.status_code == 400
        denied = client.get("/files", headers={"Authorization": "Bearer sk-nope"})
        assert denied.status_code == 401
        assert denied.json() == {
            "error": {"message": "Invalid Authentication", "type": "invalid_authentication_error"}
        }


def test_fake_stream_framing(url: str, fake: FakeMoonshot) -> None:
    body = {
        "model": "moonshot-v1-8k",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    answer = httpx.post(
        f"{url}/chat/completions", json=body, headers={"Authorization": "Bearer sk-test"}
    )
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [e for e in answer.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 3,
        "total_tokens": 4,
    }
    assert last["choices"][0]["finish_reason"] == "stop"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all("usage" not in c and len(c["choices"]) == 1 for c in chunks)
    assert all("usage" not in c["choices"][0] for c in chunks[:-1])
