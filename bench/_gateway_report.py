"""The tables bench/gateway.py prints (Markdown, as they go into docs/benchmarks.md): the
figures per cell, what each adds over direct, the ratios against LiteLLM next to the issue's
targets, the load generator's ceiling, the soak and the profile's top entries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench._gateway_load import Run
from bench._gateway_soak import Soak

GATEWAYS = ("aigc", "v1")
BASELINES = {"aigc": "direct-aigc"}
"""A target's own baseline where its upstream request differs from ``direct``'s: /aigc adds
the default instruction's system prompt, which costs the upstream time of its own."""
LITELLM_SCALE = (
    "LiteLLM 1.106, one worker, as the issue measured it:"
    " +13 ms p50 at c=1, ~90 req/s, ~40 streams/s"
)


def _f(value: float, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _index(runs: Sequence[Run]) -> dict[tuple[str, str, int], Run]:
    return {(r.target, r.mode, r.concurrency): r for r in runs}


def _baseline(cells: dict[tuple[str, str, int], Run], run: Run) -> Run | None:
    """The direct run ``run``'s added figures are over: its own baseline if measured."""
    own = cells.get((BASELINES.get(run.target, "direct"), run.mode, run.concurrency))
    return own or cells.get(("direct", run.mode, run.concurrency))


def print_report(
    runs: Sequence[Run],
    soaks: Sequence[Soak],
    profile: dict[str, Any] | None,
    notes: Sequence[str],
    latency: float,
) -> None:
    cells = _index(runs)
    print(f"\n### Figures (upstream latency {latency * 1000:.0f} ms; milliseconds unless named)\n")
    print(
        "| target | mode | conc | req/s | p50 | p99 | +p50 | +p99 | TTFT p50 | +TTFT p50"
        " | server CPU ms/req | db CPU ms/req | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        added = _added(run, _baseline(cells, run))
        stream = run.mode == "stream"
        print(
            f"| {run.target} | {run.mode} | {run.concurrency} | {_f(run.rate, 1)}"
            f" | {_f(1000 * run.latency(0.5))} | {_f(1000 * run.latency(0.99))}"
            f" | {_f(added['p50'])} | {_f(added['p99'])}"
            f" | {_f(1000 * run.ttft(0.5)) if stream else '-'}"
            f" | {_f(added['ttft']) if stream else '-'}"
            f" | {_cpu(run, 'server')} | {_cpu(run, 'db')} | {len(run.errors)} |"
        )
    _ceiling(runs)
    _targets(cells, soaks)
    if soaks:
        _soak_table(soaks)
    if profile:
        _profile(profile)
    for note in notes:
        print(f"note: {note}")


def _cpu(run: Run, group: str) -> str:
    return _f(run.cpu_ms_per_request(group)) if group in run.cpu_seconds else "-"


def _added(run: Run, direct: Run | None) -> dict[str, float]:
    if direct is None or run.target.startswith("direct"):
        return {"p50": math.nan, "p99": math.nan, "ttft": math.nan}
    return {
        "p50": 1000 * (run.latency(0.5) - direct.latency(0.5)),
        "p99": 1000 * (run.latency(0.99) - direct.latency(0.99)),
        "ttft": 1000 * (run.ttft(0.5) - direct.ttft(0.5)),
    }


def _ceiling(runs: Sequence[Run]) -> None:
    """What the load generator can drive: its CPU per request against the bare upstream
    (it has one core to itself with the upstream and the database)."""
    direct = [r for r in runs if r.target == "direct"]
    if not direct:
        return
    print("\nLoad generator against the bare upstream (its ceiling):")
    for run in direct:
        if run.concurrency != max(r.concurrency for r in direct if r.mode == run.mode):
            continue
        own = run.cpu_ms_per_request("loadgen")
        upstream = run.cpu_ms_per_request("upstream")
        print(
            f"  {run.mode}: {run.rate:.0f} req/s at c={run.concurrency};"
            f" load generator {own:.3f} CPU ms/req (one core: ~{1000 / own:.0f} req/s),"
            f" upstream {upstream:.3f} CPU ms/req"
        )


def _targets(cells: dict[tuple[str, str, int], Run], soaks: Sequence[Soak]) -> None:
    gateways = sorted({t for t, _m, _c in cells if t in GATEWAYS})
    if not gateways:
        return
    top = max(c for _t, _m, c in cells)
    print("\n### Against the issue's targets and LiteLLM\n")
    print("| target | measured | goal | met | LiteLLM | ratio vs LiteLLM |")
    print("|---|---|---|---|---|---|")
    for gateway in gateways:
        for mode in ("invoke", "stream"):
            _row(cells, gateway, mode=mode, concurrency=1, quantile="p50", goal=2.0)
            _row(cells, gateway, mode=mode, concurrency=10, quantile="p99", goal=10.0)
            _throughput(cells, gateway, mode, top)
            _cpu_row(cells, gateway, mode, top)
    for soak in soaks:
        summary = soak.summary()
        print(
            f"| {soak.target} soak: {soak.streams} streams, errors | {summary['errors']} | 0"
            f" | {'yes' if not summary['errors'] else 'NO'} | - | - |"
        )
        first, last = summary["rss_plateau_first_mb"], summary["rss_plateau_last_mb"]
        print(
            f"| {soak.target} soak: RSS plateau first -> last fifth (MB)"
            f" | {_f(first, 1)} -> {_f(last, 1)}"
            f" | flat | {'yes' if soak.flat else 'NO'} | - | - |"
        )
    print(f"\n(scale: {LITELLM_SCALE})")


def _row(
    cells: dict[tuple[str, str, int], Run],
    gateway: str,
    *,
    mode: str,
    concurrency: int,
    quantile: str,
    goal: float,
) -> None:
    run = cells.get((gateway, mode, concurrency))
    baseline = _baseline(cells, run) if run is not None else None
    if run is None or baseline is None:
        return
    direct = cells.get(("direct", mode, concurrency))
    value = _added(run, baseline)[quantile]
    measured = _f(value)
    if baseline.target != "direct":  # the figure over plain direct, too
        measured += f" ({_f(_added(run, direct)[quantile])} over direct)"
    over = "" if baseline.target == "direct" else f" over {baseline.target}"
    label = f"{gateway} {mode}: +{quantile} at c={concurrency}{over} (ms)"
    litellm = cells.get(("litellm", mode, concurrency))
    other = _added(litellm, direct)[quantile] if litellm else math.nan
    ratio = value / other if other and not math.isnan(other) else math.nan
    met = "yes" if value <= goal else "NO"
    print(f"| {label} | {measured} | <= {goal:g} | {met} | {_f(other)} | {_f(ratio)} |")


def _throughput(cells: dict[tuple[str, str, int], Run], gateway: str, mode: str, top: int) -> None:
    run, litellm = cells.get((gateway, mode, top)), cells.get(("litellm", mode, top))
    if run is None:
        return
    other = litellm.rate if litellm else math.nan
    ratio = run.rate / other if other else math.nan
    met = "-" if math.isnan(ratio) else ("yes" if ratio >= 5 else "NO")
    print(
        f"| {gateway} {mode}: req/s at c={top} | {_f(run.rate, 1)} | >= 5x LiteLLM | {met}"
        f" | {_f(other, 1)} | {_f(ratio)} |"
    )


def _cpu_row(cells: dict[tuple[str, str, int], Run], gateway: str, mode: str, top: int) -> None:
    run, litellm = cells.get((gateway, mode, top)), cells.get(("litellm", mode, top))
    if run is None:
        return
    ours = run.cpu_ms_per_request("server") + (
        run.cpu_ms_per_request("db") if "db" in run.cpu_seconds else 0.0
    )
    other = litellm.cpu_ms_per_request("server") if litellm else math.nan
    ratio = ours / other if other and not math.isnan(other) else math.nan
    print(
        f"| {gateway} {mode}: server+db CPU ms/req at c={top} | {_f(ours)} | - | -"
        f" | {_f(other)} | {_f(ratio)} |"
    )


def _soak_table(soaks: Sequence[Soak]) -> None:
    print("\n### Soak\n")
    print(
        "| target | streams | seconds | completed | streams/s | errors | TTFT p50 | TTFT p99"
        " | RSS start | RSS peak | plateau first | plateau last | flat |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for soak in soaks:
        s = soak.summary()
        print(
            f"| {s['target']} | {s['streams']} | {s['seconds']:.0f} | {s['completed']}"
            f" | {_f(s['streams_per_s'], 1)} | {s['errors']} | {_f(s['ttft_p50_ms'])}"
            f" | {_f(s['ttft_p99_ms'])} | {_f(s['rss_start_mb'], 1)} | {_f(s['rss_peak_mb'], 1)}"
            f" | {_f(s['rss_plateau_first_mb'], 1)} | {_f(s['rss_plateau_last_mb'], 1)}"
            f" | {'yes' if s['flat'] else 'NO'} |"
        )
        if s["first_error"]:
            print(f"  first error: {s['first_error']}")


def _profile(profile: dict[str, Any]) -> None:
    print("\n### py-spy profile of the gateway under load\n")
    if "error" in profile:
        print(profile["error"])
        return
    print(
        f"{profile['samples']} busy samples ({profile['target']}, c={profile['concurrency']};"
        f" busy {100 * (profile['busy_share'] or 0):.0f}% of the time)"
    )
    for key, title in (
        ("own_by_package", "own time by package / module"),
        ("own", "own time by function"),
        ("inclusive_by_package", "on the stack, by package / module"),
        ("inclusive_ours", "on the stack, this project's functions"),
        ("thread_pool", "run in the thread pool (what each work item calls)"),
    ):
        print(f"\n{title}:\n")
        print("| % | entry |\n|---|---|")
        for name, share in profile[key]:
            print(f"| {share:.1f} | `{name}` |")
