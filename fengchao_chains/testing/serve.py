"""Run an ASGI app on loopback, in a thread or in a child process."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def _bound_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this on Linux. Without it, an answer written in two parts
    # (headers, then body) waits out the client's delayed ACK (~40 ms), as real servers avoid.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, 0))
    return sock


@contextmanager
def serve_in_thread(
    app: Any, host: str = "127.0.0.1", *, start_seconds: float = 15, **options: Any
) -> Iterator[str]:
    """Serve ``app`` on a free port for the duration of the block; yields its base URL.
    ``options`` go to ``uvicorn.Config`` over these defaults: no lifespan, only critical
    logs (a test of the app itself turns its lifespan and logs on)."""
    sock = _bound_socket(host)
    defaults: dict[str, Any] = {
        "log_level": "critical",
        "lifespan": "off",
        "timeout_keep_alive": 30,
    }
    settings = defaults | options
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_seconds
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _run_child(factory: Callable[[], Any], sock: socket.socket) -> None:
    # Idle connections kept as long as in serve_in_thread: with uvicorn's 5 s a client's
    # pooled connection can be closed just as it is reused (a proxy under test then fails
    # a request that no real vendor, with its minute-long keep-alive, would fail).
    config = uvicorn.Config(factory(), log_level="critical", lifespan="off", timeout_keep_alive=30)
    uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def serve_in_process(factory: Callable[[], Any], host: str = "127.0.0.1") -> Iterator[str]:
    """Serve the app ``factory()`` builds in a child process, so a benchmark's client and
    server do not share one interpreter lock; yields its base URL."""
    sock = _bound_socket(host)
    sock.listen(512)
    process = multiprocessing.get_context("fork").Process(
        target=_run_child, args=(factory, sock), daemon=True
    )
    process.start()
    url = f"http://{host}:{sock.getsockname()[1]}"
    try:
        yield url
    finally:
        process.terminate()
        process.join(timeout=10)
        sock.close()
