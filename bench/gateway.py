"""The gateway's own cost per request, side by side with the LiteLLM proxy (issue 8).

One fake OpenAI upstream on loopback (``bench/_gateway_upstream.py``: a fixed latency before
each answer, 20 tokens, streamed as 20 content chunks) is called, in turn, by:

- **direct**: the load generator itself (the baseline, and the load generator's ceiling);
- **direct-aigc**: the same, sending what /aigc sends the upstream for the bench's question
  (the default instruction's system prompt, then the question): /aigc's baseline, so that
  the upstream's own work on the longer prompt is not counted as the gateway's;
- **floor**: a do-nothing Python proxy (``bench/_gateway_floor.py``: raw ASGI under the same
  uvicorn, aiohttp to the upstream), what the extra hop and the HTTP stack cost by themselves;
- **aigc**: ``fengchao serve`` (one worker), ``POST /aigc/chat/`` with the SDK's body;
- **v1**: the same server, ``POST /v1/chat/completions``;
- **litellm**: the LiteLLM proxy (``litellm[proxy]``, one worker, its own venv), with its
  cost tracking callbacks but no database: its spend tracking writes through Prisma, whose
  query engine is a download this machine cannot make (see docs/benchmarks.md).

For invoke and stream, at each concurrency (closed loop, keep-alive), it reports requests/s,
p50/p99 latency and time to first token, both as measured and as added over ``direct``, and
the CPU milliseconds per request of the server's process tree and of the database (from
/proc, via psutil, read before and after each run). The server under test is pinned to CPU 1,
the load generator, the upstream and the database to CPU 0 (``--no-pin`` to leave them be).
``--soak`` holds 500 streams open for a minute against the gateway (errors, RSS samples);
``--profile`` records the gateway under load with py-spy and prints the top entries.

    .venv/bin/python bench/gateway.py                  # the full table (a few minutes)
    .venv/bin/python bench/gateway.py --quick          # a smoke run: direct and /aigc only
    .venv/bin/python bench/gateway.py --soak --profile
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._gateway_load import CpuWatch, Run, Target, measure, summary  # noqa: E402
from bench._gateway_profile import profile_top  # noqa: E402
from bench._gateway_report import print_report  # noqa: E402
from bench._gateway_rounds import Entry, measure_in_rounds  # noqa: E402
from bench._gateway_servers import (  # noqa: E402
    FENGCHAO,
    LITELLM_MASTER_KEY,
    ServerProcess,
    fengchao_server,
    floor_server,
    litellm_config,
    litellm_server,
)
from bench._gateway_soak import Soak, soak  # noqa: E402
from bench._gateway_upstream import API_KEY, REPLY_CHUNKS, upstream_factory  # noqa: E402
from fengchao_chains.db.embedded import EmbeddedPostgres  # noqa: E402
from fengchao_chains.gateway.auth import issue_token  # noqa: E402
from fengchao_chains.testing.serve import serve_in_process  # noqa: E402

MODEL = "gpt-3.5-turbo"
QUESTION = "Why do connection pools make requests faster?"
ALL_TARGETS = ("direct", "floor", "aigc", "v1", "litellm")
REPORT_ORDER = ("direct", "direct-aigc", "floor", "aigc", "v1", "litellm")
C1_ROUNDS = 4
"""Rounds of turns the c=1 cells are measured in (``bench/_gateway_rounds.py``)."""
LOADGEN_CPUS = {0}
SERVER_CPUS = {1}


STREAM_OPTIONS = {"include_usage": True}
"""What every target's streams ask for: the usage chunk. The gateway asks the upstream for
it whatever its client asks (usage accounting needs the vendor's counts), and the bench's
fake upstream counts the tokens for it on the bench's CPUs, 0.075 ms per stream; asked of
every target, that work is in every target's figures, the baseline's too."""


def openai_bodies(
    model: str = MODEL, messages: list[dict[str, Any]] | None = None
) -> dict[str, bytes]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages or [{"role": "user", "content": QUESTION}],
        "max_tokens": 256,
    }
    stream = {**body, "stream": True, "stream_options": STREAM_OPTIONS}
    return {"invoke": json.dumps(body).encode(), "stream": json.dumps(stream).encode()}


def aigc_upstream_messages() -> list[dict[str, Any]]:
    """The messages /aigc sends the upstream for :func:`aigc_bodies`: the packaged default
    instruction rendered with the question (a test checks them against the gateway's)."""
    from langchain_core.messages import convert_to_openai_messages

    from fengchao_chains.prompts.library import PromptLibrary

    return convert_to_openai_messages(PromptLibrary().messages(QUESTION))


def direct_aigc_target(up_url: str) -> Target:
    """``direct-aigc``, /aigc's baseline: the upstream called with what /aigc sends it."""
    return openai_target("direct-aigc", up_url, API_KEY, messages=aigc_upstream_messages())


def aigc_bodies() -> dict[str, bytes]:
    """The 25 keys the SDK always sends (protocol doc 8.2), with its defaults."""
    body: dict[str, Any] = {
        "model": MODEL, "query": QUESTION, "request_id": None, "system": None, "prompt": None,
        "prompt_fill": {}, "is_sensitive": True, "sensitive_replace": False, "task_id": None,
        "history": [], "response_format": "text", "do_sample": True, "temperature": 0.8,
        "top_p": 0.75, "max_tokens": 256, "knowledge": None, "top_k": 5, "threshold": 500,
        "mode": "invoke", "files": None, "image": None, "video": None, "agg_models": None,
        "search_param": None,
    }  # fmt: skip
    return {mode: json.dumps({**body, "mode": mode}).encode() for mode in ("invoke", "stream")}


@dataclass
class Options:
    targets: list[str]
    modes: list[str]
    concurrency: list[int]
    duration: float
    warmup: float
    latency: float
    pin: bool
    litellm_venv: Path
    soak: bool
    soak_streams: int
    soak_seconds: float
    soak_chunk_interval: float
    relay_each_event: bool
    profile: bool
    profile_seconds: float
    source: Path | None
    database_url: str | None
    json_path: Path | None
    keep: bool
    c1_rounds: int = C1_ROUNDS
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fc-bench-")))

    @property
    def loadgen_cpus(self) -> set[int] | None:
        return LOADGEN_CPUS if self.pin else None

    @property
    def server_cpus(self) -> set[int] | None:
        return SERVER_CPUS if self.pin else None


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)
    soaks: list[Soak] = field(default_factory=list)
    profile: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------ the environment


@contextmanager
def bench_database(work_dir: Path, url: str | None) -> Iterator[tuple[str, int | None]]:
    """The PostgreSQL at ``url``, else an embedded one of its own; yields its URL and its
    postmaster's pid (None for a server not started here: its CPU is not measured)."""
    if url is not None:
        yield url, None
        return
    server = EmbeddedPostgres(work_dir / "db")
    url = server.start()
    try:
        postmaster = int((server.pgdata / "postmaster.pid").read_text().split()[0])
        yield url, postmaster
    finally:
        server.stop()


@contextmanager
def upstream(latency: float, chunk_interval: float = 0.0) -> Iterator[tuple[str, int]]:
    """The fake upstream in a child process (inheriting this process's CPU pinning);
    yields its URL and pid."""
    before = {p.pid for p in psutil.Process().children()}
    with serve_in_process(upstream_factory(latency, chunk_interval)) as url:
        (pid,) = {p.pid for p in psutil.Process().children()} - before
        yield url, pid


def gateway_env(opts: Options, database_url: str, upstream_url: str) -> dict[str, str]:
    """``fengchao serve``'s settings: the bench database in a schema of its own, the OpenAI
    models on the upstream, no sample news, this machine's defaults for everything else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FENGCHAO_", "OPENAI_"))}
    return (
        env
        | {
            "FENGCHAO_DATABASE_URL": database_url,
            "FENGCHAO_DATABASE_SCHEMA": f"bench_{uuid.uuid4().hex[:10]}",
            "FENGCHAO_DATA_DIR": str(opts.work_dir / "data"),
            "FENGCHAO_EMBEDDING_MODEL": "use-multilingual-v3",
            "FENGCHAO_LOAD_SAMPLE_NEWS": "false",
            "XDG_CONFIG_HOME": str(opts.work_dir / "xdg-config"),
            "OPENAI_BASE_URL": f"{upstream_url}/v1",
            "OPENAI_API_KEY": API_KEY,
        }
        | ({"FENGCHAO_STREAM_COALESCING": "false"} if opts.relay_each_event else {})
        | ({"PYTHONPATH": str(opts.source)} if opts.source else {})
    )


def gateway_token(env: dict[str, str]) -> str:
    """A key made with ``fengchao keys create`` and a token signed with it (1 hour)."""
    import subprocess

    done = subprocess.run(
        [FENGCHAO, "keys", "create", "--name", "bench", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"fengchao keys create failed:\n{done.stderr}")
    key = json.loads(done.stdout)
    return issue_token(key["api_key"], key["secret_key"], 3600)


def gateway_targets(server: ServerProcess, token: str, wanted: list[str]) -> list[Target]:
    targets = []
    if "aigc" in wanted:
        targets.append(
            Target(
                "aigc",
                f"{server.base_url}/aigc/chat/",
                aigc_bodies(),
                _fixed({"authorization": token}),
            )
        )
    if "v1" in wanted:
        targets.append(openai_target("v1", server.base_url, token))
    return targets


def openai_target(
    name: str, base_url: str, api_key: str, messages: list[dict[str, Any]] | None = None
) -> Target:
    """Chat completions at ``base_url`` in OpenAI's protocol, with ``api_key`` as Bearer
    (``messages``: the bench's question by default)."""
    bearer = _fixed({"authorization": f"Bearer {api_key}"})
    body = openai_bodies(messages=messages)
    return Target(name, f"{base_url}/v1/chat/completions", body, bearer)


def _fixed(headers: dict[str, str]) -> Any:
    return lambda: dict(headers)


# ------------------------------------------------------------------------ running


def run_cells(opts: Options, entry: Entry, results: Results, levels: list[int]) -> None:
    """The entry's cells at ``levels``, one after another."""
    for mode in opts.modes:
        for concurrency in levels:
            run = asyncio.run(
                measure(
                    entry.target,
                    mode,
                    concurrency=concurrency,
                    duration=opts.duration,
                    warmup=opts.warmup,
                    watch=entry.watch,
                )
            )
            record(results, run, entry.groups)


def record(results: Results, run: Run, groups: list[str]) -> None:
    """Keep a cell's figures, and print them as it ends."""
    results.runs.append(run)
    figures = summary(run, groups)
    errors = f", {figures['errors']} errors ({figures['first_error']})" if run.errors else ""
    print(
        f"  {run.target:11} {run.mode:6} c={run.concurrency:<4} {figures['rate']:8.1f} req/s"
        f"  p50 {figures['p50_ms']:7.2f} ms  p99 {figures['p99_ms']:7.2f} ms"
        f"  server {figures['cpu_ms'].get('server', math.nan):6.2f} cpu-ms/req{errors}",
        flush=True,
    )


@dataclass
class Stage:
    """What the targets run on: the database and the upstream, and their processes."""

    db_url: str
    postmaster: int | None
    up_url: str
    base_groups: dict[str, list[int]]


@contextmanager
def targets_up(
    opts: Options, stage: Stage, names: list[str], phase: str, notes: list[str]
) -> Iterator[list[Entry]]:
    """The targets named (``direct-aigc`` comes with ``direct`` when /aigc is measured),
    their servers started together (logs named after ``phase``), in the report's order:
    yields one entry per target."""
    base = stage.base_groups
    entries = []
    with ExitStack() as servers:
        if "direct" in names:
            direct = openai_target("direct", stage.up_url, API_KEY)
            entries.append(Entry(direct, CpuWatch(base), list(base)))
            if "aigc" in opts.targets:
                like_aigc = direct_aigc_target(stage.up_url)
                entries.append(Entry(like_aigc, CpuWatch(base), list(base)))
        if "floor" in names:
            log = opts.work_dir / f"floor-{phase}.log"
            auth = f"Bearer {API_KEY}"
            server = servers.enter_context(floor_server(stage.up_url, auth, log, opts.server_cpus))
            floor = openai_target("floor", server.base_url, "ignored")  # it sends its own
            groups = {"server": [server.pid], **base}
            entries.append(Entry(floor, CpuWatch(groups), list(groups)))
        if {"aigc", "v1"} & set(names):
            env = gateway_env(opts, stage.db_url, stage.up_url)
            token = gateway_token(env)
            log = opts.work_dir / f"fengchao-{phase}.log"
            server = servers.enter_context(fengchao_server(env, log, opts.server_cpus))
            db_group = {"db": [stage.postmaster]} if stage.postmaster is not None else {}
            groups = {"server": [server.pid], **db_group, **base}
            for target in gateway_targets(server, token, names):
                entries.append(Entry(target, CpuWatch(groups), list(groups), server))
        if "litellm" in names:
            if not (opts.litellm_venv / "bin" / "litellm").exists():
                note = f"litellm: no venv at {opts.litellm_venv}; skipped"
                if note not in notes:
                    notes.append(note)
            else:
                config = litellm_config(stage.up_url, MODEL, API_KEY)
                litellm = litellm_server(
                    opts.litellm_venv, config, opts.work_dir / f"litellm-{phase}", opts.server_cpus
                )
                server = servers.enter_context(litellm)
                groups = {"server": [server.pid], **base}
                target = openai_target("litellm", server.base_url, LITELLM_MASTER_KEY)
                entries.append(Entry(target, CpuWatch(groups), list(groups)))
        yield entries


def bench(opts: Options) -> Results:
    results = Results()
    if opts.pin:
        os.sched_setaffinity(0, LOADGEN_CPUS)
    with ExitStack() as stack:
        db_url, postmaster = stack.enter_context(bench_database(opts.work_dir, opts.database_url))
        up_url, up_pid = stack.enter_context(upstream(opts.latency))
        stage = Stage(db_url, postmaster, up_url, {"loadgen": [os.getpid()], "upstream": [up_pid]})
        print(f"upstream {up_url} (latency {opts.latency * 1000:.0f} ms, {REPLY_CHUNKS} chunks)")
        results.notes.append(_load_note("at the start"))
        if opts.relay_each_event:
            results.notes.append("the gateway relayed one delta per upstream event")

        levels = list(opts.concurrency)
        if opts.c1_rounds and 1 in levels:
            levels.remove(1)
            print(f"c=1: every target up, in {opts.c1_rounds} rounds of turns", flush=True)
            with targets_up(opts, stage, opts.targets, "c1", results.notes) as entries:
                for mode in opts.modes:
                    cells = measure_in_rounds(
                        entries,
                        mode,
                        rounds=opts.c1_rounds,
                        duration=opts.duration,
                        warmup=opts.warmup,
                    )
                    for entry, cell in zip(entries, cells, strict=True):
                        record(results, cell, entry.groups)

        for group in (["direct"], ["floor"], ["aigc", "v1"], ["litellm"]):
            names = [name for name in group if name in opts.targets]
            if not names or not levels:
                continue
            with targets_up(opts, stage, names, "cells", results.notes) as entries:
                for entry in entries:
                    run_cells(opts, entry, results, levels)
                gateways = [entry for entry in entries if entry.server is not None]
                if opts.profile and gateways:
                    first = gateways[0]
                    assert first.server is not None
                    results.profile = profile_gateway(
                        opts, first.server, [e.target for e in gateways], first.watch
                    )

        if opts.soak and {"aigc", "v1"} & set(opts.targets):
            results.soaks.extend(soak_gateway(opts, db_url))
    results.notes.append(_load_note("at the end"))
    results.runs.sort(
        key=lambda r: (REPORT_ORDER.index(r.target), opts.modes.index(r.mode), r.concurrency)
    )
    return results


def _load_note(when: str) -> str:
    """The machine's load average: other work on the two cores skews every figure."""
    one, five, _fifteen = os.getloadavg()
    return f"load average {when}: {one:.2f} (1 min), {five:.2f} (5 min)"


def profile_gateway(
    opts: Options, server: ServerProcess, targets: list[Target], watch: CpuWatch
) -> dict[str, Any]:
    """py-spy on the server while the first gateway target serves invoke and stream at the
    highest concurrency (half the time each)."""
    target = targets[0]
    concurrency = max(opts.concurrency)
    print(f"profiling {target.name} with py-spy for {opts.profile_seconds:.0f} s ...", flush=True)

    async def load() -> None:
        for mode in ("invoke", "stream"):
            await measure(
                target,
                mode,
                concurrency=concurrency,
                duration=opts.profile_seconds / 2,
                warmup=0.5,
                watch=watch,
            )

    return profile_top(
        server.pid, opts.profile_seconds, opts.work_dir / "py-spy.txt", lambda: asyncio.run(load())
    ) | {"target": target.name, "concurrency": concurrency}


def soak_gateway(opts: Options, db_url: str) -> list[Soak]:
    """A server of its own over an upstream that spaces its chunks out, so each stream stays
    open (``soak_chunk_interval`` x 21 seconds) and ``soak_streams`` are open at all times."""
    soaks = []
    with upstream(opts.latency, opts.soak_chunk_interval) as (up_url, _pid):
        env = gateway_env(opts, db_url, up_url)
        token = gateway_token(env)
        log = opts.work_dir / "fengchao-soak.log"
        with fengchao_server(env, log, opts.server_cpus) as server:
            for target in gateway_targets(server, token, opts.targets):
                print(
                    f"soak: {opts.soak_streams} streams on {target.name} for"
                    f" {opts.soak_seconds:.0f} s ...",
                    flush=True,
                )
                soaks.append(
                    asyncio.run(soak(target, server, opts.soak_streams, opts.soak_seconds))
                )
    return soaks


# ------------------------------------------------------------------------ command line


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated")
    parser.add_argument("--modes", default="invoke,stream", help="comma-separated")
    parser.add_argument("--concurrency", default="1,10,100", help="comma-separated levels")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per cell not counted")
    parser.add_argument("--latency", type=float, default=0.05, help="upstream latency, seconds")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--c1-rounds",
        type=int,
        default=C1_ROUNDS,
        help="measure the c=1 cells with every target up, in this many rounds of turns"
        " (0: a cell at a time, as the other levels)",
    )
    parser.add_argument(
        "--litellm-venv", type=Path, default=ROOT / ".venv-litellm", help="LiteLLM's own venv"
    )
    parser.add_argument("--soak", action="store_true", help="hold streams open on the gateway")
    parser.add_argument("--soak-streams", type=int, default=500)
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    parser.add_argument(
        "--soak-chunk-interval",
        type=float,
        default=0.5,
        help="seconds between the upstream's chunks in the soak (a stream lasts ~21x that)",
    )
    parser.add_argument(
        "--relay-each-event",
        action="store_true",
        help="run the gateway with FENGCHAO_STREAM_COALESCING=false: one delta per upstream"
        " event even when the upstream's events arrive together",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway under load")
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="run the gateway from this source tree (e.g. `git archive HEAD` unpacked)"
        " instead of the installed package",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="use this PostgreSQL (a schema of its own) instead of starting an embedded one;"
        " its CPU is then not measured",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: direct and aigc, concurrency 1 and 10, 1 s per cell",
    )
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    concurrency = [int(c) for c in args.concurrency.split(",") if c]
    duration, warmup = args.duration, args.warmup
    if args.quick:
        targets, concurrency, duration, warmup = ["direct", "aigc"], [1, 10], 1.0, 0.3
    unknown = set(targets) - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return Options(
        targets=targets,
        modes=[m for m in args.modes.split(",") if m],
        concurrency=concurrency,
        duration=duration,
        warmup=warmup,
        latency=args.latency,
        pin=not args.no_pin and len(os.sched_getaffinity(0)) >= 2,
        litellm_venv=args.litellm_venv,
        soak=args.soak,
        soak_streams=args.soak_streams,
        soak_seconds=args.soak_seconds,
        soak_chunk_interval=args.soak_chunk_interval,
        relay_each_event=args.relay_each_event,
        profile=args.profile,
        profile_seconds=args.profile_seconds,
        source=args.source.resolve() if args.source else None,
        database_url=args.database_url,
        json_path=args.json,
        keep=args.keep,
        c1_rounds=max(0, args.c1_rounds),
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    started = time.monotonic()
    try:
        results = bench(opts)
    finally:
        if not opts.keep:
            shutil.rmtree(opts.work_dir, ignore_errors=True)
    print_report(results.runs, results.soaks, results.profile, results.notes, opts.latency)
    if opts.json_path is not None:
        opts.json_path.write_text(
            json.dumps(
                {
                    "runs": [summary(r, list(r.cpu_seconds)) for r in results.runs],
                    "soaks": [s.summary() for s in results.soaks],
                    "profile": results.profile,
                    "notes": results.notes,
                },
                indent=2,
            )
        )
    print(f"done in {time.monotonic() - started:.0f} s")
    failed = any(r.errors for r in results.runs) or any(s.errors for s in results.soaks)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
