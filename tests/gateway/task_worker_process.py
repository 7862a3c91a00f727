"""A separate process running TaskWorkers, for the crash and restart tests of the task queue.

Run with the project's Python and pointed at a test database through the environment
(``FENGCHAO_DATABASE_URL``, ``FENGCHAO_DATABASE_SCHEMA``, ``FENGCHAO_TASK_LEASE_SECONDS``, ...).
It prints ``ready`` once it is claiming, ``started <task id>`` when a handler begins and
``stopped`` after a graceful stop on SIGTERM.  Its handler sleeps ``payload["sleep"]``
seconds (default: an hour, i.e. until it is killed) and returns who ran it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from fengchao_chains.db import Database
from fengchao_chains.gateway.tasks import Task, TaskQueue, TaskWorkers
from fengchao_chains.settings import load_settings


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def handler(task: Task) -> dict[str, Any]:
    say(f"started {task.id}")
    await asyncio.sleep(float(task.payload.get("sleep", 3600)))
    return {"ran_by": os.getpid(), "attempt": task.attempts}


async def serve(database: Database) -> None:
    queue = TaskQueue(database, load_settings())
    workers = TaskWorkers(
        queue, handler, concurrency=int(os.environ.get("TASK_CONCURRENCY", "1")), poll_interval=0.2
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await workers.start()
    say("ready")
    await stop.wait()
    await workers.stop(grace=float(os.environ.get("TASK_GRACE", "0.5")))
    await database.close_async_pool()
    say("stopped")


def main() -> None:
    database = Database.start(load_settings())
    try:
        asyncio.run(serve(database))
    finally:
        database.close()


if __name__ == "__main__":
    main()
