"""A bare TCP server on a free loopback port, for tests that need a peer misbehaving (or
relaying) below HTTP."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class LoopbackServer:
    """Accepts connections until closed and hands each to ``handle``, on the accepting
    thread (a handler that blocks starts its own)."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self._handle = handle
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._handle(conn)

    def close(self) -> None:
        self.sock.close()
