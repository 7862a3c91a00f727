"""Hourly clean-up of what clients leave behind: anonymous uploads no chat ever used,
conversations nobody wrote to for a long time, and past rate-limit counters. Every server
process runs it; the deletes are idempotent, so several processes sharing a database do no
harm. (Finished async tasks are purged by the task workers themselves.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from fengchao_chains.runtime import Runtime

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 3600.0


async def sweep(runtime: Runtime) -> tuple[int, int]:
    """One pass; returns (uploads deleted, conversations deleted)."""
    settings = runtime.settings
    uploads = await runtime.uploads.apurge_unclaimed(
        timedelta(seconds=settings.upload_unclaimed_seconds)
    )
    conversations = await runtime.conversations.adelete_older_than(
        settings.conversation_retention_seconds
    )
    await runtime.limits.apurge()  # rate-limit windows and budget periods that have ended
    if uploads or conversations:
        logger.info(
            "housekeeping: %d unclaimed uploads and %d idle conversations deleted",
            uploads,
            conversations,
        )
    return uploads, conversations


async def _every(runtime: Runtime, interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await sweep(runtime)
        except Exception as exc:  # a failed sweep is retried next time, never fatal
            logger.warning("housekeeping failed, retrying in %.0f s: %s", interval, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


@contextlib.asynccontextmanager
async def running(
    runtime: Runtime, interval: float = INTERVAL_SECONDS, grace: float = 10.0
) -> AsyncIterator[None]:
    """Sweep now and every ``interval`` seconds while the block runs.

    Stopping asks the loop to end and lets a sweep in progress finish (up to ``grace``)
    rather than cancelling it: a cancellation landing inside a database driver call can be
    absorbed there, and the loop would then sleep on for an hour, holding up shutdown.
    """
    stop = asyncio.Event()
    task = asyncio.create_task(_every(runtime, interval, stop), name="fengchao-housekeeping")
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, grace)
        except TimeoutError:
            logger.warning("housekeeping did not stop within %.0f s; abandoned", grace)
