"""Every target's added latency at concurrency 1, requests interleaved one by one.

``bench/gateway.py`` measures each target's c=1 cell in turns of 1.5 s (rounds of turns,
``bench/_gateway_rounds.py``); a slow second still falls on some turns and not others, and
one client's requests back to back are what it times. Here every target runs at once and
one client sends a request to each in turn (``direct``, ``direct-aigc``, ``floor``, /aigc,
/v1 and, if its venv is there, LiteLLM), shuffling the order every cycle, so each meets the
machine in the same state; a target's added latency is its median difference from its
baseline, cycle by cycle (/aigc's baseline is ``direct-aigc``, the others' ``direct``),
with a bootstrap 95% interval, and LiteLLM's is the anchor the ratio is taken against.

Absolute figures run higher than the full bench's: a server idles through the other
targets' requests, so the first half of each of its requests runs cold too. ``--turn N``
measures what the full bench's c=1 cells measure, one client's requests back to back, yet
still with every target meeting the same stretch of the machine: each target gets N
requests in a row per cycle, all but the first timed, and the i-th timed request of a
target's turn is paired with the i-th of its baseline's in the same cycle.

    .venv/bin/python bench/gateway_c1.py                    # invoke and stream, ~5 min
    .venv/bin/python bench/gateway_c1.py --turn 4 --cycles 100   # back to back, ~6 min
    .venv/bin/python bench/gateway_c1.py --source /tmp/fc-head --cycles 200 --modes stream
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import gateway
from bench._gateway_load import Target
from bench._gateway_report import BASELINES
from bench.gateway_ab import interleave, paired

GOAL_MS = 2.0


@contextmanager
def targets_started(
    opts: argparse.Namespace, bench: gateway.Options
) -> Iterator[dict[str, Target]]:
    """Every target, started as the full bench starts them for its c=1 rounds
    (:func:`bench.gateway.targets_up`): the upstream and the database first, the servers on
    CPU 1."""
    with ExitStack() as stack:
        db = gateway.bench_database(bench.work_dir, bench.database_url)
        db_url, postmaster = stack.enter_context(db)
        up_url, up_pid = stack.enter_context(gateway.upstream(bench.latency))
        groups = {"loadgen": [os.getpid()], "upstream": [up_pid]}
        stage = gateway.Stage(db_url, postmaster, up_url, groups)
        entries = stack.enter_context(gateway.targets_up(bench, stage, bench.targets, "c1", []))
        targets = {entry.target.name: entry.target for entry in entries}
        if "litellm" not in targets:
            print(
                f"note: no LiteLLM venv at {opts.litellm_venv}; LiteLLM left out", file=sys.stderr
            )
        yield targets


def report(mode: str, cycles: int, turn: int, latencies: dict[str, list[float]]) -> None:
    """A Markdown table: each target's added p50 over its baseline, and against LiteLLM's."""
    shape = f"turns of {turn} interleaved" if turn > 1 else "requests interleaved"
    print(f"\n{mode}, c=1, {cycles} cycles, {shape} (ms)\n")
    print("| target | p50 | baseline | added p50 (95%) | ratio vs LiteLLM | <= 2 ms |")
    print("|---|---|---|---|---|---|")
    added: dict[str, float] = {}
    for name, samples in latencies.items():
        if name.startswith("direct"):
            continue
        baseline = BASELINES.get(name, "direct")
        median, low, high = paired(latencies[baseline], samples)
        added[name] = median
        anchor = added.get("litellm")
        ratio = f"{median / anchor:.2f}" if anchor else "-"
        met = "-" if name in ("floor", "litellm") else ("yes" if median <= GOAL_MS else "no")
        p50 = statistics.median(samples)
        print(
            f"| {name} | {p50:.2f} | {baseline} | {median:+.2f} ({low:+.2f} .. {high:+.2f})"
            f" | {ratio} | {met} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, help="run the gateway from this source tree")
    parser.add_argument("--modes", default="invoke,stream", help="comma-separated")
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument(
        "--turn", type=int, default=1, help="requests in a row per target (see above)"
    )
    parser.add_argument("--latency", type=float, default=0.05, help="the upstream's wait, s")
    parser.add_argument(
        "--database-url", help="use this PostgreSQL (a schema of its own), not an embedded one"
    )
    parser.add_argument(
        "--litellm-venv", type=Path, default=gateway.ROOT / ".venv-litellm", help="LiteLLM's venv"
    )
    opts = parser.parse_args(argv)
    given = ["--latency", str(opts.latency), "--litellm-venv", str(opts.litellm_venv)]
    given += ["--source", str(opts.source)] if opts.source else []
    given += ["--database-url", opts.database_url] if opts.database_url else []
    bench = gateway.parse(given)  # (before this process is pinned: it decides the pinning)
    if bench.pin:
        os.sched_setaffinity(0, gateway.LOADGEN_CPUS)  # the upstream and database inherit it
    with targets_started(opts, bench) as started:
        # LiteLLM first, so that the ratio's anchor is known when the gateway's rows print
        order = ["litellm", *(name for name in started if name != "litellm")]
        targets = {name: started[name] for name in order if name in started}
        for mode in opts.modes.split(","):
            latencies = asyncio.run(interleave(targets, mode, opts.cycles, turn=opts.turn))
            report(mode, opts.cycles, opts.turn, latencies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
