"""What the readers of :mod:`fengchao_chains.ingest.sources` yield, and the normalisation
both kinds of reader (news records and document files) share: text cleanup and dates.

Dates: ``published_at`` is normalised to ISO 8601 (``2024-05-01``, ``2024-05-01T08:30:00``,
``2024-05-01T08:30:00+08:00``) from ISO forms, ``2024/5/1 8:30``, ``2024年5月1日 8:30``,
RFC 2822 (``Wed, 01 May 2024 08:30:00 +0800``) and Unix timestamps (seconds or
milliseconds, read as UTC). No time zone is invented for a naive time.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from fengchao_chains.errors import FengchaoError

DEFAULT_MAX_DOCUMENT_CHARS = 1_000_000
"""A million characters is longer than 红楼梦 (about 0.8 million) and some 3,000 chunks at the
default chunk size: far beyond any news item, and a bound on what one document may cost."""


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


_BLANK_RUNS = re.compile(r"\n[ \t\u3000]*\n(?:[ \t\u3000]*\n)+")


def clean_text(text: str) -> str:
    """Unix newlines, no NUL (PostgreSQL text cannot hold it; PDFs produce it), at most one
    blank line in a row, no surrounding whitespace. Nothing else changes."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return _BLANK_RUNS.sub("\n\n", text).strip()


def too_large(location: str, length: int, limit: int) -> SourceProblem:
    return SourceProblem(
        location, f"{length} characters, over the limit of {limit} (max_document_chars)"
    )


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
