"""The soak of bench/gateway.py: many streams held open for a while, errors counted and the
server's resident memory sampled, to see that it stays flat."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench._gateway_load import CpuWatch, Run, Target, measure
from bench._gateway_servers import ServerProcess

SAMPLE_EVERY = 2.0
RAMP = 10.0
"""Seconds at the start whose memory samples are the ramp (connections and buffers being
made), not the plateau the flatness check compares."""
FLAT_TOLERANCE_MB = 8.0


@dataclass
class Soak:
    target: str
    streams: int
    run: Run
    rss: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the start, resident bytes of the server's process tree)."""

    @property
    def errors(self) -> list[str]:
        return self.run.errors

    def plateau_mb(self) -> tuple[float, float]:
        """Mean RSS (MB) of the first and of the last fifth of the samples after the ramp."""
        plateau = [rss for t, rss in self.rss if t >= RAMP] or [rss for _t, rss in self.rss]
        if not plateau:
            return math_nan(), math_nan()
        fifth = max(1, len(plateau) // 5)
        return (
            statistics.fmean(plateau[:fifth]) / 2**20,
            statistics.fmean(plateau[-fifth:]) / 2**20,
        )

    @property
    def flat(self) -> bool:
        first, last = self.plateau_mb()
        return last - first <= max(FLAT_TOLERANCE_MB, 0.03 * first)

    def summary(self) -> dict[str, Any]:
        first, last = self.plateau_mb()
        return {
            "target": self.target,
            "streams": self.streams,
            "seconds": self.run.elapsed,
            "completed": len(self.run.ok),
            "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else None,
            "streams_per_s": self.run.rate,
            "ttft_p50_ms": 1000 * self.run.ttft(0.5),
            "ttft_p99_ms": 1000 * self.run.ttft(0.99),
            "rss_start_mb": self.rss[0][1] / 2**20 if self.rss else None,
            "rss_peak_mb": max(r for _t, r in self.rss) / 2**20 if self.rss else None,
            "rss_plateau_first_mb": first,
            "rss_plateau_last_mb": last,
            "flat": self.flat,
            "server_cpu_ms_per_stream": self.run.cpu_ms_per_request("server"),
        }


def math_nan() -> float:
    return float("nan")


async def soak(target: Target, server: ServerProcess, streams: int, seconds: float) -> Soak:
    """``streams`` clients streaming back to back for ``seconds``; RSS every 2 s."""
    samples: list[tuple[float, int]] = []
    start = time.perf_counter()
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter() - start, server.rss_bytes()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), SAMPLE_EVERY)

    sampler = asyncio.create_task(sample())
    watch = CpuWatch({"server": [server.pid]})
    try:
        run = await measure(
            target, "stream", concurrency=streams, duration=seconds, warmup=0.0, watch=watch
        )
    finally:
        done.set()
        await sampler
    return Soak(target.name, streams, run, samples)
