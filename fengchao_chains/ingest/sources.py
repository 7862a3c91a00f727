"""Streaming readers that turn a news dump or a folder of documents into :class:`SourceItem`\\ s.

One input, one generator, one item at a time: a 10 GB JSONL is read line by line and a
directory file by file, so memory stays flat whatever the input size. Anything that cannot be
used (a malformed line, a corrupt PDF, a document over the size limit) becomes a
:class:`SourceProblem` naming the file and line, and reading goes on; the caller decides
whether a problem skips the document or stops the job.

Inputs (:func:`read_source`):

- ``.jsonl`` / ``.ndjson``: one JSON object per line, UTF-8; ``-`` reads JSONL from stdin.
- ``.csv``: a header row, then one item per row; UTF-8 (a BOM is fine) or GB18030/GBK, the
  encoding Excel uses for CSV on Chinese Windows.
- a directory, walked recursively in sorted order (hidden files and folders skipped) for
  ``.txt .md .markdown .html .htm .pdf .docx``; other files are ignored. A single document
  file can be passed directly too.

A news record (JSONL line or CSV row) has ``content`` (or ``text`` / ``body``: the first
non-empty one wins, the others are dropped), and optionally ``id``, ``title``, ``url``,
``published_at`` and ``source``; every other field is kept as metadata. The document id is
``id``, else ``url``, else a hash of title and content, so re-reading the same dump gives the
same ids.

Dates: ``published_at`` is normalised to ISO 8601 (``2024-05-01``, ``2024-05-01T08:30:00``,
``2024-05-01T08:30:00+08:00``) from ISO forms, ``2024/5/1 8:30``, ``2024年5月1日 8:30``,
RFC 2822 (``Wed, 01 May 2024 08:30:00 +0800``) and Unix timestamps (seconds or
milliseconds, read as UTC). No time zone is invented for a naive time. A value that cannot be
parsed is kept under ``published_at_raw`` and ``published_at`` is left out, so that key, when
present, is always a date that sorts and filters correctly.

Files: the document id and ``source`` are the path relative to the directory given (POSIX
form), so a corpus ingests the same on every machine. The title is the HTML ``<title>``
(else the first ``<h1>``), the first Markdown heading, or the file name without suffix.
``published_at`` comes only from an HTML page's publication ``<meta>`` tag: a file's mtime is
when it was copied or checked out, not when it was published, and a wrong date is worse than
none for date filters (it would also change the content hash, re-ingesting every file after
a fresh checkout). Text files are UTF-8 (BOM fine, UTF-16 with a BOM too) or GB18030, the
superset of GBK and GB2312.

Parsing uses the maintained libraries directly: pypdf, docx2txt and Beautiful Soup. The
``langchain-community`` loaders that wrap them were frozen when that package was sunset and
archived in 2026 (langchain-ai/langchain-community#674) and warn on import.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any

from fengchao_chains.errors import FengchaoError, one_line

DEFAULT_MAX_DOCUMENT_CHARS = 1_000_000
"""A million characters is longer than 红楼梦 (about 0.8 million) and some 3,000 chunks at the
default chunk size: far beyond any news item, and a bound on what one document may cost."""

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
CSV_SUFFIXES = frozenset({".csv"})
CONTENT_FIELDS = ("content", "text", "body")
"""Where a news record's text may be; the first non-empty one is the content."""

_KNOWN_FIELDS = frozenset({"id", "title", "url", "published_at", "source", *CONTENT_FIELDS})
_MAX_BYTES_PER_CHAR = 4  # UTF-8 and GB18030: a file over 4 x the limit is too large unread
_SNIFF_BYTES = 64 * 1024


class SourceError(FengchaoError):
    """A source cannot be read at all: the path is missing or of an unsupported type."""


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One document to ingest. ``metadata`` holds title, url, published_at (ISO 8601) and
    source when known, plus any extra fields of the record; treat it as read-only."""

    document_id: str
    content: str
    metadata: dict[str, Any]
    location: str
    """Where the item came from, for reports: ``news.jsonl:17`` or ``docs/a.pdf``."""


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """A line or file that yields no item, and why (one line, never the content)."""

    location: str
    reason: str


SourceEntry = SourceItem | SourceProblem


def read_source(
    path_or_dash: str | Path,
    *,
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS,
    glob: str | None = None,
) -> Iterator[SourceEntry]:
    """Items and problems of a JSONL or CSV file, ``-`` (JSONL on stdin), a directory of
    documents or one document file, in input order.

    ``glob`` (directories only) keeps the files whose path relative to the directory matches
    it, with :mod:`fnmatch` rules where ``*`` also crosses ``/``: ``"*.pdf"``, ``"2024/*"``.
    The path is checked now, so a missing input raises :class:`SourceError` at the call, not
    at the first item.
    """
    if str(path_or_dash) == "-":
        if glob is not None:
            raise SourceError("glob applies to a directory, not to stdin")
        return _read_jsonl_lines(_stdin_lines(), "<stdin>", max_document_chars)
    path = Path(path_or_dash)
    if path.is_dir():
        return _read_directory(path, glob, max_document_chars)
    if not path.exists():
        raise SourceError(f"no such file or directory: {path}")
    if glob is not None:
        raise SourceError(f"glob applies to a directory, and {path} is a file")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl_file(path, max_document_chars)
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, max_document_chars)
    if suffix in _DOCUMENT_LOADERS:
        return _read_single_document(path, max_document_chars)
    supported = sorted(JSONL_SUFFIXES | CSV_SUFFIXES | _DOCUMENT_LOADERS.keys())
    raise SourceError(
        f"unsupported source {path}: expected a directory, '-' or a file ending in "
        f"{', '.join(supported)}"
    )


def estimate_total(path_or_dash: str | Path, *, glob: str | None = None) -> int | None:
    """About how many entries :func:`read_source` will yield, for a progress bar: lines of a
    JSONL, lines after the header of a CSV (a quoted multi-line field counts more than once),
    matching files of a directory; None for stdin or anything unreadable."""
    if str(path_or_dash) == "-":
        return None
    path = Path(path_or_dash)
    try:
        if path.is_dir():
            return sum(1 for entry in _walk(path, glob) if isinstance(entry, Path))
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            return _count_lines(path)
        if suffix in CSV_SUFFIXES:
            return max(_count_lines(path) - 1, 0)
        return 1 if path.is_file() else None
    except OSError:
        return None


def content_hash(item: SourceItem) -> str:
    """sha256 of the content and the metadata (keys sorted): a changed title or date
    re-ingests a document, an unchanged one is skipped."""
    payload = json.dumps(
        {"content": item.content, "metadata": item.metadata},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --- news records: JSONL and CSV ------------------------------------------------------------


def _stdin_lines() -> Iterator[bytes | str]:
    stream: IO[Any] = getattr(sys.stdin, "buffer", sys.stdin)
    yield from stream


def _read_jsonl_file(path: Path, max_chars: int) -> Iterator[SourceEntry]:
    try:
        with path.open("rb") as lines:
            yield from _read_jsonl_lines(lines, str(path), max_chars)
    except OSError as exc:
        yield SourceProblem(str(path), f"cannot read the file: {exc.strerror or one_line(exc)}")


def _read_jsonl_lines(
    lines: Iterable[bytes | str], name: str, max_chars: int
) -> Iterator[SourceEntry]:
    for number, raw in enumerate(lines, start=1):
        location = f"{name}:{number}"
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            yield SourceProblem(location, "the line is not valid UTF-8")
            continue
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line or line.isspace():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield SourceProblem(location, f"not valid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(record, dict):
            yield SourceProblem(location, f"not a JSON object (got {_json_type(record)})")
            continue
        yield news_item(record, location, max_document_chars=max_chars)


def _read_csv(path: Path, max_chars: int) -> Iterator[SourceEntry]:
    name = str(path)
    # Long articles are longer than csv's default field limit (128 KiB); the limit is
    # process-wide, so it is only ever raised.
    csv.field_size_limit(max(csv.field_size_limit(), max_chars + 1))
    try:
        encoding = _sniff_encoding(path)
        with path.open(encoding=encoding, newline="") as file:
            reader = csv.DictReader(file)
            try:
                header = reader.fieldnames
            except csv.Error as exc:
                yield SourceProblem(f"{name}:1", f"not a valid CSV header: {exc}")
                return
            if header is None:
                return
            if not set(CONTENT_FIELDS) & set(header):
                yield SourceProblem(f"{name}:1", "no 'content', 'text' or 'body' column")
                return
            yield from _csv_rows(reader, name, len(header), max_chars)
    except UnicodeDecodeError:
        yield SourceProblem(name, f"not valid {encoding} text; the rest of the file is skipped")
    except OSError as exc:
        yield SourceProblem(name, f"cannot read the file: {exc.strerror or one_line(exc)}")


def _csv_rows(
    reader: csv.DictReader[str], name: str, width: int, max_chars: int
) -> Iterator[SourceEntry]:
    while True:
        location = f"{name}:{reader.line_num + 1}"  # a quoted field may span lines
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield SourceProblem(location, f"not a valid CSV row: {exc}")
            continue
        extra = row.pop(None, None)
        if extra:
            yield SourceProblem(location, f"{width + len(extra)} fields, the header has {width}")
            continue
        record = {key: value for key, value in row.items() if value not in (None, "")}
        yield news_item(record, location, max_document_chars=max_chars)


def news_item(
    record: dict[str, Any],
    location: str,
    *,
    max_document_chars: int = DEFAULT_MAX_DOCUMENT_CHARS,
) -> SourceEntry:
    """The item of one news record (a parsed JSONL line or CSV row), or why there is none."""
    try:
        document_id = _text_field(record, "id")
        title = _text_field(record, "title")
        url = _text_field(record, "url")
        source = _text_field(record, "source")
    except _NotTextError as exc:
        return SourceProblem(location, str(exc))
    raw_content = None
    for key in CONTENT_FIELDS:
        value = record.get(key)
        if isinstance(value, str) and value and not value.isspace():
            raw_content = value
            break
    if raw_content is None:
        return SourceProblem(location, "no content: expected a 'content', 'text' or 'body' text")
    content = clean_text(raw_content)
    if len(content) > max_document_chars:
        return _too_large(location, len(content), max_document_chars)
    metadata: dict[str, Any] = {}
    if title is not None:
        metadata["title"] = title
    if url is not None:
        metadata["url"] = url
    published_at = record.get("published_at")
    if published_at is not None and published_at != "":
        normalised = normalise_date(published_at)
        metadata["published_at" if normalised else "published_at_raw"] = normalised or published_at
    if source is not None:
        metadata["source"] = source
    for key, value in record.items():
        if key not in _KNOWN_FIELDS:
            metadata[key] = value
    return SourceItem(document_id or url or _hash_id(title, content), content, metadata, location)


class _NotTextError(Exception):
    pass


def _text_field(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if type(value) is str:
        return value.strip() or None
    if type(value) in (int, float):
        return str(value)
    raise _NotTextError(f"'{key}' is {_json_type(value)}, not text")


def _hash_id(title: str | None, content: str) -> str:
    payload = json.dumps([title or "", content], ensure_ascii=False)
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", bool: "a boolean", str: "a string"}
    return "null" if value is None else names.get(type(value), "a number")


# --- dates -------------------------------------------------------------------------------------

_NUMERIC_DATE = re.compile(
    r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?"
    r"(?:(?:\s+|T|\s*)(\d{1,2})\s*[:：时点]\s*(\d{1,2})\s*分?"
    r"(?:(?:\s*[:：]\s*|(?<=分)\s*)(\d{1,2})\s*秒?)?)?"
)


def normalise_date(value: object) -> str | None:
    """An ISO 8601 date or date-time for a common way of writing one, None if unrecognised.

    A date stays a date and a naive time stays naive; a Unix timestamp (seconds, or
    milliseconds when larger than 10^11) is UTC.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    if isinstance(value, int | float):
        return _from_timestamp(value)
    text = value.strip()
    if text.isdigit() and len(text) in (10, 13):
        return _from_timestamp(int(text))
    for parse in (_parse_iso, _parse_numeric, _parse_rfc2822):
        try:
            return parse(text).isoformat()
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
    return None


def _parse_iso(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def _parse_numeric(text: str) -> date:
    match = _NUMERIC_DATE.fullmatch(text)
    if match is None:
        raise ValueError(text)
    year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups())
    if match.group(4) is None:
        return date(year, month, day)
    return datetime(year, month, day, hour, minute, second)


def _parse_rfc2822(text: str) -> date:
    return parsedate_to_datetime(text)


def _from_timestamp(value: float) -> str | None:
    seconds = value / 1000 if abs(value) > 1e11 else value
    try:
        return datetime.fromtimestamp(seconds, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


# --- document files -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loaded:
    content: str
    title: str | None = None
    published_at: str | None = None


def _read_single_document(path: Path, max_chars: int) -> Iterator[SourceEntry]:
    yield _read_document(path, path.parent, max_chars)


def _read_directory(root: Path, glob: str | None, max_chars: int) -> Iterator[SourceEntry]:
    for entry in _walk(root, glob):
        yield entry if isinstance(entry, SourceProblem) else _read_document(entry, root, max_chars)


def _walk(root: Path, glob: str | None) -> Iterator[Path | SourceProblem]:
    """Document files under ``root`` in sorted order, depth first; hidden names skipped and
    symlinked directories not followed, so a walk always ends."""

    def visit(directory: Path) -> Iterator[Path | SourceProblem]:
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:
            yield SourceProblem(str(directory), f"cannot list the directory: {exc.strerror}")
            return
        for entry in entries:
            path = directory / entry.name
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from visit(path)
            elif path.suffix.lower() in _DOCUMENT_LOADERS and _matches(path, root, glob):
                yield path

    return visit(root)


def _matches(path: Path, root: Path, glob: str | None) -> bool:
    return glob is None or fnmatch.fnmatchcase(path.relative_to(root).as_posix(), glob)


def _read_document(path: Path, root: Path, max_chars: int) -> SourceEntry:
    location = str(path)
    loaded = _load_document(path, location, max_chars)
    if isinstance(loaded, SourceProblem):
        return loaded
    content = clean_text(loaded.content)
    if not content:
        return SourceProblem(location, "no text in the file")
    if len(content) > max_chars:
        return _too_large(location, len(content), max_chars)
    relative = path.relative_to(root).as_posix()
    metadata: dict[str, Any] = {"title": loaded.title or path.stem}
    if loaded.published_at:
        metadata["published_at"] = loaded.published_at
    metadata["source"] = relative
    return SourceItem(relative, content, metadata, location)


def document_text(path: Path, max_chars: int = DEFAULT_MAX_DOCUMENT_CHARS) -> str:
    """The cleaned text of one document file, parsed as :func:`read_source` parses it; a
    suffix with no loader of its own (``.json``, ``.csv``...) is read as plain text.

    Raises :class:`SourceError` when the file is unreadable, has no text or has more than
    ``max_chars`` characters; the message is the reason alone, never the path, so it can be
    shown to whoever sent the file.
    """
    loaded = _load_document(path, "", max_chars)
    if isinstance(loaded, SourceProblem):
        raise SourceError(loaded.reason)
    content = clean_text(loaded.content)
    if not content:
        raise SourceError("no text in the file")
    if len(content) > max_chars:
        raise SourceError(f"{len(content)} characters of text, over the limit of {max_chars}")
    return content


def _load_document(path: Path, location: str, max_chars: int) -> _Loaded | SourceProblem:
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        plain = suffix in _TEXT_SUFFIXES or suffix not in _DOCUMENT_LOADERS
        if plain and size > _MAX_BYTES_PER_CHAR * max_chars:
            return SourceProblem(
                location, f"{size} bytes, over the limit of {max_chars} characters"
            )
        return _DOCUMENT_LOADERS.get(suffix, _load_text)(path)
    except OSError as exc:
        return SourceProblem(location, f"cannot read the file: {exc.strerror or one_line(exc)}")
    except _UnreadableError as exc:
        return SourceProblem(location, str(exc))
    except Exception as exc:  # parsers raise anything on a corrupt file
        kind = suffix.lstrip(".").upper()
        return SourceProblem(location, f"cannot parse the {kind} file: {_describe(exc)}")


class _UnreadableError(Exception):
    """A file that parsed but cannot be used; the message is the problem's reason."""


def _describe(exc: Exception) -> str:
    message = one_line(exc)
    return message if message != type(exc).__name__ and message else type(exc).__name__


def _load_text(path: Path) -> _Loaded:
    return _Loaded(_decode(path.read_bytes()))


_MARKDOWN_HEADING = re.compile(r"#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*")


def _load_markdown(path: Path) -> _Loaded:
    text = _decode(path.read_bytes())
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        elif not in_fence and (match := _MARKDOWN_HEADING.fullmatch(line.strip())):
            return _Loaded(text, title=match.group(1).strip())
    return _Loaded(text)


_BLOCK_TAGS = (
    "p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
    "header", "footer", "blockquote", "pre", "table", "ul", "ol", "dd", "dt", "figcaption",
)  # fmt: skip
_DATE_META = ("article:published_time", "pubdate", "publishdate", "date", "dc.date")


def _load_html(path: Path) -> _Loaded:
    from bs4 import BeautifulSoup, Tag
    from bs4.dammit import EncodingDetector

    data = path.read_bytes()
    declared = EncodingDetector.find_declared_encoding(data, is_html=True)
    soup = BeautifulSoup(_decode(data, declared), "html.parser")
    title_tag = soup.title or soup.find("h1")
    title = title_tag.get_text(" ", strip=True) if title_tag else None
    published_at = None
    for meta in soup.find_all("meta"):
        key = str(meta.get("property") or meta.get("name") or meta.get("itemprop") or "")
        if key.lower() in _DATE_META and (value := meta.get("content")):
            published_at = normalise_date(str(value))
            if published_at:
                break
    body = soup.body or soup
    for tag in body.find_all(["script", "style", "noscript", "template"]):
        tag.decompose()
    for tag in body.find_all(_BLOCK_TAGS):
        if isinstance(tag, Tag):
            tag.insert_after("\n")
    lines = (" ".join(line.split()) for line in body.get_text().splitlines())
    return _Loaded("\n".join(line for line in lines if line), title or None, published_at)


def _load_pdf(path: Path) -> _Loaded:
    from pypdf import PdfReader

    reader = PdfReader(path)
    if reader.is_encrypted and not reader.decrypt(""):
        raise _UnreadableError("the PDF is encrypted with a password")
    pages = (page.extract_text() or "" for page in reader.pages)
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise _UnreadableError("no extractable text in the PDF (a scanned PDF needs OCR first)")
    return _Loaded(text)


def _load_docx(path: Path) -> _Loaded:
    import docx2txt  # type: ignore[import-untyped]

    text: str = docx2txt.process(str(path))
    return _Loaded(text)


_DOCUMENT_LOADERS: dict[str, Callable[[Path], _Loaded]] = {
    ".txt": _load_text,
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".html": _load_html,
    ".htm": _load_html,
    ".pdf": _load_pdf,
    ".docx": _load_docx,
}
_TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".html", ".htm"})


# --- text helpers ---------------------------------------------------------------------------

_BLANK_RUNS = re.compile(r"\n[ \t\u3000]*\n(?:[ \t\u3000]*\n)+")


def clean_text(text: str) -> str:
    """Unix newlines, no NUL (PostgreSQL text cannot hold it; PDFs produce it), at most one
    blank line in a row, no surrounding whitespace. Nothing else changes."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return _BLANK_RUNS.sub("\n\n", text).strip()


def _decode(data: bytes, declared: str | None = None) -> str:
    """Text of a file: a BOM decides; else the declared encoding, UTF-8, then GB18030 (GBK
    and GB2312 files decode as GB18030, their superset)."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(encoding)
    candidates = [_superset(declared)] if declared else []
    for encoding in [*candidates, "utf-8", "gb18030"]:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    raise _UnreadableError("the text is neither UTF-8 nor GB18030 (GBK)")


def _superset(encoding: str) -> str:
    return "gb18030" if encoding.lower().replace("-", "") in ("gb2312", "gbk") else encoding


def _sniff_encoding(path: Path) -> str:
    """utf-8-sig if the first 64 KiB are UTF-8, else gb18030 if they are GB18030."""
    with path.open("rb") as file:
        head = file.read(_SNIFF_BYTES)
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            codecs.getincrementaldecoder(encoding)().decode(head, final=False)
            return encoding
        except UnicodeDecodeError:
            continue
    return "utf-8-sig"


def _count_lines(path: Path) -> int:
    count, last = 0, b"\n"
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _too_large(location: str, length: int, limit: int) -> SourceProblem:
    return SourceProblem(
        location, f"{length} characters, over the limit of {limit} (max_document_chars)"
    )
