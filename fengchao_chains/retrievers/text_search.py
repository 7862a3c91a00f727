"""Chinese-aware full-text search: jieba segmentation into PostgreSQL's ``simple`` config.

PostgreSQL's own parsers split text on spaces, so Chinese (written without them) would be
one "word" per clause.  Each chunk's text is segmented with jieba's search mode (which also
emits the shorter words inside long ones: 北京市 -> 北京, 京市, 北京市) and stored
space-joined; the ``simple`` configuration then only lower-cases.  Queries are segmented
the same way and their words OR-ed, so ranking (``ts_rank_cd``) rewards chunks that share
more of the query's words.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

import jieba

jieba.setLogLevel(logging.WARNING)
_init_lock = threading.Lock()
_initialised = False

# Only tokens made of word characters reach a tsquery, so no tsquery syntax can be injected.
_WORD = re.compile(r"^\w+$")
# Function words that match nearly every chunk: they cost time and add no signal.
_STOPWORD_TEXT = """
的 了 是 在 和 与 及 或 也 都 就 而 但 这 那 之 其 为 以 于 对 从 把 被 让 向 等 吗 呢 吧 啊 个 有
我 你 他 她 它 们 我们 什么 怎么 怎么样 怎样 哪里 如何 哪些 哪个 多少 为什么 请问 一下 是否
a an the of to in on at by for from with and or is are was were be been it its this that
these those what which who whom how when where why do does did
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _ensure_initialised() -> None:
    """Load jieba's dictionary once (about half a second), not on every first call per
    thread."""
    global _initialised  # noqa: PLW0603 (a process-wide one-time load)
    if not _initialised:
        with _init_lock:
            if not _initialised:
                jieba.initialize()
                _initialised = True


def words(text: str) -> list[str]:
    """The searchable words of ``text``, lower-cased, in order, stopwords dropped."""
    _ensure_initialised()
    out = []
    for token in jieba.cut_for_search(text):
        word = token.strip().lower()
        if word and _WORD.match(word) and word not in STOPWORDS:
            out.append(word)
    return out


def segment(*texts: str | None) -> str:
    """The text stored for full-text indexing: the words of ``texts`` joined by spaces."""
    return " ".join(w for text in texts if text for w in words(text))


def query_terms(query: str) -> list[str]:
    """The distinct words of a query, in order."""
    return list(dict.fromkeys(words(query)))


def tsquery(terms: Iterable[str]) -> str | None:
    """``a | b | c`` for ``to_tsquery('simple', ...)``, or None when nothing is searchable."""
    safe = [term for term in terms if _WORD.match(term)]
    return " | ".join(safe) if safe else None
