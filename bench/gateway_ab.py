"""Two versions of the gateway side by side at concurrency 1, requests interleaved one by one.

``bench/gateway.py`` measures each target for seconds at a time (at c=1 in turns of 1.5 s);
on a shared machine its c=1 cells move by 0.1-0.5 ms between runs of the same code, more
than most changes. Here one client sends a request to each target in turn (``direct``,
``floor``, then the gateway started from ``--a`` and from ``--b``), shuffling the order
every cycle, so every target meets the machine in the same state, and the difference of
``b`` against ``a`` is taken cycle by cycle: its median, with a bootstrap 95% interval, is
the anchor comparison. Both gateways share one upstream, one database and one core (CPU 1;
the client, the upstream and the database on CPU 0), as in ``bench/gateway.py``. For /aigc
a ``direct-aigc`` target sends the upstream what /aigc sends it (the default instruction's
system prompt too), and the gateways' added figures are over that.

Absolute figures run higher than the bench's: a server idles through the other targets'
requests, so the first half of its request runs cold too. Compare ``a`` with ``b``. With
``--turn N`` each target gets N requests in a row and all but the first are timed, as one
client's requests at c=1 in ``bench/gateway.py`` follow each other.

    git worktree add /tmp/before <commit>   # or: git archive <commit> | tar -x -C /tmp/before
    .venv/bin/python bench/gateway_ab.py --a /tmp/before --b . --door v1 --mode invoke
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import gateway
from bench._gateway_load import Target, _one
from bench._gateway_report import BASELINES
from bench._gateway_servers import fengchao_server, floor_server
from bench._gateway_upstream import API_KEY

WARMUP_CYCLES = 30


async def interleave(
    targets: dict[str, Target], mode: str, cycles: int, *, turn: int = 1
) -> dict[str, list[float]]:
    """Each target's latencies (ms), one turn per target per cycle, in shuffled order.
    ``turn``: requests in a row per target, one client's back-to-back requests as at c=1
    in ``bench/gateway.py`` (each meets what the one before left running, such as its
    bookkeeping after the answer); all but a turn's first are timed, the first having run
    on a server that idled through the other targets' turns. A turn of 1 times every
    request, each of them such a first."""
    sessions = {name: aiohttp.ClientSession() for name in targets}
    headers = {
        name: {"content-type": "application/json", **target.headers()}
        for name, target in targets.items()
    }
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    order = list(targets)
    rng = random.Random(7)  # noqa: S311 - an order, not a secret
    try:
        for cycle in range(WARMUP_CYCLES + cycles):
            rng.shuffle(order)
            for name in order:
                for index in range(turn):
                    sample = await _one(sessions[name], targets[name], mode, headers[name])
                    if cycle >= WARMUP_CYCLES and (index > 0 or turn == 1):
                        latencies[name].append(sample.total * 1000)
    finally:
        for session in sessions.values():
            await session.close()
    return latencies


def reference_targets(
    up_url: str, work: Path, servers: ExitStack, *, aigc: bool
) -> dict[str, Target]:
    """``direct``, ``floor`` (the do-nothing proxy, started on CPU 1) and, with ``aigc``,
    ``direct-aigc`` (the upstream called with what /aigc sends it: /aigc's baseline)."""
    floor = floor_server(up_url, f"Bearer {API_KEY}", work / "floor.log", gateway.SERVER_CPUS)
    targets = {
        "direct": gateway.openai_target("direct", up_url, API_KEY),
        "floor": gateway.openai_target("floor", servers.enter_context(floor).base_url, "ignored"),
    }
    if aigc:
        targets["direct-aigc"] = gateway.direct_aigc_target(up_url)
    return targets


def gateway_from(
    source: Path | None, work_dir: Path, db_url: str, up_url: str, servers: ExitStack
) -> list[Target]:
    """``fengchao serve`` from ``source`` (None: the installed package) on CPU 1, its log
    beside ``work_dir``: its /aigc and /v1 targets."""
    settings = SimpleNamespace(work_dir=work_dir, relay_each_event=False, source=source)
    env = gateway.gateway_env(settings, db_url, up_url)  # type: ignore[arg-type]
    token = gateway.gateway_token(env)
    log = work_dir.with_name(f"{work_dir.name}.log")
    server = servers.enter_context(fengchao_server(env, log, gateway.SERVER_CPUS))
    return gateway.gateway_targets(server, token, ["aigc", "v1"])


def paired(before: list[float], after: list[float]) -> tuple[float, float, float]:
    """The median of ``after - before`` cycle by cycle, and its bootstrap 95% interval."""
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    rng = random.Random(11)  # noqa: S311 - resampling, not a secret
    medians = sorted(statistics.median(rng.choices(diffs, k=len(diffs))) for _ in range(1000))
    return statistics.median(diffs), medians[25], medians[974]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="source tree of the anchor")
    parser.add_argument("--b", type=Path, required=True, help="source tree to compare")
    parser.add_argument("--door", choices=["v1", "aigc"], default="v1")
    parser.add_argument("--mode", choices=["invoke", "stream"], default="invoke")
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.05, help="the upstream's wait, s")
    parser.add_argument(
        "--turn", type=int, default=1, help="requests in a row per target (see interleave)"
    )
    opts = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fc-bench-ab-"))
    os.sched_setaffinity(0, gateway.LOADGEN_CPUS)  # the upstream and database inherit it
    with (
        gateway.bench_database(work / "db", None) as (db_url, _),
        gateway.upstream(opts.latency) as (up_url, _),
        ExitStack() as servers,
    ):
        targets = reference_targets(up_url, work, servers, aigc=opts.door == "aigc")
        for name, source in (("a", opts.a), ("b", opts.b)):
            doors = gateway_from(source.resolve(), work / name, db_url, up_url, servers)
            (target,) = [door for door in doors if door.name == opts.door]
            targets[name] = Target(name, target.url, target.bodies, target.headers)
        latencies = asyncio.run(interleave(targets, opts.mode, opts.cycles, turn=opts.turn))
    direct = statistics.median(latencies["direct"])
    shape = f"turns of {opts.turn}" if opts.turn > 1 else "one at a time"
    print(
        f"/{opts.door} {opts.mode}, c=1, {opts.cycles} cycles ({shape}); direct p50 {direct:.2f} ms"
    )
    print(f"  floor: +p50 {statistics.median(latencies['floor']) - direct:.2f} ms")
    baseline = BASELINES.get(opts.door, "direct")
    if baseline != "direct":
        own = statistics.median(latencies[baseline])
        print(f"  {baseline}: +p50 {own - direct:.2f} ms (the upstream on /aigc's prompt)")
        direct = own
    for name in ("a", "b"):
        added = statistics.median(latencies[name]) - direct
        print(f"  {name}: +p50 {added:.2f} ms over {baseline}")
    median, low, high = paired(latencies["a"], latencies["b"])
    print(f"  b - a, paired median: {median:+.3f} ms (95% {low:+.3f} .. {high:+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
