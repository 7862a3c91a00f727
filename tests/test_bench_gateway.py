"""bench/gateway.py does not rot: its ``--quick`` run against the bare upstream and /aigc.

The bench runs as a script (its own processes: the fake upstream, ``fengchao serve``), on
the session's PostgreSQL; its JSON output must hold a full, error-free set of cells whose
figures are plausible for what each one measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gateway.py"

pytest.importorskip("aiohttp", reason="the bench's load generator needs aiohttp")


def run_bench(script: Path, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The bench script run as a user would, in a bare environment; it must succeed."""
    done = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_quick_run_measures_direct_and_aigc(postgres_url: str, tmp_path: Path) -> None:
    if not Path(sys.executable).with_name("fengchao").exists():
        pytest.skip("the fengchao command is not installed in this venv")
    figures = tmp_path / "figures.json"
    done = run_bench(
        SCRIPT, ["--quick", "--database-url", postgres_url, "--json", str(figures)], tmp_path
    )

    runs = json.loads(figures.read_text())["runs"]
    cells = {(r["target"], r["mode"], r["concurrency"]): r for r in runs}
    assert set(cells) == {
        (target, mode, concurrency)
        for target in ("direct", "direct-aigc", "aigc")
        for mode in ("invoke", "stream")
        for concurrency in (1, 10)
    }
    latency_ms = 50  # the upstream's default latency: nothing can answer sooner
    for (target, mode, _concurrency), run in cells.items():
        assert run["errors"] == 0, run["first_error"]
        assert run["requests"] > 0
        assert run["p50_ms"] >= latency_ms
        assert run["p99_ms"] >= run["p50_ms"]
        if mode == "stream":
            assert latency_ms <= run["ttft_p50_ms"] <= run["p50_ms"]
        if target == "aigc":
            assert run["cpu_ms"]["server"] > 0  # the gateway's own process did the work
    # ten clients get more done per second than one
    for target in ("direct", "aigc"):
        assert cells[(target, "invoke", 10)]["rate"] > cells[(target, "invoke", 1)]["rate"]
    assert "| aigc | stream | 10 |" in done.stdout
    assert "aigc invoke: +p50 at c=1 over direct-aigc (ms)" in done.stdout  # its own baseline
    assert "Load generator against the bare upstream" in done.stdout
    assert "c=1: every target up, in 4 rounds of turns" in done.stdout


def test_a_c1_cell_pools_its_turns() -> None:
    """A c=1 cell measured in turns holds every turn's requests, its measured time and CPU
    summed, so its rate and CPU per request are those of the whole cell."""
    from bench._gateway_load import Run, Sample
    from bench._gateway_rounds import pooled

    turns = [
        Run("v1", "stream", 1, 1.5, [Sample(0.052, 0.051, True)] * 30, [], {"server": 0.06}),
        Run("v1", "stream", 1, 1.4, [Sample(0.054, 0.053, True)] * 26, ["x"], {"server": 0.05}),
    ]
    cell = pooled(turns)
    assert (cell.target, cell.mode, cell.concurrency) == ("v1", "stream", 1)
    assert len(cell.samples) == 56 and cell.errors == ["x"]
    assert cell.rate == pytest.approx(56 / 2.9)
    assert cell.cpu_ms_per_request("server") == pytest.approx(1000 * 0.11 / 56)
    assert turns[0].samples and len(turns[0].samples) == 30  # the turns are left as they were


def test_the_ab_comparison_is_paired_cycle_by_cycle() -> None:
    """bench/gateway_ab.py's figure: the median of b - a taken cycle by cycle, so a drift of
    the machine that moves both alike cancels out; the interval brackets it."""
    sys.path.insert(0, str(ROOT))
    from bench.gateway_ab import paired

    drifting = [50.0 + cycle for cycle in range(200)]  # the machine slows down as it goes
    median, low, high = paired(drifting, [value - 0.3 for value in drifting])
    assert median == pytest.approx(-0.3)
    assert low <= median <= high
    median, low, high = paired([50.0, 51.0, 52.0, 53.0], [51.0, 51.0, 54.0, 53.0])
    assert median == pytest.approx(0.5)
    assert low >= 0.0 and high <= 2.0


def test_http_client_bench_compares_aiohttp_with_a_raw_stream(tmp_path: Path) -> None:
    """bench/http_client_cold.py runs, and prints a row per client with plausible figures."""
    script = ROOT / "bench" / "http_client_cold.py"
    done = run_bench(script, ["--requests", "5", "--gap-ms", "1"], tmp_path)
    rows = {
        line.split("|")[1].strip(): [float(cell) for cell in line.split("|")[2:6]]
        for line in done.stdout.splitlines()
        if line.startswith(("| raw ", "| aiohttp "))
    }
    assert set(rows) == {"raw", "aiohttp"}
    assert rows["raw"][1] == 1.0  # the anchor's own ratio
    for cpu_ms, _ratio, wall_ms, _wall_ratio in rows.values():
        assert 0 < cpu_ms <= wall_ms  # one thread's CPU cannot exceed the time it took


@pytest.mark.parametrize("turn", [1, 3])
def test_the_c1_bench_interleaves_every_target_against_its_baseline(
    postgres_url: str, tmp_path: Path, turn: int
) -> None:
    """bench/gateway_c1.py starts every target at once and prints each one's added p50 over
    its own baseline (/aigc's is direct-aigc), one request per target per cycle or turns of
    back-to-back requests; no LiteLLM venv here, so it is left out."""
    if not Path(sys.executable).with_name("fengchao").exists():
        pytest.skip("the fengchao command is not installed in this venv")
    script = ROOT / "bench" / "gateway_c1.py"
    args = ["--modes", "invoke", "--cycles", "5", "--turn", str(turn)]
    args += ["--database-url", postgres_url, "--litellm-venv", str(tmp_path / "no-litellm")]
    done = run_bench(script, args, tmp_path)
    shape = "requests interleaved" if turn == 1 else f"turns of {turn} interleaved"
    assert f"invoke, c=1, 5 cycles, {shape} (ms)" in done.stdout
    rows = {
        cells[1].strip(): cells[2:]
        for line in done.stdout.splitlines()
        if (cells := line.split("|"))[0] == "" and line.startswith("| ") and "---" not in line
    }
    rows.pop("target")
    assert set(rows) == {"floor", "aigc", "v1"}
    assert rows["aigc"][1].strip() == "direct-aigc" and rows["v1"][1].strip() == "direct"
    for p50, _baseline, added, *_ in rows.values():
        assert float(p50) >= 50  # the upstream's wait: nothing answers sooner
        # "+x (+lo .. +hi)": the median and its bootstrap interval, which holds it (with five
        # cycles on a machine running other tests the median itself may fall either side of 0)
        median, low, _, high = added.replace("(", "").replace(")", "").split()
        assert float(low) <= float(median) <= float(high)
    assert "LiteLLM left out" in done.stderr
