"""Sensitive words: one Aho-Corasick scan of the input and the output, whole or streamed.

The list is the packaged ``sensitive_words.txt`` plus the operator's files
(``FENGCHAO_SENSITIVE_WORD_FILES``).  Text and words are matched in a normalised form, so
trivial evasions still match:

- every character is NFKC-normalised and casefolded *on its own* (full-width ``ＡＢ`` and
  ``ab`` match ``AB``); a character whose normal form is not exactly one character is kept,
  so every matched character maps back to one original character and hits carry indices into
  the original text;
- format characters (Unicode category Cf: zero-width space and joiners, soft hyphen, BOM) are
  ignored wherever they are;
- a run of whitespace between two Chinese or Japanese characters is ignored (``赌 博`` and
  ``赌\\n博`` match 赌博), because those scripts put no spaces between words; anywhere else a
  run of whitespace counts as one space, so ``his exam`` does not match ``sex``.

A hit is an occurrence of any word.  :meth:`SensitiveWords.find` reports them leftmost-
longest and non-overlapping; :meth:`SensitiveWords.mask` masks *every* occurrence, overlapping
ones too, which is also what makes a streamed result independent of how the stream was cut
into chunks (:class:`StreamGuard`).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import ahocorasick  # type: ignore[import-not-found]  # a C extension without type hints

from fengchao_chains.errors import ConfigurationError, FengchaoError

if TYPE_CHECKING:
    from fengchao_chains.settings import Settings

_SPACE = " "  # every whitespace character normalises to this
_IGNORED = "\u200b"  # every format character (category Cf) normalises to this
_SKIPPABLE_RUN = re.compile(f"[{_SPACE}{_IGNORED}]+")
# Han (with extension planes and compatibility ideographs), hiragana and katakana: scripts
# written without spaces between words
_SPACELESS = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]"
)


class SensitiveContentError(FengchaoError):
    """The text contains words of the sensitive-word list (fengchao status 6601).

    The message does not quote the words, so it can go to the client as it is; ``words``
    (the list's spelling, each once) is there for the operator's log.
    """

    code: ClassVar[int] = 6601

    def __init__(self, words: Iterable[str]) -> None:
        self.words = tuple(dict.fromkeys(words))
        count = len(self.words)
        super().__init__(
            f"the content contains {count} sensitive word{'s' if count != 1 else ''}"
            " and was refused"
        )


@dataclass(frozen=True)
class Hit:
    """One occurrence of a list word: ``text[start:end]`` in the original text, and the word
    as the list spells it."""

    start: int
    end: int
    word: str


def _normal_char(char: str) -> str:
    """The one character ``char`` matches as (see the module docstring)."""
    if unicodedata.category(char) == "Cf":
        return _IGNORED
    normal = unicodedata.normalize("NFKC", char)
    if len(normal) != 1:
        normal = char
    folded = normal.casefold()
    if len(folded) == 1:
        normal = folded
    return _SPACE if normal.isspace() else normal


class _CharTable(dict[int, str]):
    """``str.translate`` table filled on first sight of each character: translating is one
    C-level pass, and every mapping is one character, so indices are preserved.  Only the
    Basic Multilingual Plane is kept (at most 65,536 entries), so text full of rare
    characters cannot grow it without bound."""

    def __missing__(self, code: int) -> str:
        normal = _normal_char(chr(code))
        if code < 0x10000:
            self[code] = normal
        return normal


_TABLE = _CharTable()


def _spaceless(char: str) -> bool:
    return bool(char) and _SPACELESS.match(char) is not None


class _View(NamedTuple):
    """A text as the automaton scans it (a tuple: a stream makes one per delta).

    ``compact`` is the normalised text with ignored characters and ignored whitespace runs
    taken out and every other whitespace run reduced to one space.  It is made of segments:
    segment ``j`` starts at ``compact`` index ``cstarts[j]`` and original index
    ``ostarts[j]``, and is either a run of characters copied one for one or a single space
    standing for a whitespace run.
    """

    normal: str  # the original text translated character by character (same length)
    compact: str
    cstarts: list[int]
    ostarts: list[int]
    tail: int | None  # where a whitespace run at the end, not yet resolved, begins

    def origin(self, index: int) -> int:
        """The original index of ``compact[index]`` (of the first space of a run)."""
        j = bisect_right(self.cstarts, index) - 1
        return self.ostarts[j] + (index - self.cstarts[j])


def _normalise(text: str) -> str:
    """``text`` character by character in its normal form (same length)."""
    return text.translate(_TABLE)


def _view(
    normal: str, *, before: str = "", final: bool = True, run_from: int | None = None
) -> _View:
    """The view of a normalised text; ``before`` is the last significant normalised character
    before it (in a stream), and ``final=False`` leaves a whitespace run at the end
    unresolved, since the next chunk decides whether it is ignored. ``run_from``: where the
    run of spaces and ignored characters at the end starts, if the caller knows."""
    if (copied := _copied_view(normal, final=final)) is not None:
        return _one_segment(normal, copied)
    return _segmented_view(normal, before=before, final=final, run_from=run_from)


def _copied_view(normal: str, *, final: bool) -> int | None:
    """When the view of ``normal`` is the text as it is, how much of it (all of it, or all
    but a space left open at a stream's end); None when it must be built segment by
    segment."""
    if _SPACE not in normal and _IGNORED not in normal:  # no spaces: most Chinese
        return len(normal)
    if _plain_ascii(normal):  # every space stays, but one left open at a stream's end
        return len(normal) - 1 if not final and normal.endswith(_SPACE) else len(normal)
    return None


def _plain_ascii(normal: str) -> bool:
    """ASCII with single spaces only: no run to shorten, no spaceless neighbours, nothing
    ignored, so the view is the text itself (less a space still open at its end)."""
    return normal.isascii() and "  " not in normal


def _one_segment(normal: str, size: int) -> _View:
    """The view of the first ``size`` characters of a text copied as they are (the rest, if
    any, is a space whose fate the next chunk decides)."""
    compact = normal if size == len(normal) else normal[:size]
    starts = [0] if compact else []
    return _View(normal, compact, starts, list(starts), None if size == len(normal) else size)


def _segmented_view(normal: str, *, before: str, final: bool, run_from: int | None = None) -> _View:
    """:func:`_view` segment by segment."""
    pieces: list[str] = []
    cstarts: list[int] = []
    ostarts: list[int] = []
    size = 0
    position = 0
    tail: int | None = None
    # The run at the end is not scanned again: a stream held back behind a long one (a model
    # printing newlines) would rescan all of it on every delta (StreamGuard knows its start).
    cut = len(normal.rstrip(_SPACE + _IGNORED)) if run_from is None else run_from
    runs = [run.span() for run in _SKIPPABLE_RUN.finditer(normal, 0, cut)]
    if cut < len(normal):
        runs.append((cut, len(normal)))
    for start, end in runs:
        if start > position:
            pieces.append(normal[position:start])
            cstarts.append(size)
            ostarts.append(position)
            size += start - position
        position = end
        first_space = normal.find(_SPACE, start, end)
        if first_space < 0:  # only ignored characters
            continue
        if end == len(normal) and not final:
            tail = start
            break
        previous = normal[start - 1] if start > 0 else before
        following = normal[end] if end < len(normal) else ""
        if _spaceless(previous) and _spaceless(following):
            continue
        pieces.append(_SPACE)
        cstarts.append(size)
        ostarts.append(first_space)
        size += 1
    else:
        if position < len(normal):
            pieces.append(normal[position:])
            cstarts.append(size)
            ostarts.append(position)
    return _View(normal, "".join(pieces), cstarts, ostarts, tail)


def _pattern(word: str) -> str:
    """The form of a list word the automaton holds ('' for a word that is only spaces)."""
    return _view(_normalise(word.strip())).compact.strip(_SPACE)


def _read_words(text: str) -> Iterator[str]:
    for line in text.splitlines():
        word = line.strip()
        if word and not word.startswith("#"):
            yield word


@cache
def _packaged_words() -> tuple[str, ...]:
    source = resources.files("fengchao_chains.gateway").joinpath("sensitive_words.txt")
    return tuple(_read_words(source.read_text(encoding="utf-8")))


def _read_word_file(path: Path) -> list[str]:
    """The words of one list file (UTF-8, one per line, ``#`` comments, blank lines)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"sensitive-word file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(
            f"cannot read sensitive-word file {path}: {reason}"
            " (check FENGCHAO_SENSITIVE_WORD_FILES)"
        ) from None
    return list(_read_words(text))


class SensitiveWords:
    """A compiled word list: immutable, thread-safe, shared by every request."""

    def __init__(self, words: Iterable[str]) -> None:
        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY, ahocorasick.KEY_STRING)
        # every pattern less its last character: a text is a prefix of one of these exactly
        # when it is a proper prefix of a pattern (Automaton.match), which is what a stream
        # must hold back (StreamGuard)
        self._stems = ahocorasick.Automaton(ahocorasick.STORE_LENGTH, ahocorasick.KEY_STRING)
        self._longest = 0
        firsts: set[str] = set()  # where a stem can start: a cheap test before _stems.match
        for word in words:
            pattern = _pattern(word)
            if pattern and pattern not in self._automaton:  # the first spelling is kept
                self._automaton.add_word(pattern, (len(pattern), word.strip()))
                if len(pattern) > 1:
                    self._stems.add_word(pattern[:-1])
                    firsts.add(pattern[0])
                self._longest = max(self._longest, len(pattern))
        self._stem_firsts = frozenset(firsts)
        self._count = len(self._automaton)
        if self._count:
            self._automaton.make_automaton()

    @classmethod
    def packaged(cls) -> SensitiveWords:
        """The list shipped with the package (``gateway/sensitive_words.txt``)."""
        return cls(_packaged_words())

    @classmethod
    def from_settings(cls, settings: Settings) -> SensitiveWords:
        """The packaged list plus every file in ``settings.sensitive_word_files``; a file
        that cannot be read or decoded raises :class:`ConfigurationError` naming it."""
        words = list(_packaged_words())
        for path in settings.sensitive_word_files:
            words.extend(_read_word_file(path))
        return cls(words)

    def __len__(self) -> int:
        """Distinct words (after normalisation)."""
        return self._count

    def __repr__(self) -> str:
        return f"SensitiveWords({self._count} words)"

    @property
    def longest(self) -> int:
        """The longest word, in characters after normalisation: a stream never holds back
        more than one character fewer (besides whitespace and format characters)."""
        return self._longest

    def _open_start(self, compact: str) -> int:
        """Where the longest suffix of ``compact`` that is a proper prefix of some pattern
        begins (``len(compact)`` when there is none): a later character can complete a word
        that starts there, and none that starts earlier."""
        size = len(compact)
        firsts = self._stem_firsts
        for start in range(max(size - self._longest + 1, 0), size):
            if compact[start] in firsts and self._stems.match(compact[start:]):
                return start
        return size

    def _hits_any(self, compact: str) -> bool:
        """Whether any word occurs in ``compact`` (a view's text)."""
        if not self._count or not compact:
            return False
        return next(self._automaton.iter(compact), None) is not None

    def _occurrences(self, view: _View) -> list[tuple[int, int, str]]:
        """Every occurrence, overlapping ones too, as original ``(start, end, word)``.  A
        pattern never starts or ends with a space, so both ends map one for one."""
        if not self._count or not view.compact:
            return []
        found = list(self._automaton.iter(view.compact))  # mostly none: one C call
        origin = view.origin
        return [(origin(last - size + 1), origin(last) + 1, word) for last, (size, word) in found]

    def find(self, text: str) -> list[Hit]:
        """The hits in ``text``, leftmost first, longest at each place, none overlapping."""
        found = sorted(self._occurrences(_view(_normalise(text))), key=lambda o: (o[0], -o[1]))
        hits: list[Hit] = []
        for start, end, word in found:
            if not hits or start >= hits[-1].end:
                hits.append(Hit(start, end, word))
        return hits

    def check(self, text: str) -> None:
        """Raise :class:`SensitiveContentError` if ``text`` contains any word."""
        found = sorted(self._occurrences(_view(_normalise(text))))
        if found:
            raise SensitiveContentError(word for _, _, word in found)

    def mask(self, text: str) -> str:
        """``text`` with every character of every occurrence replaced by ``*`` (whitespace
        inside a hit is kept); the length never changes."""
        view = _view(_normalise(text))
        spans = [(start, end) for start, end, _ in self._occurrences(view)]
        return _masked(text, view.normal, spans) if spans else text

    def guard(self, *, replace: bool) -> StreamGuard:
        """A filter for one streamed answer; ``replace`` masks instead of refusing."""
        return StreamGuard(self, replace=replace)


def _masked(text: str, normal: str, spans: Iterable[tuple[int, int]], upto: int = 0) -> str:
    """``text`` with the non-space characters of ``[0, upto)`` and of every span masked."""
    chars = list(text)
    for start, end in [(0, upto), *spans]:
        for i in range(start, min(end, len(chars))):
            if normal[i] != _SPACE:
                chars[i] = "*"
    return "".join(chars)


class StreamGuard:
    """Filters one stream of text deltas so that the text let through is exactly what the
    whole text would give, however the stream is cut.

    It holds back only the longest suffix of the received text that is a proper prefix of
    some word (in the normal form, so ``赌 `` or ``buy  c`` counts), since the next delta
    may complete that word, and a trailing whitespace run, which the next character may turn
    into nothing.  Everything before is final and is released at once: text that starts no
    word, most of a Chinese answer, goes out delta by delta.  Without
    ``replace`` the first hit raises :class:`SensitiveContentError` before any character of
    the word was released, and every later call raises it again; with ``replace`` the hits
    come out masked.  Not thread-safe: one guard per stream.
    """

    def __init__(self, words: SensitiveWords, *, replace: bool) -> None:
        self._words = words
        self._replace = replace
        self._pending = ""  # received, not yet released
        self._normal = ""  # its normal form, kept so each delta is normalised only once
        self._run_from = 0  # where the run of spaces and ignored characters ending it starts
        self._before = ""  # the last significant normalised character released
        self._masked_upto = 0  # the start of _pending is inside a hit found earlier
        self._error: SensitiveContentError | None = None
        self._flushed = False

    def feed(self, delta: str) -> str:
        """Take the next delta; return the text now safe to emit (maybe empty)."""
        normal = _normalise(delta)
        if significant := len(normal.rstrip(_SPACE + _IGNORED)):
            self._run_from = len(self._normal) + significant
        self._pending += delta
        self._normal += normal
        return self._release(final=False)

    def flush(self) -> str:
        """The end of the stream: return the held-back tail, checked or masked."""
        released = self._release(final=True)
        self._flushed = True
        return released

    def _release(self, *, final: bool) -> str:
        if self._error is not None:
            raise self._error
        if self._flushed:
            raise RuntimeError("this stream was already flushed; use a new guard")
        if not self._replace and (size := _copied_view(self._normal, final=final)) is not None:
            # the view is the text itself, so its indices are the text's (see _boundary)
            compact = self._normal[:size]
            if not self._words._hits_any(compact):  # the usual delta: nothing to refuse
                return self._cut(size if final else self._words._open_start(compact))
        view = _view(self._normal, before=self._before, final=final, run_from=self._run_from)
        spans = self._words._occurrences(view)
        if spans and not self._replace:
            self._pending = self._normal = ""
            self._run_from = 0
            self._error = SensitiveContentError(w for _, _, w in sorted(spans))
            raise self._error
        boundary = self._boundary(view, final=final)
        released = self._pending[:boundary]
        if self._replace and (spans or self._masked_upto):
            masking = [(s, e) for s, e, _ in spans if s < boundary]
            released = _masked(released, view.normal, masking, self._masked_upto)
            self._masked_upto = max([self._masked_upto, *(e for _, e in masking)]) - boundary
            self._masked_upto = max(self._masked_upto, 0)
        self._cut(boundary)
        return released

    def _cut(self, boundary: int) -> str:
        """Release the pending text up to ``boundary``; returns it as it came."""
        released = self._pending[:boundary]
        significant = self._normal[:boundary].rstrip(_SPACE + _IGNORED)
        if significant:
            self._before = significant[-1]
        self._pending = self._pending[boundary:]
        self._normal = self._normal[boundary:]
        self._run_from = max(0, self._run_from - boundary)
        return released

    def _boundary(self, view: _View, *, final: bool) -> int:
        """How much of the pending text no future delta can make part of a hit: everything
        before the longest resolved suffix that could still grow into a word (which never
        starts with a space, so it maps to one original character), or else before the
        unresolved whitespace run at the end."""
        if final:
            return len(self._pending)
        first_open = self._words._open_start(view.compact)
        if first_open < len(view.compact):
            return view.origin(first_open)
        return view.tail if view.tail is not None else len(self._pending)
