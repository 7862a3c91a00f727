"""The load generator of bench/gateway.py: closed-loop clients on aiohttp, and the figures.

``concurrency`` clients each send one request after another (keep-alive, one connection
each) for a fixed time; every request's total time and, for a stream, its time to the first
bytes holding a ``data:`` event are kept. Streams are read as the bytes arrive, not split
into lines, and aiohttp (with its C HTTP parser) is the client: the load generator must not
be what saturates. Its ceiling is measured against the bare upstream in the same run (the
``direct`` rows, with its own CPU per request).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil

from bench._gateway_upstream import REPLY_END


@dataclass(frozen=True)
class Target:
    """One way to reach the upstream: a URL, its headers and the body of each mode."""

    name: str
    url: str
    bodies: dict[str, bytes]
    """``invoke`` and ``stream`` request bodies (JSON, already encoded)."""
    headers: Callable[[], dict[str, str]] = dict
    """Called once per client connection (a gateway token may be signed per call)."""


@dataclass
class Sample:
    total: float
    ttft: float | None
    ok: bool


@dataclass
class Run:
    """What one cell (target x mode x concurrency) measured."""

    target: str
    mode: str
    concurrency: int
    elapsed: float
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU time spent during the run by each watched process group (server, db, ...)."""

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def rate(self) -> float:
        return len(self.ok) / self.elapsed if self.elapsed else 0.0

    def latency(self, q: float) -> float:
        return quantile([s.total for s in self.ok], q)

    def ttft(self, q: float) -> float:
        return quantile([s.ttft for s in self.ok if s.ttft is not None], q)

    def cpu_ms_per_request(self, group: str) -> float:
        done = len(self.ok)
        return 1000 * self.cpu_seconds.get(group, 0.0) / done if done else float("nan")


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) by the inclusive method; NaN when there is nothing."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=1000, method="inclusive")
    return cuts[min(len(cuts) - 1, max(0, round(q * 1000) - 1))]


@dataclass
class CpuWatch:
    """Sums the CPU time (user + system) of process trees: the roots and all descendants.

    Children are looked up at each reading (a database backend or worker may come and go);
    a process that ended between two readings loses its last slice, which is small next to a
    run of seconds."""

    roots: dict[str, list[int]]

    def read(self) -> dict[str, float]:
        return {group: _tree_cpu(pids) for group, pids in self.roots.items()}


def _tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


async def _one(
    session: aiohttp.ClientSession, target: Target, mode: str, headers: dict[str, str]
) -> Sample:
    start = time.perf_counter()
    ttft: float | None = None
    body = target.bodies[mode]
    async with session.post(target.url, data=body, headers=headers) as response:
        if mode == "stream":
            seen = bytearray()
            async for piece in response.content.iter_any():
                if ttft is None and b"data:" in piece:
                    ttft = time.perf_counter() - start
                seen += piece
            data = bytes(seen)
        else:
            data = await response.read()
        ok = response.status == 200 and REPLY_END in data
    total = time.perf_counter() - start
    if not ok:
        raise BadAnswer(f"{response.status}: {data[:300]!r}")
    return Sample(total, ttft, ok)


class BadAnswer(Exception):
    """An answer that is not the upstream's reply in full (an error, or cut short)."""


async def _client(
    target: Target,
    mode: str,
    deadline: float,
    run: Run,
    record_after: float,
) -> None:
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"content-type": "application/json", **target.headers()}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while (now := time.perf_counter()) < deadline:
            try:
                sample = await _one(session, target, mode, headers)
            except (TimeoutError, aiohttp.ClientError, BadAnswer) as exc:
                if now >= record_after:
                    run.errors.append(f"{type(exc).__name__}: {exc}")
                    run.samples.append(Sample(time.perf_counter() - now, None, False))
                continue
            if now >= record_after:
                run.samples.append(sample)


async def measure(
    target: Target,
    mode: str,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    watch: CpuWatch,
) -> Run:
    """``concurrency`` clients for ``warmup + duration`` seconds; requests started in the
    warm-up are not counted, and the CPU readings bracket the measured part only (read once
    the warm-up ends, and when the last client has finished)."""
    run = Run(target.name, mode, concurrency, elapsed=0.0)
    start = time.perf_counter()
    record_after = start + warmup
    deadline = record_after + duration
    clients = [
        asyncio.create_task(_client(target, mode, deadline, run, record_after))
        for _ in range(concurrency)
    ]
    await asyncio.sleep(max(0.0, record_after - time.perf_counter()))
    before = watch.read()
    measured_from = time.perf_counter()
    await asyncio.gather(*clients)
    run.elapsed = time.perf_counter() - measured_from
    after = watch.read()
    run.cpu_seconds = {group: after[group] - before[group] for group in after}
    return run


def summary(run: Run, groups: Sequence[str]) -> dict[str, Any]:
    """The run's figures as plain numbers (milliseconds, requests/s), for JSON output."""
    return {
        "target": run.target,
        "mode": run.mode,
        "concurrency": run.concurrency,
        "requests": len(run.ok),
        "errors": len(run.errors),
        "rate": run.rate,
        "p50_ms": 1000 * run.latency(0.5),
        "p99_ms": 1000 * run.latency(0.99),
        "ttft_p50_ms": 1000 * run.ttft(0.5),
        "ttft_p99_ms": 1000 * run.ttft(0.99),
        "cpu_ms": {group: run.cpu_ms_per_request(group) for group in groups},
        "first_error": run.errors[0] if run.errors else None,
    }


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, allow_nan=True)
