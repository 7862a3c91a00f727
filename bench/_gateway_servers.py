"""The servers bench/gateway.py measures: ``fengchao serve`` and the LiteLLM proxy, each as
its own process with one worker, pinned to a core when asked, stderr to a log file (a pipe
would need a reader in the load generator's process, on the load generator's core)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

FENGCHAO = str(Path(sys.executable).with_name("fengchao"))
_LISTENING = re.compile(r" on http://([\d.]+):(\d+) ")
LITELLM_VERSION = "1.106.0"
"""The LiteLLM the docs' figures were measured with (``litellm[proxy]``, its own venv)."""
LITELLM_MASTER_KEY = "sk-bench-master"


@dataclass
class ServerProcess:
    """A started server: its process, where it listens and where its stderr goes."""

    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        """Resident memory of the process and its children."""
        root = psutil.Process(self.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin a process (and the threads it already has) to ``cpus``; None leaves it alone."""
    if cpus is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: server did not become healthy; see {log}")
        time.sleep(0.1)


@contextmanager
def fengchao_server(
    env: dict[str, str], log: Path, cpus: set[int] | None
) -> Iterator[ServerProcess]:
    """``fengchao serve --port 0`` with ``env``; yields once ``/healthz`` answers."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [FENGCHAO, "serve", "--port", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,  # noqa: PLW1509
        )
    try:
        deadline = time.monotonic() + 120
        base_url = None
        while base_url is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fengchao serve did not start; see {log}")
            if match := _LISTENING.search(log.read_text(errors="replace")):
                base_url = f"http://{match.group(1)}:{match.group(2)}"
            time.sleep(0.05)
        _wait_healthy(proc, f"{base_url}/healthz", log, deadline)
        yield ServerProcess("fengchao", proc, base_url, log)
    finally:
        ServerProcess("fengchao", proc, "", log).stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def litellm_config(upstream_url: str, model: str, api_key: str) -> str:
    """The proxy's config: one model on the upstream, a master key, and no retries; no
    database (its spend tracking needs Prisma's engines, which this machine cannot fetch),
    so the cost of each answer is computed by its logging callbacks and not written."""
    return f"""\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {upstream_url}/v1
      api_key: {api_key}
litellm_settings:
  num_retries: 0
  request_timeout: 60
general_settings:
  master_key: {LITELLM_MASTER_KEY}
"""


@contextmanager
def litellm_server(
    venv: Path, config: str, work_dir: Path, cpus: set[int] | None
) -> Iterator[ServerProcess]:
    """``litellm --config ... --num_workers 1`` from its own venv."""
    work_dir.mkdir(parents=True, exist_ok=True)
    config_file = work_dir / "litellm.yaml"
    config_file.write_text(config)
    log = work_dir / "litellm.log"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "FENGCHAO_"))},
        # the packaged cost map, not a download attempt at start-up (no internet here)
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
    }
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                str(venv / "bin" / "litellm"),
                *("--config", str(config_file)),
                *("--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"),
            ],
            env=env,
            cwd=work_dir,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,  # noqa: PLW1509
        )
    with _healthy("litellm", proc, port, "/health/liveliness", log, seconds=180) as server:
        yield server


@contextmanager
def floor_server(
    upstream_url: str, authorization: str, log: Path, cpus: set[int] | None
) -> Iterator[ServerProcess]:
    """``bench/_gateway_floor.py`` under uvicorn (one worker, no access log)."""
    port = free_port()
    env = os.environ | {"FLOOR_UPSTREAM": upstream_url, "FLOOR_AUTHORIZATION": authorization}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                *("-m", "uvicorn", "bench._gateway_floor:app"),
                *("--host", "127.0.0.1", "--port", str(port), "--no-access-log"),
            ],
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,  # noqa: PLW1509
        )
    with _healthy("floor", proc, port, "/healthz", log, seconds=60) as server:
        yield server


@contextmanager
def _healthy(
    name: str, proc: subprocess.Popen[bytes], port: int, health: str, log: Path, *, seconds: float
) -> Iterator[ServerProcess]:
    """A started server once its health route answers; stopped when the block ends."""
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, f"{base_url}{health}", log, time.monotonic() + seconds)
        yield ServerProcess(name, proc, base_url, log)
    finally:
        ServerProcess(name, proc, "", log).stop()
