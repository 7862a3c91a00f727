"""One logging format for the CLI, the server and uvicorn's own loggers."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``; uvicorn's loggers propagate to the same handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


def log_after_turn(logger: logging.Logger, level: int, msg: str, *args: Any) -> None:
    """Log on the event loop's next turn when called on a running loop, else now.

    A line logged while an answer is being made (formatting, the write to stderr: ~0.1 ms
    at low load) delays the answer; on the next turn the answer has been written first.
    """
    if not logger.isEnabledFor(level):
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        logger.log(level, msg, *args)
        return
    loop.call_soon(logger.log, level, msg, *args)
