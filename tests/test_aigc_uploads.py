"""``POST /aigc/uploadfiles/`` over HTTP: the SDK's multipart shape, always-JSON answers,
owners from optional tokens, the whole-body cap, abuse (oversize, bad types, traversal names,
malformed bodies) leaving nothing behind, and the published fengchao SDK uploading for real."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fengchao_chains.db import Database
from fengchao_chains.gateway.auth import issue_token
from fengchao_chains.gateway.keys import KeyStore
from fengchao_chains.runtime import Runtime
from fengchao_chains.server import create_app
from fengchao_chains.server.uploads import body_limit
from fengchao_chains.settings import Settings
from fengchao_chains.testing.serve import serve_in_thread
from tests.ingest.test_sources import make_pdf
from tests.sdk import run_sdk

MAX_BYTES = 64 * 1024
MAX_FILES = 3
URL = "/aigc/uploadfiles/"
BOUNDARY = "e20a756fbfd933ba7097e8af1d2d2dcb"  # the SDK's (requests') form
ID = re.compile(r"file-[0-9a-f]{32}")

Part = tuple[str, bytes, bytes]  # field name, raw filename bytes, content


def multipart(*parts: Part, content_type: bytes = b"text/plain") -> tuple[bytes, dict[str, str]]:
    """A multipart body built byte by byte, as the SDK sends it (names are not escaped)."""
    body = b"".join(
        b"--" + BOUNDARY.encode() + b"\r\n"
        b'Content-Disposition: form-data; name="' + field.encode() + b'"; filename="'
        + filename + b'"\r\nContent-Type: ' + content_type + b"\r\n\r\n" + data + b"\r\n"
        for field, filename, data in parts
    )  # fmt: skip
    body += b"--" + BOUNDARY.encode() + b"--\r\n"
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def file_part(filename: str | bytes, data: bytes) -> Part:
    raw = filename.encode() if isinstance(filename, str) else filename
    return "files", raw, data


@pytest.fixture
def upload_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"upload_max_bytes": MAX_BYTES, "upload_max_files": MAX_FILES}
    )


@pytest.fixture
def client(upload_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings=upload_settings)) as test_client:
        yield test_client


def database_of(client: TestClient) -> Database:
    database: Database = client.app.state.runtime.database  # type: ignore[attr-defined]
    return database


def stored_rows(client: TestClient) -> list[tuple[str, str | None, str]]:
    with database_of(client).pool.connection() as conn:
        rows = conn.execute("SELECT id, owner, name FROM uploads ORDER BY created_at, id")
        return [(str(r[0]), r[1], str(r[2])) for r in rows.fetchall()]


def files_under(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file()} if directory.exists() else set()


def refused(response: Any, status: int = 445) -> str:
    """The refusal's message, after checking the shape the SDK parses."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert payload["status"] == status and payload["files"] == []
    message: str = payload["msg"]
    return message


# ---------------------------------------------------------------------- success -----------
def test_an_sdk_shaped_upload_answers_ids_in_order_and_stores_unowned_files(
    client: TestClient, upload_settings: Settings, tmp_path: Path
) -> None:
    make_pdf(tmp_path / "b.pdf", ["季度报告：营收增长。"])
    body, headers = multipart(
        file_part("a.txt", "今天的新闻".encode()),
        file_part("b.pdf", (tmp_path / "b.pdf").read_bytes()),
    )
    response = client.post(URL, content=body, headers=headers)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert set(payload) == {"status", "msg", "files"}
    assert (payload["status"], payload["msg"]) == (200, "执行成功")
    first, second = payload["files"]
    assert ID.fullmatch(first) and ID.fullmatch(second)
    assert sorted(stored_rows(client)) == sorted([(first, None, "a.txt"), (second, None, "b.pdf")])
    directory = upload_settings.data_dir / "uploads"
    assert files_under(directory) == {directory / f"{first}.txt", directory / f"{second}.pdf"}


def test_an_upload_with_a_token_is_owned_by_its_key(
    client: TestClient, upload_settings: Settings
) -> None:
    issued = KeyStore(database_of(client), upload_settings).create()
    token = issue_token(issued.api_key, issued.secret_key, 60)
    body, headers = multipart(file_part("a.txt", b"mine"))
    response = client.post(URL, content=body, headers=headers | {"Authorization": token})
    assert response.status_code == 200
    (file_id,) = response.json()["files"]
    assert stored_rows(client) == [(file_id, issued.api_key, "a.txt")]


def test_a_bad_token_is_refused_with_401_and_nothing_is_stored(
    client: TestClient, upload_settings: Settings
) -> None:
    issued = KeyStore(database_of(client), upload_settings).create()
    forged = issue_token(issued.api_key, "not-the-secret-" + "x" * 32, 60)
    body, headers = multipart(file_part("a.txt", b"text"))
    message = refused(
        client.post(URL, content=body, headers=headers | {"Authorization": forged}), 401
    )
    assert "signature" in message and "not-the-secret" not in message
    assert stored_rows(client) == []


# ---------------------------------------------------------------------- abuse -------------
@pytest.mark.parametrize(
    "filename",
    [
        b"../../etc/passwd.txt",
        b"/etc/cron.d/evil.txt",
        b"..\\..\\Windows\\win.ini.txt",
        "..%2F..%2F报告.txt".encode(),
        b"a\x01\x7fb.txt",
    ],
)
def test_traversal_names_are_stored_under_generated_names_only(
    client: TestClient, upload_settings: Settings, filename: bytes
) -> None:
    body, headers = multipart(file_part(filename, b"harmless"))
    response = client.post(URL, content=body, headers=headers)
    assert response.status_code == 200, response.text
    (file_id,) = response.json()["files"]
    ((_, _, name),) = stored_rows(client)
    assert name.endswith(".txt") and "/" not in name and "\\" not in name
    assert not any(ord(ch) < 32 or ch == "\x7f" for ch in name)
    # nothing outside the uploads directory: the data dir holds only the upload (and the
    # master key when one was made)
    stored = upload_settings.data_dir / "uploads" / f"{file_id}.txt"
    assert files_under(upload_settings.data_dir) - {upload_settings.data_dir / "master.key"} == {
        stored
    }


def test_a_nul_in_a_file_name_never_reaches_the_file_system(
    client: TestClient, upload_settings: Settings
) -> None:
    body, headers = multipart(file_part(b"evil.txt\x00.pdf", b"plain text"))
    response = client.post(URL, content=body, headers=headers)
    payload = response.json()  # refused or stored: JSON either way, never a 500
    assert response.status_code in (200, 445) and payload["status"] == response.status_code
    for file_id in payload["files"]:
        assert list((upload_settings.data_dir / "uploads").glob(f"{file_id}.*"))
    assert all("\x00" not in name for _, _, name in stored_rows(client))


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([file_part("big.txt", b"a" * (MAX_BYTES + 1))], "'big.txt': larger than the limit"),
        ([file_part("run.sh", b"#!/bin/sh")], "'run.sh': type .sh is not accepted"),
        ([file_part("x.pdf", b"<html>no</html>")], "'x.pdf': not a PDF file"),
        ([file_part("x.docx", b"PK\x03\x04 truncated")], "'x.docx': not a DOCX file"),
        ([file_part("empty.txt", b"")], "'empty.txt': the file is empty"),
        ([file_part(f"{i}.txt", b"x") for i in range(MAX_FILES + 1)], "Too many files"),
        ([("other", b"a.txt", b"text")], "no files"),
    ],
)
def test_refusals_are_445_json_and_leave_nothing(
    client: TestClient, upload_settings: Settings, parts: list[Part], message: str
) -> None:
    body, headers = multipart(file_part("ok.txt", b"fine"), *parts)
    if parts[0][0] != "files" or len(parts) > 1:
        body, headers = multipart(*parts)
    assert message in refused(client.post(URL, content=body, headers=headers))
    assert stored_rows(client) == []
    assert files_under(upload_settings.data_dir / "uploads") == set()


def test_a_text_field_named_files_is_refused(client: TestClient) -> None:
    response = client.post(URL, data={"files": "a.txt"})
    assert "must be file parts" in refused(response)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"files": ["a.txt"]}', "application/json"),
        (b"--nope\r\ngarbage", f"multipart/form-data; boundary={BOUNDARY}"),
        (b"whatever", "multipart/form-data"),
        (b"", "text/plain"),
    ],
)
def test_bodies_that_are_not_uploads_get_json_445(
    client: TestClient, body: bytes, content_type: str
) -> None:
    message = refused(client.post(URL, content=body, headers={"Content-Type": content_type}))
    assert message.startswith(("no files", "not a valid multipart upload"))


def test_a_declared_body_over_the_cap_is_refused_unread(
    client: TestClient, upload_settings: Settings
) -> None:
    limit = body_limit(upload_settings)
    body, headers = multipart(file_part("a.txt", b"x" * (limit + 1)))
    message = refused(client.post(URL, content=body, headers=headers))
    assert message.startswith(f"the request is larger than {limit} bytes")
    assert files_under(upload_settings.data_dir / "uploads") == set()


def test_a_chunked_body_is_cut_off_at_the_cap(
    client: TestClient, upload_settings: Settings
) -> None:
    limit = body_limit(upload_settings)
    body, headers = multipart(file_part("a.txt", b"x" * (2 * limit)))

    def chunks() -> Iterator[bytes]:  # no Content-Length: transfer-encoding chunked
        for start in range(0, len(body), 16 * 1024):
            yield body[start : start + 16 * 1024]

    message = refused(client.post(URL, content=chunks(), headers=headers))
    assert message.startswith(f"the request is larger than {limit} bytes")
    assert stored_rows(client) == []


def test_the_route_is_documented_as_multipart(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"][URL]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]


# ---------------------------------------------------------------------- the real SDK ------
def test_the_published_sdk_uploads_and_reads_refusals(
    upload_settings: Settings, tmp_path: Path
) -> None:
    notes, report = tmp_path / "notes.txt", tmp_path / "季度报告.pdf"
    notes.write_text("北京今天晴，明天有雨。", encoding="utf-8")
    make_pdf(report, ["季度报告：营收增长。"])
    oversize = tmp_path / "big.txt"
    oversize.write_bytes(b"a" * (MAX_BYTES + 1))
    too_big_for_the_body = tmp_path / "huge.txt"
    # far more than socket buffers hold: the SDK (requests) sends it all before it reads
    too_big_for_the_body.write_bytes(b"a" * (16 * 1024 * 1024))
    fake = tmp_path / "fake.docx"
    fake.write_bytes(b"not a zip")

    runtime = Runtime.start(upload_settings)
    app = create_app(runtime=runtime)
    app.state.runtime = runtime  # the thread server runs no lifespan
    try:
        with serve_in_thread(app) as base_url:
            result = run_sdk(
                "result = [client.upload_file(paths) for paths in "
                f"{[[str(notes), str(report)], [str(oversize)], [str(too_big_for_the_body)]]!r}"
                f" + [[{str(fake)!r}]]]",
                base_url,
            )
    finally:
        runtime.close()
    ok, big, huge, docx = result
    assert (ok["status"], ok["msg"]) == (200, "执行成功") and len(ok["files"]) == 2
    assert all(ID.fullmatch(file_id) for file_id in ok["files"])
    assert big["status"] == 445 and "'big.txt': larger than the limit" in big["msg"]
    assert huge["status"] == 445 and huge["msg"].startswith("the request is larger than")
    assert docx["status"] == 445 and "'fake.docx': not a DOCX file" in docx["msg"]
    assert big["files"] == huge["files"] == docx["files"] == []
