"""Run ``fengchao`` as a real subprocess, the way an operator does (or in this process,
through typer's runner, where the streams of a real process do not matter)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from fengchao_chains.settings import Settings

FENGCHAO = str(Path(sys.executable).with_name("fengchao"))
_LISTENING = re.compile(r" on http://([\d.]+):(\d+) ")


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment (already scrubbed by conftest) plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FENGCHAO_TEST_")}
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FENGCHAO, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


CliResult = subprocess.CompletedProcess[str]


def run_cli_in_process(*args: str, env: dict[str, str]) -> CliResult:
    """The command in this process, its outcome shaped like a subprocess's."""
    from typer.testing import CliRunner

    from fengchao_chains.cli import app

    outcome = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(
        list(args), outcome.exit_code, outcome.stdout, outcome.stderr
    )


def ok(result: CliResult) -> CliResult:
    """``result``, asserted to have succeeded (its stderr shown if not)."""
    assert result.returncode == 0, result.stderr
    return result


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that points the CLI at ``settings``' database, schema and data dir."""
    assert settings.database_url is not None
    return clean_env(
        FENGCHAO_DATABASE_URL=settings.database_url.get_secret_value(),
        FENGCHAO_DATABASE_SCHEMA=settings.database_schema,
        FENGCHAO_DATA_DIR=str(settings.data_dir),
    )


@dataclass
class ServeProcess:
    """``fengchao serve --port 0`` in the background, with its stderr collected."""

    env: dict[str, str]
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    base_url: str | None = None

    def start(self) -> ServeProcess:
        self.proc = subprocess.Popen(
            [FENGCHAO, "serve", "--port", "0", *self.args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 90) -> str:
        """Wait for the listening line, then for the first successful request."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.base_url is None:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{self.stderr}")
            for line in list(self.lines):
                if match := _LISTENING.search(line):
                    self.base_url = f"http://{match.group(1)}:{match.group(2)}"
            time.sleep(0.02)
        while True:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=5).status_code == 200:
                    return self.base_url
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server never answered:\n{self.stderr}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def postgres_running_on(pgdata: Path) -> bool:
    """Whether any postgres server process serves ``pgdata``."""
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "postgres" and str(pgdata) in " ".join(cmdline):
            return True
    return False


def wait_until(predicate: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
