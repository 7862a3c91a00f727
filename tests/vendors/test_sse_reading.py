"""The SSE reader's one-pass split of whole ``data:`` events decodes exactly what httpx-sse's
decoders do, read by read, on any stream cut anywhere."""

from __future__ import annotations

import codecs
import itertools
import random

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from fengchao_chains.llms._sse import EventReader, ServerSentEvent

Decoded = list[tuple[str, str, str, int | None]]


class ReferenceReader:
    """httpx-sse's decoders line by line, nothing else: what the reader must match."""

    def __init__(self) -> None:
        self.events, self.lines = SSEDecoder(), SSELineDecoder()
        self.text = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, raw: bytes) -> Decoded:
        return self._decoded(self.lines.decode(self.text.decode(raw)))

    def end(self) -> Decoded:
        tail = self.lines.decode(self.text.decode(b"", final=True)) + self.lines.flush()
        return self._decoded(tail)

    def _decoded(self, lines: list[str]) -> Decoded:
        return fields([e for line in lines if (e := self.events.decode(line)) is not None])


def fields(events: list[ServerSentEvent]) -> Decoded:
    return [(e.event, e.data, e.id, e.retry) for e in events]


def read_both(reads: list[bytes]) -> tuple[list[Decoded], list[Decoded]]:
    ours, reference = EventReader(), ReferenceReader()
    got = [fields(ours.feed(raw)) for raw in reads] + [fields(ours.end())]
    want = [reference.feed(raw) for raw in reads] + [reference.end()]
    return got, want


DATA = ['{"choices":[{"delta":{"content":"晴"}}]}', "[DONE]", "", " two spaces", "a:b", "{}"]
LINES = [
    *(f"data: {d}" for d in DATA),
    *(f"data:{d}" for d in DATA),
    "event: message_stop",
    "event: ping",
    "id: 42",
    "id",
    "retry: 1500",
    "retry: soon",
    ": keep-alive",
    "data",
    "unknown: field",
]


def random_stream(rng: random.Random) -> bytes:
    """Events of one to three lines, mostly single ``data:`` lines, with LF, CRLF or CR
    line ends now and then, and stray blank lines."""
    events = []
    for _ in range(rng.randint(0, 12)):
        if rng.random() < 0.6:
            lines = [f"data: {rng.choice(DATA)}"]
        else:
            lines = [rng.choice(LINES) for _ in range(rng.randint(1, 3))]
        events.append("\n".join(lines) + "\n\n" + ("\n" if rng.random() < 0.05 else ""))
    text = "".join(events)
    if rng.random() < 0.2:
        text = text.replace("\n", rng.choice(["\r\n", "\r"]))
    return text.encode()


def random_reads(rng: random.Random, stream: bytes) -> list[bytes]:
    """The stream cut at random bytes (inside a line, a CRLF or a UTF-8 character too),
    or at event boundaries, as a vendor's bursts arrive."""
    if len(stream) < 2:
        return [stream] if stream else []
    if rng.random() < 0.5:
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 6))))
    else:
        ends = [i + 2 for i in range(len(stream)) if stream[i : i + 2] == b"\n\n"]
        cuts = sorted(rng.sample(ends, min(len(ends), rng.randint(0, 4))))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@pytest.mark.parametrize("seed", range(40))
def test_the_reader_decodes_what_httpx_sse_decodes_read_by_read(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible test input, not a secret
    for _ in range(100):
        reads = random_reads(rng, random_stream(rng))
        got, want = read_both(reads)
        assert got == want, reads


def test_a_burst_of_data_events_is_split_in_one_pass() -> None:
    burst = b'data: {"a": 1}\n\ndata:[DONE]\n\n'
    got, want = read_both([burst])
    assert got == want == [[("message", '{"a": 1}', "", None), ("message", "[DONE]", "", None)], []]


def test_after_an_event_id_every_event_carries_it() -> None:
    """The one-pass split makes events without an id, so it stays off once one is set."""
    reads = [b"id: 7\ndata: a\n\n", b"data: b\n\n", b"data: c\n\n"]
    got, want = read_both(reads)
    assert got == want
    assert [event[2] for batch in got for event in batch] == ["7", "7", "7"]


def test_a_read_that_ends_inside_an_event_is_joined_to_the_next() -> None:
    reads = [b"data: one\n\ndata: t", "wo 晴\n\n".encode()[:4], "wo 晴\n\n".encode()[4:]]
    got, want = read_both(reads)
    assert got == want
    assert [event[1] for batch in got for event in batch] == ["one", "two 晴"]
