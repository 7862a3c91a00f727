"""py-spy on the gateway while it serves load, boiled down to its top entries.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``); from them
come the functions with the most samples on top of the stack (own time), the packages that
own time falls in, and the functions of this project with the most samples anywhere on the
stack (inclusive time). Idle samples (the event loop waiting in epoll) are left out by
py-spy, so shares are of the time the process was busy.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

RATE = 250
TOP = 15
ROOTS = frozenset(
    {"fengchao", "typer", "click", "fengchao_chains.cli", "uvicorn", "stdlib:asyncio"}
    | {"stdlib:threading", "stdlib:concurrent", "stdlib:runpy", "stdlib:contextlib"}
)
"""Packages on (nearly) every stack: the command line, the server loop, the event loop and
the thread pool's workers; left out of the "on the stack" lists, where they say nothing."""
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_top(pid: int, seconds: float, out: Path, load: Callable[[], None]) -> dict[str, Any]:
    """Record ``pid`` for ``seconds`` while ``load()`` runs; the top entries, or why not."""
    binary = py_spy()
    if binary is None:
        return {"error": "py-spy is not installed (pip install py-spy: the bench extra)"}
    command = [
        binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(RATE), "--format", "raw", "--full-filenames", "--nonblocking",
        "--output", str(out),
    ]  # fmt: skip
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    load()
    _, stderr = recorder.communicate(timeout=seconds + 60)
    if recorder.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed: {stderr.decode(errors='replace').strip()[-300:]}"}
    return top_entries(out.read_text(), seconds)


def top_entries(collapsed: str, seconds: float) -> dict[str, Any]:
    own: Counter[str] = Counter()
    own_package: Counter[str] = Counter()
    inclusive_ours: Counter[str] = Counter()
    inclusive_package: Counter[str] = Counter()
    in_threads: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for text in stack_text.split(";") if (frame := _frame(text))]
        if not frames:
            continue
        total += count
        func, path = frames[-1]
        own[f"{func} ({_short(path)})"] += count
        own_package[package_of(path)] += count
        for name in {f"{fn} ({_short(p)})" for fn, p in frames if _ours(p)}:
            inclusive_ours[name] += count
        for package in {package_of(p) for _fn, p in frames} - ROOTS:
            inclusive_package[package] += count
        if (called := _thread_pool_call(frames)) is not None:
            in_threads[called] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, 100 * n / total) for name, n in counter.most_common(TOP)] if total else []

    return {
        "samples": total,
        "busy_share": total / (RATE * seconds) if seconds else None,
        "own": shares(own),
        "own_by_package": shares(own_package),
        "inclusive_ours": shares(inclusive_ours),
        "inclusive_by_package": shares(inclusive_package),
        "thread_pool": shares(in_threads),
    }


def _thread_pool_call(frames: list[tuple[str, str]]) -> str | None:
    """What a sample in a thread pool worker runs: the frame the work item calls (the
    event loop hands blocking calls and sync callbacks to the pool)."""
    for (func, path), called in itertools.pairwise(frames):
        if func == "_WorkItem.run" and path.endswith("concurrent/futures/thread.py"):
            return f"{called[0]} ({_short(called[1])})"
    return None


def _ours(path: str) -> bool:
    return "fengchao_chains/" in path and not path.endswith("fengchao_chains/cli.py")


def _frame(text: str) -> tuple[str, str] | None:
    match = _FRAME.match(text.strip())
    if match is None:
        return None
    return match.group("func"), match.group("file")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    if "fengchao_chains/" in path:
        return "fengchao_chains/" + path.split("fengchao_chains/", 1)[1]
    return path.rsplit("/", 1)[-1]


def package_of(path: str) -> str:
    """The distribution a frame's file belongs to; this project's own files by module, the
    standard library by its top module (asyncio, json, logging ...)."""
    if "fengchao_chains/" in path:
        module = path.split("fengchao_chains/", 1)[1].removesuffix(".py")
        return "fengchao_chains." + module.replace("/", ".")
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/lib/python3." in path:
        tail = path.split("/lib/python3.", 1)[1].split("/", 1)[-1]
        return "stdlib:" + tail.split("/", 1)[0].removesuffix(".py")
    return path.rsplit("/", 1)[-1]
