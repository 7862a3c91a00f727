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

``published_at`` is normalised to ISO 8601 (:func:`~fengchao_chains.ingest.items.normalise_date`);
a value that cannot be parsed is kept under ``published_at_raw`` and ``published_at`` is
left out, so that key, when present, is always a date that sorts and filters correctly.
Document files are read by :mod:`fengchao_chains.ingest.documents`.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from fengchao_chains.errors import one_line
from fengchao_chains.ingest.documents import (
    DOCUMENT_LOADERS,
    document_text,
    read_directory,
    read_single_document,
    walk,
)
from fengchao_chains.ingest.items import (
    DEFAULT_MAX_DOCUMENT_CHARS,
    SourceEntry,
    SourceError,
    SourceItem,
    SourceProblem,
    clean_text,
    content_hash,
    normalise_date,
    too_large,
)

__all__ = [
    "CONTENT_FIELDS",
    "CSV_SUFFIXES",
    "DEFAULT_MAX_DOCUMENT_CHARS",
    "JSONL_SUFFIXES",
    "SourceEntry",
    "SourceError",
    "SourceItem",
    "SourceProblem",
    "content_hash",
    "document_text",
    "estimate_total",
    "news_item",
    "normalise_date",
    "read_source",
]

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
CSV_SUFFIXES = frozenset({".csv"})
CONTENT_FIELDS = ("content", "text", "body")
"""Where a news record's text may be; the first non-empty one is the content."""

_KNOWN_FIELDS = frozenset({"id", "title", "url", "published_at", "source", *CONTENT_FIELDS})
_SNIFF_BYTES = 64 * 1024


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
        return read_directory(path, glob, max_document_chars)
    if not path.exists():
        raise SourceError(f"no such file or directory: {path}")
    if glob is not None:
        raise SourceError(f"glob applies to a directory, and {path} is a file")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl_file(path, max_document_chars)
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, max_document_chars)
    if suffix in DOCUMENT_LOADERS:
        return read_single_document(path, max_document_chars)
    supported = sorted(JSONL_SUFFIXES | CSV_SUFFIXES | DOCUMENT_LOADERS.keys())
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
            return sum(1 for entry in walk(path, glob) if isinstance(entry, Path))
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            return _count_lines(path)
        if suffix in CSV_SUFFIXES:
            return max(_count_lines(path) - 1, 0)
        return 1 if path.is_file() else None
    except OSError:
        return None


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
        return too_large(location, len(content), max_document_chars)
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
