"""Uploaded files: checked, stored under generated names, their text extracted, owned.

``POST /aigc/uploadfiles/`` hands each file here.  A file is accepted only if its suffix is
allowed (``upload_suffixes``) *and* its content is what the suffix says: a PDF starts with
``%PDF-``, a DOCX is a ZIP holding ``word/document.xml``, anything else is text (UTF-8,
UTF-16 with a BOM, or GB18030) with no NUL bytes.  The size limit is enforced while the
bytes are copied, so an oversize stream is cut off, not read to its end.  The bytes go to
``<data_dir>/uploads/<id><suffix>``: the id (``file-`` and 32 random hex digits) is
unguessable and the client's file name never touches the file system, so no name can climb
out of the directory.  Text is extracted with the ingestion loaders (pypdf, docx2txt,
Beautiful Soup) in a worker thread and kept in the database, so chats do not parse the file
again.  A request's files are saved all or none: any refused file removes the others.

Ownership: an upload with a valid token is owned by that key at once.  The fengchao SDK
uploads without a token, so such a file starts unowned and the first authenticated chat that
names it claims it (``UPDATE ... WHERE owner IS NULL``: one caller wins); to everyone else
it is then "file not found", as an unknown id is.  Unclaimed files are removed by
:meth:`UploadStore.apurge_unclaimed`.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
import time
import unicodedata
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from fengchao_chains.db import Database
from fengchao_chains.errors import FengchaoError
from fengchao_chains.ingest.sources import DEFAULT_MAX_DOCUMENT_CHARS, SourceError, document_text
from fengchao_chains.settings import Settings

logger = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"
STORED_TEXT_MAX_CHARS = DEFAULT_MAX_DOCUMENT_CHARS
"""Text kept per file (a million characters, longer than 红楼梦); chats use far less
(``file_context_max_chars``), so the rest would only cost storage and reads."""
NAME_MAX_CHARS = 255
DOCX_MAX_XML_BYTES = 100 * 1024 * 1024
"""What a DOCX's parts may expand to (their declared sizes): refuses ZIP bombs before
docx2txt reads them into memory.  Ordinary documents expand to a few megabytes."""

_ID = re.compile(r"file-[0-9a-f]{32}")
_CHUNK_BYTES = 64 * 1024
_PDF_HEADER_WINDOW = 1024  # Acrobat accepts "%PDF-" anywhere in the first kilobyte
_DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_CONTENT_TYPES = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".json": "application/json",
    ".jsonl": "application/jsonl",
    ".ndjson": "application/x-ndjson",
    ".csv": "text/csv",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": _DOCX_TYPE,
}
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class UploadError(FengchaoError):
    """A refused upload or an unusable file id (code 445).  The message names the client's
    file (its sanitised name) or id and the problem, never a server path."""

    code = 445


@dataclass(frozen=True)
class StoredFile:
    """One stored upload.  ``name`` is the client's file name made safe for display only;
    ``content_type`` is what the content was checked to be, not what the client claimed."""

    id: str
    name: str
    content_type: str
    size: int
    owner: str | None
    created_at: datetime
    path: Path
    text: str = field(repr=False)


@dataclass(frozen=True)
class _Prepared:
    """A file written and parsed, its row not yet committed."""

    id: str
    name: str
    suffix: str
    content_type: str
    size: int
    path: Path
    text: str


class UploadStore:
    """Uploaded files on disk and their rows in ``uploads``."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.directory = settings.data_dir / UPLOADS_DIR
        self.max_bytes = settings.upload_max_bytes
        self.max_files = settings.upload_max_files
        self.suffixes = frozenset(_normalised_suffix(s) for s in settings.upload_suffixes)

    async def asave(
        self, owner: str | None, files: Sequence[tuple[str, str | None, BinaryIO]]
    ) -> list[StoredFile]:
        """Check and store ``files`` (file name, claimed content type, stream) for ``owner``
        (None: unowned until a chat claims it), all or none; :class:`UploadError` names the
        first file refused.  The claimed content type is not trusted (the SDK sends
        ``application/octet-stream`` for a DOCX): the content decides."""
        if not files:
            raise UploadError("no files: send one or more file parts named 'files'")
        if len(files) > self.max_files:
            raise UploadError(f"too many files: {len(files)}, at most {self.max_files} a request")
        prepared = await asyncio.to_thread(self._prepare_all, files)
        try:
            created_at = await self._ainsert(owner, prepared)
        except BaseException:
            _remove(p.path for p in prepared)
            raise
        logger.info(
            "stored %d upload(s) for %s: %s",
            len(prepared),
            owner or "no owner yet",
            ", ".join(f"{p.id} ({p.size} bytes)" for p in prepared),
        )
        return [
            StoredFile(p.id, p.name, p.content_type, p.size, owner, created_at, p.path, p.text)
            for p in prepared
        ]

    async def aresolve(self, owner: str, file_ids: Sequence[str]) -> list[StoredFile]:
        """The files ``file_ids`` names, in that order (repeats once), for ``owner``: its own
        files, and unowned ones, which it claims now.  One id that is unknown or another
        key's raises ``UploadError("file not found: <id>")`` and claims nothing."""
        wanted = list(dict.fromkeys(file_ids))
        for file_id in wanted:
            if not (isinstance(file_id, str) and _ID.fullmatch(file_id)):
                raise UploadError(f"file not found: {_shown_id(file_id)}")
        if not wanted:
            return []
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE uploads SET owner = %s, claimed_at = now()"
                " WHERE id = ANY(%s) AND owner IS NULL",
                (owner, wanted),
            )
            cursor = await conn.execute(
                "SELECT id, name, suffix, content_type, size, owner, text, created_at"
                " FROM uploads WHERE id = ANY(%s) AND owner = %s",
                (wanted, owner),
            )
            rows = {row[0]: row for row in await cursor.fetchall()}
            for file_id in wanted:
                if file_id not in rows:
                    raise UploadError(f"file not found: {file_id}")  # rolls the claims back
        return [self._stored(rows[file_id]) for file_id in wanted]

    async def apurge_unclaimed(self, older_than: timedelta) -> int:
        """Remove uploads no chat claimed within ``older_than`` (the SDK uploads without a
        token, so these are files anyone could have sent), and files on disk older than
        that with no row (a process that died between writing and committing); returns how
        many files went."""
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM uploads WHERE owner IS NULL AND created_at < now() - %s"
                " RETURNING id, suffix",
                (older_than,),
            )
            purged = {
                fid: self.directory / f"{fid}{suffix}" for fid, suffix in await cursor.fetchall()
            }
            candidates = await asyncio.to_thread(self._old_files, older_than)
            cursor = await conn.execute(
                "SELECT id FROM uploads WHERE id = ANY(%s)", (list(candidates),)
            )
            kept = {row[0] for row in await cursor.fetchall()}
        orphans = [
            path for fid, path in candidates.items() if fid not in kept and fid not in purged
        ]
        await asyncio.to_thread(_remove, [*purged.values(), *orphans])
        if purged or orphans:
            logger.info(
                "purged %d unclaimed upload(s), %d orphan file(s)", len(purged), len(orphans)
            )
        return len(purged) + len(orphans)

    # ------------------------------------------------------------------ writing ----------
    def _prepare_all(self, files: Sequence[tuple[str, str | None, BinaryIO]]) -> list[_Prepared]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        prepared: list[_Prepared] = []
        try:
            for filename, _claimed_type, stream in files:
                prepared.append(self._prepare(filename, stream))
        except BaseException:
            _remove(p.path for p in prepared)
            raise
        return prepared

    def _prepare(self, filename: str, stream: BinaryIO) -> _Prepared:
        name = display_name(filename)
        suffix = Path(name).suffix.lower()
        if suffix not in self.suffixes:
            accepted = " ".join(sorted(self.suffixes))
            kind = f"type {suffix}" if suffix else "a name without a suffix"
            raise UploadError(f"{name!r}: {kind} is not accepted (accepted: {accepted})")
        file_id = f"file-{uuid.uuid4().hex}"
        path = self.directory / f"{file_id}{suffix}"
        try:
            size = self._copy(stream, path, name, textual=suffix not in (".pdf", ".docx"))
            _check_content(path, suffix, name)
            try:
                text = document_text(path, max_chars=self.max_bytes)
            except SourceError as exc:
                raise UploadError(f"{name!r}: {exc}") from None
        except BaseException:
            _remove([path])
            raise
        content_type = _CONTENT_TYPES.get(suffix, "text/plain")
        return _Prepared(
            file_id, name, suffix, content_type, size, path, text[:STORED_TEXT_MAX_CHARS]
        )

    def _copy(self, stream: BinaryIO, path: Path, name: str, *, textual: bool) -> int:
        """Copy ``stream`` to a new file at ``path``, stopping as soon as it passes the size
        limit; text must have no NUL bytes (UTF-16 aside)."""
        size, first = 0, True
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(descriptor, "wb") as out:
            while chunk := stream.read(_CHUNK_BYTES):
                if first and chunk.startswith(_UTF16_BOMS):
                    textual = False  # UTF-16 is full of NULs; decoding checks it instead
                first = False
                size += len(chunk)
                if size > self.max_bytes:
                    raise UploadError(f"{name!r}: larger than the limit of {self.max_bytes} bytes")
                if textual and b"\x00" in chunk:
                    raise UploadError(f"{name!r}: binary content in a text file")
                out.write(chunk)
        if size == 0:
            raise UploadError(f"{name!r}: the file is empty")
        return size

    async def _ainsert(self, owner: str | None, prepared: Sequence[_Prepared]) -> datetime:
        """Insert the rows in one transaction; returns its time, every row's ``created_at``."""
        pool = await self.database.open_async_pool()
        async with pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO uploads (id, name, suffix, content_type, size, owner, text,"
                " claimed_at) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                " CASE WHEN %s::text IS NULL THEN NULL ELSE now() END) RETURNING created_at",
                [
                    (p.id, p.name, p.suffix, p.content_type, p.size, owner, p.text, owner)
                    for p in prepared
                ],
                returning=True,
            )
            rows = await cursor.fetchall()
        created_at: datetime = rows[0][0]
        return created_at

    # ------------------------------------------------------------------ reading ----------
    def _stored(self, row: tuple[Any, ...]) -> StoredFile:
        file_id, name, suffix, content_type, size, owner, text, created_at = row
        path = self.directory / f"{file_id}{suffix}"
        return StoredFile(file_id, name, content_type, size, owner, created_at, path, text)

    def _old_files(self, older_than: timedelta) -> dict[str, Path]:
        """Upload files in the directory last written more than ``older_than`` ago, by id."""
        if not self.directory.is_dir():
            return {}
        cutoff = time.time() - older_than.total_seconds()
        found: dict[str, Path] = {}
        for path in self.directory.iterdir():
            file_id = path.name.partition(".")[0]
            with contextlib.suppress(OSError):
                if _ID.fullmatch(file_id) and path.stat().st_mtime < cutoff:
                    found[file_id] = path
        return found


def display_name(filename: str | None) -> str:
    """The client's file name as a label: its last path component (``/`` or ``\\``), no
    control or invisible formatting characters, at most 255 characters (suffix kept);
    ``upload`` when nothing usable is left.  Never used as a path."""
    last = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(ch for ch in last if unicodedata.category(ch) not in _HIDDEN).strip()
    if kept in ("", ".", ".."):
        return "upload"
    if len(kept) > NAME_MAX_CHARS:
        suffix = Path(kept).suffix[:16]
        kept = kept[: NAME_MAX_CHARS - len(suffix)] + suffix
    return kept


_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _check_content(path: Path, suffix: str, name: str) -> None:
    """A PDF or DOCX must be one by content, not only by name (text is checked by decoding)."""
    if suffix == ".pdf":
        with path.open("rb") as file:
            if b"%PDF-" not in file.read(_PDF_HEADER_WINDOW):
                raise UploadError(f"{name!r}: not a PDF file (no %PDF- header)")
    elif suffix == ".docx":
        try:
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError):
            raise UploadError(f"{name!r}: not a DOCX file (not a ZIP archive)") from None
        if "word/document.xml" not in {info.filename for info in infos}:
            raise UploadError(f"{name!r}: not a DOCX file (no word/document.xml)")
        if sum(info.file_size for info in infos) > DOCX_MAX_XML_BYTES:
            raise UploadError(f"{name!r}: the DOCX expands to more than {DOCX_MAX_XML_BYTES} bytes")


def _normalised_suffix(suffix: str) -> str:
    suffix = suffix.strip().lower()
    return suffix if suffix.startswith(".") else f".{suffix}"


def _shown_id(file_id: object) -> str:
    """A client's would-be file id for an error message: quoted, at most 64 characters."""
    text = file_id if isinstance(file_id, str) else repr(file_id)
    return repr(text if len(text) <= 64 else f"{text[:61]}...")


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
