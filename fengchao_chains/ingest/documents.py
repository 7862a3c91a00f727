"""Document files (``.txt .md .markdown .html .htm .pdf .docx``): one file, one
:class:`~fengchao_chains.ingest.items.SourceItem`, or a problem naming the file.

The document id and ``source`` are the path relative to the directory given (POSIX form), so a
corpus ingests the same on every machine. The title is the HTML ``<title>`` (else the first
``<h1>``), the first Markdown heading, or the file name without suffix. ``published_at``
comes only from an HTML page's publication ``<meta>`` tag: a file's mtime is when it was
copied or checked out, not when it was published, and a wrong date is worse than none for
date filters (it would also change the content hash, re-ingesting every file after a fresh
checkout). Text files are UTF-8 (BOM fine, UTF-16 with a BOM too) or GB18030, the superset of
GBK and GB2312.

Parsing uses the maintained libraries directly: pypdf, docx2txt and Beautiful Soup. The
``langchain-community`` loaders that wrap them were frozen when that package was sunset and
archived in 2026 (langchain-ai/langchain-community#674) and warn on import.
"""

from __future__ import annotations

import codecs
import fnmatch
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fengchao_chains.errors import one_line
from fengchao_chains.ingest.items import (
    DEFAULT_MAX_DOCUMENT_CHARS,
    SourceEntry,
    SourceError,
    SourceItem,
    SourceProblem,
    clean_text,
    normalise_date,
    too_large,
)

_MAX_BYTES_PER_CHAR = 4  # UTF-8 and GB18030: a file over 4 x the limit is too large unread


@dataclass(frozen=True, slots=True)
class _Loaded:
    content: str
    title: str | None = None
    published_at: str | None = None


def read_single_document(path: Path, max_chars: int) -> Iterator[SourceEntry]:
    yield _read_document(path, path.parent, max_chars)


def read_directory(root: Path, glob: str | None, max_chars: int) -> Iterator[SourceEntry]:
    for entry in walk(root, glob):
        yield entry if isinstance(entry, SourceProblem) else _read_document(entry, root, max_chars)


def walk(root: Path, glob: str | None) -> Iterator[Path | SourceProblem]:
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
            elif path.suffix.lower() in DOCUMENT_LOADERS and _matches(path, root, glob):
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
        return too_large(location, len(content), max_chars)
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
        plain = suffix in _TEXT_SUFFIXES or suffix not in DOCUMENT_LOADERS
        if plain and size > _MAX_BYTES_PER_CHAR * max_chars:
            return SourceProblem(
                location, f"{size} bytes, over the limit of {max_chars} characters"
            )
        return DOCUMENT_LOADERS.get(suffix, _load_text)(path)
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


DOCUMENT_LOADERS: dict[str, Callable[[Path], _Loaded]] = {
    ".txt": _load_text,
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".html": _load_html,
    ".htm": _load_html,
    ".pdf": _load_pdf,
    ".docx": _load_docx,
}
_TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".html", ".htm"})


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
