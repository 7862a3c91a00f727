"""The c=1 cells of bench/gateway.py, measured in rounds of turns.

A c=1 cell measured on its own, one target after another, meets the machine minutes away
from its baseline's cell, and on a shared VM a minute can be 0.2-0.5 ms slower than the
next: more than the c=1 target's margin, and in either direction. So with every server up
at once, the c=1 cells of a mode take turns: each target runs a turn of ``duration /
rounds`` seconds (one client, its requests back to back, as in a cell of its own), every
target once per round, the order rotated every round, and a target's turns are pooled into
its cell. A slow stretch then falls on every target's cell alike, and a cell's added
latency is taken over a baseline measured across the same minutes.

Before the rounds each target gets a turn of the cell's warm-up that is not counted, as a
cell of its own does. A turn's first ``TURN_WARMUP`` seconds are not counted either: its
server has idled through the other targets' turns, and the client opens its connection
then.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench._gateway_load import CpuWatch, Run, Target, measure
from bench._gateway_servers import ServerProcess

TURN_WARMUP = 0.3
"""Seconds at the start of each turn not counted."""


@dataclass
class Entry:
    """A target under measurement and the processes whose CPU its cells count."""

    target: Target
    watch: CpuWatch
    groups: list[str]
    server: ServerProcess | None = None
    """The gateway's server, for a gateway target (the profile runs on it)."""


def measure_in_rounds(
    entries: list[Entry], mode: str, *, rounds: int, duration: float, warmup: float
) -> list[Run]:
    """Each entry's c=1 cell for ``mode``: ``duration`` seconds measured in ``rounds`` turns,
    the entries taking turns in an order rotated every round, after a turn of ``warmup``
    seconds each that is not counted (a server's first requests of a mode, its lazy
    set-up among them, as a cell's warm-up)."""
    for entry in entries:
        warming = measure(
            entry.target, mode, concurrency=1, duration=0.0, warmup=warmup, watch=entry.watch
        )
        asyncio.run(warming)
    parts: dict[str, list[Run]] = {entry.target.name: [] for entry in entries}
    for index in range(rounds):
        start = index % len(entries)
        for entry in entries[start:] + entries[:start]:
            turn = measure(
                entry.target,
                mode,
                concurrency=1,
                duration=duration / rounds,
                warmup=TURN_WARMUP,
                watch=entry.watch,
            )
            parts[entry.target.name].append(asyncio.run(turn))
    return [pooled(parts[entry.target.name]) for entry in entries]


def pooled(turns: list[Run]) -> Run:
    """One cell from its turns: their samples and errors, time measured and CPU summed."""
    first = turns[0]
    cell = Run(first.target, first.mode, first.concurrency, elapsed=0.0)
    for turn in turns:
        cell.samples += turn.samples
        cell.errors += turn.errors
        cell.elapsed += turn.elapsed
        for group, seconds in turn.cpu_seconds.items():
            cell.cpu_seconds[group] = cell.cpu_seconds.get(group, 0.0) + seconds
    return cell
