"""Sensitive words: matching, masking, the list files, and the stream guard under any chunking.

The chunking tests compare the guard against two things: the whole text (the guard fed it in
one piece) and a brute-force reference written here independently of the module (per-
character NFKC + casefold, the whitespace rule, every occurrence by ``str.find``).
"""

from __future__ import annotations

import itertools
import random
import time
import unicodedata
from pathlib import Path

import pytest

from fengchao_chains.errors import ConfigurationError, FengchaoError
from fengchao_chains.gateway.sensitive import (
    Hit,
    SensitiveContentError,
    SensitiveWords,
    StreamGuard,
    _normalise,
    _segmented_view,
    _view,
)
from fengchao_chains.settings import Settings

# --- an independent reference ------------------------------------------------------------


def ref_char(char: str) -> str:
    normal = unicodedata.normalize("NFKC", char)
    normal = normal if len(normal) == 1 else char
    folded = normal.casefold()
    return folded if len(folded) == 1 else normal


def is_han(char: str) -> bool:
    return bool(char) and unicodedata.name(char, "").startswith("CJK UNIFIED IDEOGRAPH")


def ref_compact(text: str) -> list[tuple[str, int]]:
    """(normalised character, original index) of what is matched."""
    chars = [(ref_char(c), i) for i, c in enumerate(text) if unicodedata.category(c) != "Cf"]
    out: list[tuple[str, int]] = []
    i = 0
    while i < len(chars):
        char, position = chars[i]
        if not char.isspace():
            out.append((char, position))
            i += 1
            continue
        j = i
        while j < len(chars) and chars[j][0].isspace():
            j += 1
        previous = chars[i - 1][0] if i else ""
        following = chars[j][0] if j < len(chars) else ""
        if not (is_han(previous) and is_han(following)):
            out.append((" ", position))
        i = j
    return out


def ref_spans(words: list[str], text: str) -> list[tuple[int, int]]:
    """Every occurrence of every word, as original (start, end)."""
    compact = ref_compact(text)
    flat = "".join(c for c, _ in compact)
    spans = []
    for word in words:
        pattern = "".join(c for c, _ in ref_compact(word.strip())).strip()
        if not pattern:
            continue
        at = flat.find(pattern)
        while at >= 0:
            spans.append((compact[at][1], compact[at + len(pattern) - 1][1] + 1))
            at = flat.find(pattern, at + 1)
    return spans


def ref_mask(words: list[str], text: str) -> str:
    chars = list(text)
    for start, end in ref_spans(words, text):
        for i in range(start, end):
            if not ref_char(text[i]).isspace():
                chars[i] = "*"
    return "".join(chars)


# --- whole texts -------------------------------------------------------------------------


def test_full_width_case_and_format_characters_match_with_original_indices() -> None:
    words = SensitiveWords(["冰毒", "buy cocaine", "K粉"])
    text = "他说ＢＵＹ   Cocaine，还有冰\u200b毒和ｋ粉"
    hits = words.find(text)
    assert [text[h.start : h.end] for h in hits] == ["ＢＵＹ   Cocaine", "冰\u200b毒", "ｋ粉"]
    assert [h.word for h in hits] == ["buy cocaine", "冰毒", "K粉"]
    assert words.mask(text) == "他说***   *******，还有***和**"


def test_whitespace_between_chinese_characters_is_ignored_elsewhere_it_is_one_space() -> None:
    words = SensitiveWords(["赌博网站", "sex", "online casino"])
    assert words.find("去赌 博\u3000网\n站玩") == [Hit(1, 8, "赌博网站")]
    assert words.find("his exam") == []  # spaces separate English words
    assert words.find("an online\t \n casino") == [Hit(3, 19, "online casino")]
    assert words.find("an onlinecasino") == []
    assert words.find("赌 博 site") == []  # "站" is not there
    assert words.mask("赌 博\u3000网站") == "* *\u3000**"  # whitespace is kept


def test_find_is_leftmost_longest_and_non_overlapping_mask_covers_every_occurrence() -> None:
    words = SensitiveWords(["ab", "abc", "bcd", "aa"])
    assert words.find("xabcd") == [Hit(1, 4, "abc")]
    assert words.find("aaaaa") == [Hit(0, 2, "aa"), Hit(2, 4, "aa")]
    assert words.mask("xabcdx") == "x****x"  # "bcd" overlaps "abc" and is masked too
    assert words.mask("aaaaa") == "*****"
    assert words.mask("clean") == "clean"


def test_check_raises_6601_with_the_words_once_each_and_no_word_in_the_message() -> None:
    words = SensitiveWords(["冰毒", "ＢＩＮＧ", "bing", "冰毒"])
    assert len(words) == 2  # duplicates after normalisation count once
    words.check("今天天气很好")
    with pytest.raises(SensitiveContentError) as caught:
        words.check("冰毒，bing，又是冰毒")
    error = caught.value
    assert isinstance(error, FengchaoError)
    assert error.code == 6601
    assert error.words == ("冰毒", "ＢＩＮＧ")  # the first spelling in the list
    assert "冰毒" not in str(error)
    assert "2 sensitive words" in str(error)


def test_empty_words_and_an_empty_list() -> None:
    words = SensitiveWords(["", "   ", "\u200b", "\t"])
    assert len(words) == 0
    assert words.longest == 0
    assert words.find("anything 冰毒") == []
    assert words.mask("anything") == "anything"
    guard = words.guard(replace=False)
    assert guard.feed("abc") == "abc"
    assert guard.flush() == ""


def test_longest_counts_normalised_characters() -> None:
    assert SensitiveWords(["ab", "赌 博 网 站", "x\u200by"]).longest == 4


def test_packaged_list() -> None:
    words = SensitiveWords.packaged()
    assert 100 <= len(words) <= 300
    text = "这个赌博网站卖冰毒，还能代开发票；buy Cocaine here"
    assert {h.word for h in words.find(text)} == {"赌博网站", "冰毒", "代开发票", "buy cocaine"}
    # ordinary text, including the header's words and the subjects named, has no hit
    clean = (
        "反对赌博，远离毒品，警惕网络诈骗的新手法。今天北京晴，股市上涨。"
        "Operators extend it with FENGCHAO_SENSITIVE_WORD_FILES. His exam was hard."
    )
    assert words.find(clean) == []


# --- list files and settings -------------------------------------------------------------


def test_from_settings_adds_the_operators_files(tmp_path: Path) -> None:
    first = tmp_path / "first.txt"
    first.write_text(
        "\ufeff# our own words\n\n  内部代号甲  \n#不是词\n内部代号甲\n", encoding="utf-8"
    )
    second = tmp_path / "second.txt"
    second.write_text("secret project\n", encoding="utf-8")
    settings = Settings(data_dir=tmp_path, sensitive_word_files=[first, second])
    words = SensitiveWords.from_settings(settings)
    assert len(words) == len(SensitiveWords.packaged()) + 2
    text = "内部代号甲 is the Secret  Project; 不是词; 冰毒"
    assert [h.word for h in words.find(text)] == ["内部代号甲", "secret project", "冰毒"]


def test_from_settings_reads_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.txt").write_text("甲乙丙\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("丁戊己\n", encoding="utf-8")
    monkeypatch.setenv(
        "FENGCHAO_SENSITIVE_WORD_FILES", f"{tmp_path / 'a.txt'}:{tmp_path / 'b.txt'}"
    )
    words = SensitiveWords.from_settings(Settings(data_dir=tmp_path))
    assert [h.word for h in words.find("丁戊己和甲乙丙")] == ["丁戊己", "甲乙丙"]


@pytest.mark.parametrize("problem", ["missing", "directory", "not utf-8"])
def test_a_bad_word_file_is_a_configuration_error_naming_it(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "words.txt"
    if problem == "directory":
        path.mkdir()
    elif problem == "not utf-8":
        path.write_bytes("冰毒\n".encode("gbk"))
    settings = Settings(data_dir=tmp_path, sensitive_word_files=[path])
    with pytest.raises(ConfigurationError) as caught:
        SensitiveWords.from_settings(settings)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message
    assert "Traceback" not in message


# --- streams -----------------------------------------------------------------------------


def run_stream(guard: StreamGuard, deltas: list[str]) -> tuple[str, bool]:
    """(everything released, whether it was refused)."""
    released = []
    try:
        for delta in deltas:
            released.append(guard.feed(delta))
        released.append(guard.flush())
    except SensitiveContentError:
        return "".join(released), True
    return "".join(released), False


def test_a_word_split_across_chunks_is_caught_before_any_of_it_is_sent() -> None:
    guard = SensitiveWords(["冰毒"]).guard(replace=False)
    sent = [guard.feed("我想买"), guard.feed("冰")]
    assert sent == ["我想买", ""]  # "冰" is held back: it may start a word, "买" starts none
    with pytest.raises(SensitiveContentError) as caught:
        guard.feed("毒吗")
    assert caught.value.words == ("冰毒",)
    # the stream is over: nothing more comes out
    with pytest.raises(SensitiveContentError):
        guard.feed("普通的话")
    with pytest.raises(SensitiveContentError):
        guard.flush()


def test_replace_masks_a_word_split_across_chunks() -> None:
    guard = SensitiveWords(["赌博网站"]).guard(replace=True)
    parts = [guard.feed(d) for d in ["这是", "赌", " 博", "网", "站，", "别去"]]
    parts.append(guard.flush())
    assert "".join(parts) == "这是* ***，别去"
    assert not any("赌" in p or "博" in p for p in parts)


def test_a_space_between_chinese_characters_is_resolved_by_the_next_delta() -> None:
    words = SensitiveWords(["赌博"])
    guard = words.guard(replace=True)
    assert guard.feed("a赌 ") == "a"  # "赌" may start "赌 博"
    assert guard.feed("博") == "* *"  # a finished word that starts no longer one is final
    assert guard.flush() == ""
    guard = words.guard(replace=True)
    assert guard.feed("a赌 ") == "a"
    assert guard.feed("x") == "赌 x"  # no word starts with "赌 x", or with "x"
    assert guard.flush() == ""


def test_flush_twice_is_a_programming_error() -> None:
    guard = SensitiveWords(["ab"]).guard(replace=False)
    guard.flush()
    with pytest.raises(RuntimeError):
        guard.feed("x")


WORDS = [
    "冰毒",
    "赌博网站",
    "六合彩",
    "ab",
    "abc",
    "bcd",
    "aa",
    "b a",
    "博彩",
    "a冰",
    "毒b",
    "𠀀冰",
]
LETTERS = list("冰毒赌博网站六合彩abcdABＡＢ的了x𠀀")
PLAIN_ALPHABET = [*LETTERS, "\u200b", "\u200d", "\u00ad", "\ufeff"]  # format characters
SPACED_ALPHABET = [*PLAIN_ALPHABET, " ", " ", "\n", "\u3000", "\u00a0"]


def random_splits(rng: random.Random, text: str) -> list[list[str]]:
    """A few ways to cut ``text``: one character per delta, and random cuts (with empties)."""
    splits = [list(text)]
    for _ in range(3):
        cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(0, 8)))
        bounds = [0, *cuts, len(text)]
        splits.append([text[a:b] for a, b in itertools.pairwise(bounds)])
    return splits


@pytest.mark.parametrize("alphabet", [PLAIN_ALPHABET, SPACED_ALPHABET], ids=["plain", "spaced"])
def test_any_chunking_gives_what_the_whole_text_gives(alphabet: list[str]) -> None:
    rng = random.Random(20261122)  # noqa: S311 - test data, not a secret
    words = SensitiveWords(WORDS)
    refused_some = masked_some = 0
    for _ in range(1500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        expected_mask = ref_mask(WORDS, text)
        spans = ref_spans(WORDS, text)
        first_hit = min((s for s, _ in spans), default=len(text))
        assert words.mask(text) == expected_mask, text
        assert bool(words.find(text)) == bool(spans), text
        whole_masked, _ = run_stream(words.guard(replace=True), [text])
        assert whole_masked == expected_mask, text
        for deltas in random_splits(rng, text):
            masked, refused = run_stream(words.guard(replace=True), deltas)
            assert (masked, refused) == (expected_mask, False), deltas
            released, refused = run_stream(words.guard(replace=False), deltas)
            assert refused == bool(spans), deltas
            if refused:  # only text before the first hit, and none of the word
                assert text.startswith(released)
                assert len(released) <= first_hit, deltas
            else:
                assert released == text, deltas
        refused_some += bool(spans)
        masked_some += expected_mask != text
    assert refused_some > 300
    assert masked_some > 300


def test_nothing_released_ever_starts_an_unfinished_word() -> None:
    """After every delta, no released character begins a suffix of the received text that a
    word continues (whitespace-free text, where normalisation is one for one)."""
    rng = random.Random(7)  # noqa: S311 - test data, not a secret
    words = SensitiveWords(WORDS)
    patterns = ["".join(ref_char(c) for c in w) for w in WORDS if " " not in w]
    for _ in range(1500):
        text = "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 30)))
        normal = "".join(ref_char(c) for c in text)
        for deltas in random_splits(rng, text):
            guard = words.guard(replace=True)
            received = released = 0
            for delta in deltas:
                released += len(guard.feed(delta))
                received += len(delta)
                for start in range(received):
                    tail = normal[start:received]
                    if any(p.startswith(tail) and p != tail for p in patterns):
                        assert released <= start, (deltas, start)
                        break


def test_a_long_run_of_whitespace_or_format_characters_stays_cheap() -> None:
    """A model stuck printing newlines (or zero-width spaces) keeps growing the held-back
    run; each delta is normalised once and the run is not scanned again, so 100,000
    characters take 0.1-1.2 s on a slow day (13 s when the held-back text was normalised
    again on every delta; 2-7 s when the run was scanned again on every delta)."""
    words = SensitiveWords.packaged()
    for first, junk in [("a", "\n"), ("赌", "\u200b"), ("赌", " \u200b")]:
        guard = words.guard(replace=False)
        started = time.perf_counter()
        released = guard.feed(first)
        for _ in range(5000):
            released += guard.feed(junk * 20)
        released += guard.flush()
        assert time.perf_counter() - started < 5
        assert released == first + junk * 100_000


# --- how little the stream holds back ----------------------------------------------------


def held_after_each_delta(guard: StreamGuard, deltas: list[str]) -> list[int]:
    """Characters received but not yet released, after each delta."""
    received = released = 0
    held = []
    for delta in deltas:
        released += len(guard.feed(delta))
        received += len(delta)
        held.append(received - released)
    return held


def test_text_that_starts_no_word_is_released_at_once_delta_by_delta() -> None:
    """Not held back ``longest - 1`` (17) characters: a short answer streams as it comes."""
    words = SensitiveWords.packaged()
    assert words.longest > 10
    guard = words.guard(replace=False)
    answer = "今天晴，很适合散步。"
    assert [guard.feed(char) for char in answer] == list(answer)
    assert guard.flush() == ""
    guard = words.guard(replace=False)  # "气" may start 气枪出售: held for one character
    assert [guard.feed(char) for char in "今天天气很好"] == ["今", "天", "天", "", "气很", "好"]
    assert guard.flush() == ""
    guard = words.guard(replace=True)
    assert [guard.feed(d) for d in ["你好", "！我是", "助手。"]] == ["你好", "！我是", "助手。"]
    assert guard.flush() == ""


def test_a_possible_word_start_is_held_until_the_next_delta_decides() -> None:
    words = SensitiveWords.packaged()
    guard = words.guard(replace=False)
    assert guard.feed("远离赌") == "远离"  # "赌" may become 赌博网站
    assert guard.feed("博") == ""  # "赌博" too
    assert guard.feed("，") == "赌博，"  # "赌博，" starts no word
    assert guard.flush() == ""


def test_the_held_tail_with_whitespace_and_format_characters() -> None:
    words = SensitiveWords(["赌博网站", "online casino"])
    guard = words.guard(replace=False)
    assert guard.feed("去赌\u200b") == "去"
    assert guard.feed(" 博") == ""  # "赌 博" is 赌博 between Chinese characters
    assert guard.feed("x") == "赌\u200b 博x"
    guard = words.guard(replace=False)
    assert guard.feed("an online  ") == "an "  # "online " may become "online casino"
    assert guard.feed("c") == ""
    assert guard.feed("hat ") == "online  chat"  # the trailing space waits for the next
    assert guard.flush() == " "
    guard = words.guard(replace=False)
    assert guard.feed("no\u200bt ") == "no\u200bt"  # only the trailing whitespace run waits
    assert guard.feed("\u200bxy") == " \u200bxy"


def ref_held(patterns: list[str], normal: str) -> int:
    """The length of the longest suffix of ``normal`` that is a proper prefix of a pattern."""
    for start in range(len(normal)):
        tail = normal[start:]
        if any(p.startswith(tail) and p != tail for p in patterns):
            return len(tail)
    return 0


def test_the_held_tail_is_exactly_the_longest_suffix_that_may_start_a_word() -> None:
    """Whitespace-free text, where normalisation is one for one: after every delta the guard
    holds back exactly the reference's longest word-prefix suffix, no more, no less."""
    rng = random.Random(11)  # noqa: S311 - test data, not a secret
    words = SensitiveWords(WORDS)
    patterns = ["".join(c for c, _ in ref_compact(w)) for w in WORDS]
    held_some = 0
    for _ in range(1500):
        text = "".join(rng.choice(LETTERS) for _ in range(rng.randint(1, 30)))
        normal = "".join(ref_char(c) for c in text)
        for deltas in random_splits(rng, text):
            held = held_after_each_delta(words.guard(replace=True), deltas)
            received = list(itertools.accumulate(len(d) for d in deltas))
            expected = [ref_held(patterns, normal[:end]) for end in received]
            assert held == expected, deltas
            held_some += any(held)
    assert held_some > 1000


ANSWER = (
    "北京今天晴转多云，最高气温二十六度，空气质量良好，适合户外活动。"
    "专家提醒，近期网络诈骗的新手法层出不穷：有人冒充客服，以退款为名索要银行卡号和验证码；"
    "也有人在网上发布所谓的兼职广告，先让你小额获利，再诱导你投入更多资金。"
    "请大家远离赌博，拒绝毒品，不要轻信陌生人发来的链接，更不要出售或出借自己的银行账户。"
    "如果遇到可疑情况，请及时拨打110报警，或者向当地派出所咨询。"
    "另外，本周末市图书馆将举办读书分享会，欢迎市民带着孩子一起参加，现场还有免费的茶水和点心。"
)


def test_a_chinese_answer_is_held_back_a_few_characters_at_most() -> None:
    """A realistic answer that touches the list's subjects (赌博, 毒品, 网上, 出售...)
    without a hit: with the packaged list it is never more than a few characters behind."""
    words = SensitiveWords.packaged()
    assert words.find(ANSWER) == []
    rng = random.Random(3)  # noqa: S311 - test data, not a secret
    for deltas in random_splits(rng, ANSWER):
        guard = words.guard(replace=False)
        held = held_after_each_delta(guard, deltas)
        assert max(held) <= 4, deltas
        assert guard.flush() == ANSWER[len(ANSWER) - held[-1] :]
    one_by_one = held_after_each_delta(words.guard(replace=False), list(ANSWER))
    assert max(one_by_one) >= 1  # some prefixes were held: the test can see a hold
    assert sum(one_by_one) / len(one_by_one) < 0.5  # most characters go out at once


def test_the_ascii_shortcut_gives_the_segmented_view() -> None:
    """`_view`'s one-segment shortcut for plain ASCII (the common English answer) maps
    every character as the segment-by-segment view does, in a stream and at its end."""
    rng = random.Random(11)  # noqa: S311 - test data, not a secret
    for _ in range(3000):
        text = "".join(rng.choice("ab 1.\t") for _ in range(rng.randrange(0, 12)))
        normal = _normalise(text)
        for final, before in itertools.product((True, False), ("", "x", "中")):
            fast = _view(normal, before=before, final=final)
            slow = _segmented_view(normal, before=before, final=final)
            assert (fast.compact, fast.tail) == (slow.compact, slow.tail), (text, final)
            assert [fast.origin(i) for i in range(len(fast.compact))] == [
                slow.origin(i) for i in range(len(slow.compact))
            ], (text, final)


@pytest.mark.parametrize("alphabet", [PLAIN_ALPHABET, SPACED_ALPHABET, list("ab cd.")])
def test_the_refusing_guard_releases_what_the_masking_guard_does_until_a_hit(
    alphabet: list[str],
) -> None:
    """A refusing guard takes a shortcut for a delta whose view is the text itself and has no
    hit; delta by delta it must release exactly what the masking guard (which never takes
    it) releases, up to the delta that completes a word, which it refuses."""
    rng = random.Random(5)  # noqa: S311 - test data, not a secret
    words = SensitiveWords(WORDS)
    compared = refused = 0
    for _ in range(1500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        for deltas in random_splits(rng, text):
            refusing, masking = words.guard(replace=False), words.guard(replace=True)
            for delta in [*deltas, None]:
                expected = masking.feed(delta) if delta is not None else masking.flush()
                try:
                    released = refusing.feed(delta) if delta is not None else refusing.flush()
                except SensitiveContentError:
                    assert ref_spans(WORDS, text), deltas
                    refused += 1
                    break
                assert released == expected, deltas
                compared += 1
    assert compared > 20_000
    assert refused > 500
