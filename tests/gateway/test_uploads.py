"""Uploads: checked by suffix and content, stored under generated names, text extracted with
the ingestion loaders, saved all or none, owned by the uploader or claimed by the first
chat; and the abuse cases (oversize streams, wrong types, traversal names, ZIP bombs)."""

from __future__ import annotations

import asyncio
import io
import os
import re
import zipfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

import pytest
import pytest_asyncio

from fengchao_chains.db import Database
from fengchao_chains.gateway import uploads
from fengchao_chains.gateway.uploads import (
    StoredFile,
    UploadError,
    UploadStore,
    display_name,
)
from fengchao_chains.settings import Settings
from tests.ingest.test_sources import make_docx, make_pdf

MAX_BYTES = 64 * 1024
ID = re.compile(r"file-[0-9a-f]{32}")
DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

Upload = tuple[str, str | None, BinaryIO]


def upload(name: str, data: bytes, content_type: str | None = None) -> Upload:
    return name, content_type, io.BytesIO(data)


@pytest.fixture
def upload_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"upload_max_bytes": MAX_BYTES, "upload_max_files": 4})


@pytest_asyncio.fixture(loop_scope="function")
async def store(database: Database, upload_settings: Settings) -> AsyncIterator[UploadStore]:
    yield UploadStore(database, upload_settings)
    await database.close_async_pool()


def rows(database: Database) -> list[tuple[str, str | None]]:
    with database.pool.connection() as conn:
        return [
            (str(r[0]), r[1]) for r in conn.execute("SELECT id, owner FROM uploads ORDER BY id")
        ]


def files_under(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file()} if directory.exists() else set()


@pytest.fixture
def pdf_bytes(tmp_path: Path) -> bytes:
    make_pdf(tmp_path / "report.pdf", ["第一页：北京发布新政策。", "第二页：上海天气晴朗！"])
    return (tmp_path / "report.pdf").read_bytes()


@pytest.fixture
def docx_bytes(tmp_path: Path) -> bytes:
    make_docx(tmp_path / "memo.docx", "备忘录", ["段落一。", "段落二！"])
    return (tmp_path / "memo.docx").read_bytes()


# ---------------------------------------------------------------------- storing -----------
async def test_text_pdf_and_docx_are_stored_under_generated_names_with_their_text(
    store: UploadStore, database: Database, pdf_bytes: bytes, docx_bytes: bytes
) -> None:
    saved = await store.asave(
        None,
        [
            upload("notes.txt", "北京今天晴。\r\n\r\n\r\n明天有雨。".encode(), "text/plain"),
            upload("report.pdf", pdf_bytes, "application/pdf"),
            upload("memo.docx", docx_bytes, "application/octet-stream"),  # as the SDK sends it
            upload("旧文件.txt", "国内新闻：发布会".encode("gb18030")),
        ],
    )
    notes, report, memo, legacy = saved
    assert [f.name for f in saved] == ["notes.txt", "report.pdf", "memo.docx", "旧文件.txt"]
    for stored, data in zip(saved, [None, pdf_bytes, docx_bytes, None], strict=True):
        assert ID.fullmatch(stored.id)
        assert stored.path == store.directory / f"{stored.id}{Path(stored.name).suffix}"
        assert stored.owner is None
        assert stored.size == stored.path.stat().st_size
        assert stored.path.stat().st_mode & 0o777 == 0o600
        if data is not None:
            assert stored.path.read_bytes() == data
    assert notes.text == "北京今天晴。\n\n明天有雨。"
    assert report.text == "第一页：北京发布新政策。\n\n第二页：上海天气晴朗！"
    assert "备忘录" in memo.text and "段落二！" in memo.text
    assert legacy.text == "国内新闻：发布会"
    assert (notes.content_type, report.content_type) == ("text/plain", "application/pdf")
    assert memo.content_type == DOCX_TYPE  # what the content is, not what the client said
    assert len({f.id for f in saved}) == 4
    assert rows(database) == sorted((f.id, None) for f in saved)
    assert files_under(store.directory) == {f.path for f in saved}


async def test_utf16_text_with_a_bom_is_text_though_full_of_nul_bytes(store: UploadStore) -> None:
    (stored,) = await store.asave(None, [upload("wide.txt", "宽字符文本".encode("utf-16"))])
    assert stored.text == "宽字符文本"


async def test_an_owner_at_upload_owns_the_file_at_once(
    store: UploadStore, database: Database
) -> None:
    (stored,) = await store.asave("key-a", [upload("a.md", b"# Title\n\nbody")])
    assert stored.owner == "key-a"
    assert rows(database) == [(stored.id, "key-a")]
    with database.pool.connection() as conn:
        claimed = conn.execute("SELECT claimed_at IS NOT NULL FROM uploads").fetchone()
    assert claimed == (True,)


async def test_the_stored_text_is_capped(
    store: UploadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads, "STORED_TEXT_MAX_CHARS", 10)
    (stored,) = await store.asave(None, [upload("long.txt", b"0123456789abcdef")])
    assert stored.text == "0123456789"
    assert stored.size == 16


def test_stored_file_repr_leaves_the_text_out(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    stored = StoredFile(
        "file-" + "0" * 32, "a.txt", "text/plain", 5, None, datetime.now(UTC), tmp_path, "机密内容"
    )
    assert "机密内容" not in repr(stored)


# ---------------------------------------------------------------------- abuse -------------
@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd.txt",
        "/etc/cron.d/evil.txt",
        "..\\..\\Windows\\win.ini.txt",
        "C:\\Users\\a\\notes.txt",
        "nul\x00byte.txt",
        "\u202eexe.txt",
        "line\nbreak.txt",
    ],
)
async def test_traversal_names_are_labels_only_and_files_land_under_generated_names(
    store: UploadStore, upload_settings: Settings, name: str
) -> None:
    (stored,) = await store.asave(None, [upload(name, b"harmless text")])
    assert stored.path.parent == store.directory
    assert stored.path.name == f"{stored.id}.txt"
    assert "/" not in stored.name and "\\" not in stored.name
    assert not any(ch in stored.name for ch in "\x00\n\u202e")
    assert stored.name.endswith(".txt") or stored.name == "upload"
    assert files_under(upload_settings.data_dir) == {stored.path}  # nothing anywhere else


@pytest.mark.parametrize(
    "case",
    [
        ("big.txt", b"a" * (MAX_BYTES + 1), "'big.txt': larger than the limit of 65536 bytes"),
        ("tool.exe", b"MZ\x90\x00", "'tool.exe': type .exe is not accepted (accepted: "),
        ("../../etc/passwd", b"root:x:0:0", "'passwd': a name without a suffix is not accepted"),
        ("fake.pdf", b"#!/bin/sh\nrm -rf /\n", "'fake.pdf': not a PDF file (no %PDF- header)"),
        ("broken.pdf", b"%PDF-1.4 not really", "'broken.pdf': cannot parse the PDF file: "),
        ("fake.docx", b"plain words", "'fake.docx': not a DOCX file (not a ZIP archive)"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "'image.txt': binary content"),
        ("latin.txt", b"\x80\x80\x80 caf\xe9", "'latin.txt': the text is neither UTF-8 nor"),
        ("empty.md", b"", "'empty.md': the file is empty"),
        ("blank.txt", b" \n\t\n", "'blank.txt': no text in the file"),
    ],
)
async def test_a_refused_file_refuses_the_whole_request_and_leaves_nothing(
    store: UploadStore,
    database: Database,
    upload_settings: Settings,
    case: tuple[str, bytes, str],
) -> None:
    name, data, message = case
    with pytest.raises(UploadError) as caught:
        await store.asave(
            "key-a", [upload("good.txt", b"fine"), upload(name, data), upload("z.txt", b"ok")]
        )
    assert str(caught.value).startswith(message)
    assert str(upload_settings.data_dir) not in str(caught.value)
    assert caught.value.code == 445
    assert rows(database) == []
    assert files_under(store.directory) == set()


async def test_a_zip_without_a_document_is_not_a_docx(store: UploadStore) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(UploadError, match=r"'sheet.docx': not a DOCX file \(no word/document"):
        await store.asave(None, [upload("sheet.docx", buffer.getvalue())])


async def test_a_docx_that_expands_too_far_is_refused_before_parsing(
    store: UploadStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads, "DOCX_MAX_XML_BYTES", 1024 * 1024)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"<w:t>" + b" " * (2 * 1024 * 1024) + b"</w:t>")
    assert len(buffer.getvalue()) < MAX_BYTES  # small on the wire, large when unpacked
    with pytest.raises(UploadError, match=r"'bomb\.docx': the DOCX expands to more than 1048576"):
        await store.asave(None, [upload("bomb.docx", buffer.getvalue())])
    assert files_under(store.directory) == set()


class EndlessStream(io.RawIOBase):
    """A client that never stops sending; counts what was read from it."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        buffer[:] = b"x" * len(buffer)
        self.served += len(buffer)
        return len(buffer)


async def test_an_oversize_stream_is_cut_off_while_copying(store: UploadStore) -> None:
    endless = EndlessStream()
    with pytest.raises(UploadError, match="larger than the limit"):
        await store.asave(None, [("endless.txt", None, io.BufferedReader(endless))])
    assert MAX_BYTES < endless.served <= MAX_BYTES + 2 * 64 * 1024
    assert files_under(store.directory) == set()


async def test_no_files_and_too_many_files_are_refused(store: UploadStore) -> None:
    with pytest.raises(UploadError, match="no files"):
        await store.asave(None, [])
    with pytest.raises(UploadError, match="too many files: 5, at most 4 a request"):
        await store.asave(None, [upload(f"{i}.txt", b"x") for i in range(5)])
    assert files_under(store.directory) == set()


async def test_a_failed_insert_removes_the_written_files(
    store: UploadStore, database: Database
) -> None:
    with database.pool.connection() as conn:
        conn.execute("ALTER TABLE uploads ADD CONSTRAINT no_secrets CHECK (text <> 'secret')")
    with pytest.raises(Exception, match="no_secrets"):
        await store.asave(None, [upload("a.txt", b"fine"), upload("b.txt", b"secret")])
    assert rows(database) == []
    assert files_under(store.directory) == set()


def test_display_names() -> None:
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\temp\\报告.pdf") == "报告.pdf"
    assert display_name("a\x00b\u200b\u202ec.txt") == "abc.txt"
    assert display_name("..") == display_name("") == display_name(None) == "upload"
    long = display_name("x" * 400 + ".docx")
    assert len(long) == 255 and long.endswith(".docx")


# ---------------------------------------------------------------------- ownership ---------
async def test_the_first_chat_claims_an_unowned_file_and_others_then_cannot_see_it(
    store: UploadStore, database: Database
) -> None:
    (first,) = await store.asave(None, [upload("a.txt", b"alpha")])
    (mine,) = await store.asave("key-b", [upload("b.txt", b"beta")])

    resolved = await store.aresolve("key-a", [first.id, first.id])
    assert [(f.id, f.owner, f.text, f.path) for f in resolved] == [
        (first.id, "key-a", "alpha", first.path)
    ]
    assert (await store.aresolve("key-a", [first.id]))[0].owner == "key-a"  # stays its own
    with pytest.raises(UploadError, match=f"^file not found: {first.id}$"):
        await store.aresolve("key-b", [first.id])
    with pytest.raises(UploadError, match=f"^file not found: {mine.id}$"):
        await store.aresolve("key-a", [mine.id])
    assert [f.name for f in await store.aresolve("key-b", [mine.id])] == ["b.txt"]
    assert sorted(rows(database)) == sorted([(first.id, "key-a"), (mine.id, "key-b")])


async def test_one_unknown_id_claims_nothing(store: UploadStore, database: Database) -> None:
    (free,) = await store.asave(None, [upload("a.txt", b"alpha")])
    unknown = "file-" + "f" * 32
    with pytest.raises(UploadError, match=f"file not found: {unknown}"):
        await store.aresolve("key-a", [free.id, unknown])
    assert rows(database) == [(free.id, None)]  # the claim was rolled back


@pytest.mark.parametrize("bad", ["/home/u/x.txt", "../" * 50 + "etc/passwd", "", "FILE-abc"])
async def test_ids_of_the_wrong_shape_are_not_found_and_quoted_briefly(
    store: UploadStore, bad: str
) -> None:
    with pytest.raises(UploadError, match=r"^file not found: '") as caught:
        await store.aresolve("key-a", [bad])
    assert len(str(caught.value)) < 100


async def test_two_keys_racing_for_one_file_get_one_winner(
    store: UploadStore, database: Database
) -> None:
    (free,) = await store.asave(None, [upload("a.txt", b"alpha")])
    outcomes = await asyncio.gather(
        *(store.aresolve(f"key-{i}", [free.id]) for i in range(6)), return_exceptions=True
    )
    winners = [o for o in outcomes if isinstance(o, list)]
    assert len(winners) == 1
    assert all(isinstance(o, UploadError) for o in outcomes if not isinstance(o, list))
    assert rows(database) == [(free.id, winners[0][0].owner)]


async def test_resolving_nothing_is_nothing(store: UploadStore) -> None:
    assert await store.aresolve("key-a", []) == []


# ---------------------------------------------------------------------- purging -----------
async def test_purge_removes_old_unclaimed_files_and_orphans_only(
    store: UploadStore, database: Database
) -> None:
    (unclaimed,) = await store.asave(None, [upload("a.txt", b"alpha")])
    (owned,) = await store.asave("key-a", [upload("b.txt", b"beta")])
    orphan = store.directory / f"file-{'a' * 32}.txt"  # a crash between write and commit
    orphan.write_bytes(b"left behind")
    stray = store.directory / "notes-of-the-operator.txt"
    stray.write_bytes(b"not an upload")
    assert await store.apurge_unclaimed(timedelta(hours=1)) == 0

    old = orphan.stat().st_mtime - 7200
    for path in (unclaimed.path, owned.path, orphan, stray):
        os.utime(path, (old, old))
    with database.pool.connection() as conn:
        conn.execute("UPDATE uploads SET created_at = created_at - interval '2 hours'")
    assert await store.apurge_unclaimed(timedelta(hours=1)) == 2
    assert rows(database) == [(owned.id, "key-a")]
    assert files_under(store.directory) == {owned.path, stray}
