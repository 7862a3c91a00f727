"""One loaded llama.cpp model and the one thread that runs it.

A ``Llama`` object is not thread-safe, and two generations cannot share its context, so
each model file (with its context settings) gets one :class:`Engine`: a worker thread that
loads the model on first use and then takes requests one at a time from a bounded queue.
Callers in any thread or event loop hand in a :class:`Job` and read what the worker sends
back through the job's channel, so generation never runs on an event loop, concurrent
requests wait their turn, and a full queue is refused at once instead of piling up.
A caller that stops reading cancels its job; the worker stops generating at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("fengchao_chains.llms.llamacpp")


@dataclass(frozen=True)
class EngineKey:
    """What makes two models the same loaded model."""

    path: Path
    n_ctx: int
    n_threads: int | None
    n_batch: int
    chat_format: str | None


class QueueFull(Exception):
    """The engine's queue is full."""


class Cancelled(Exception):
    """Raised from ``emit`` in the worker once the caller has stopped reading."""


@dataclass
class Job:
    """One request: what to run on the loaded model, and where its output goes.

    ``run(llama, emit)`` runs in the worker thread and calls ``emit`` for every item it
    produces (``emit`` raises :class:`Cancelled` once the caller is gone, which ends the
    generation); ``deliver`` hands each item (or the worker's exception) to the caller."""

    run: Callable[[Any, Callable[[Any], None]], None]
    deliver: Callable[[tuple[str, Any]], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: Any) -> None:
        if self.cancelled.is_set():
            raise Cancelled
        self.deliver(("item", item))


class Engine:
    """A model file loaded once, lazily, and served by one worker thread."""

    def __init__(self, key: EngineKey) -> None:
        self.key = key
        self._jobs: queue.Queue[Job] = queue.Queue()
        self._llama: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.tokenizer_lock = threading.Lock()
        """Held while a caller tokenizes (counting usage) with the loaded model. Tokenizing
        reads only the vocabulary, so it may run beside a generation, but not beside
        another tokenization (llama-cpp-python's wrapper is not known to be re-entrant)."""

    def submit(self, job: Job, max_waiting: int) -> None:
        """Queue ``job``; :class:`QueueFull` if ``max_waiting`` jobs are already waiting (each
        caller's own bound on one shared queue: model objects for one file share it)."""
        with self._lock:
            if self._jobs.qsize() >= max_waiting:
                raise QueueFull
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name=f"llama.cpp {self.key.path.name}", daemon=True
                )
                self._thread.start()
            self._jobs.put_nowait(job)

    @property
    def waiting(self) -> int:
        return self._jobs.qsize()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job.cancelled.is_set():
                continue
            try:
                job.run(self.loaded(), job.emit)
            except Cancelled:
                logger.debug("a caller stopped reading; generation stopped")
            except BaseException as exc:  # handed to the caller, who raises it
                job.deliver(("error", exc))
            else:
                job.deliver(("end", None))

    def loaded(self) -> Any:
        """The ``Llama`` object, loaded by whichever thread asks first."""
        with self._load_lock:
            if self._llama is None:
                self._llama = self._load()
        return self._llama

    def _load(self) -> Any:
        from llama_cpp import Llama

        logger.info("loading %s", self.key.path)
        return Llama(
            model_path=str(self.key.path),
            n_ctx=self.key.n_ctx,
            n_threads=self.key.n_threads,
            n_batch=self.key.n_batch,
            chat_format=self.key.chat_format,
            verbose=False,
        )


_engines: dict[EngineKey, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(key: EngineKey) -> Engine:
    """The process's engine for ``key`` (created on first use, then shared)."""
    with _engines_lock:
        if key not in _engines:
            _engines[key] = Engine(key)
        return _engines[key]


class SyncChannel:
    """A job's output, read by a thread. The first read waits at most ``timeout`` seconds
    (the job's turn in the queue and its first output) and then reads as a
    :class:`TimeoutError` from the job."""

    def __init__(self, timeout: float | None = None) -> None:
        self._items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._timeout = timeout

    def deliver(self, item: tuple[str, Any]) -> None:
        self._items.put(item)

    def get(self) -> tuple[str, Any]:
        timeout, self._timeout = self._timeout, None
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return ("error", TimeoutError(f"no answer within {timeout} s"))


class AsyncChannel:
    """A job's output, read by a coroutine on the loop that made the channel (the first read
    waits at most ``timeout`` seconds, as :class:`SyncChannel`'s)."""

    def __init__(self, timeout: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._timeout = timeout

    def deliver(self, item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is reading
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)

    async def get(self) -> tuple[str, Any]:
        timeout, self._timeout = self._timeout, None
        try:
            return await asyncio.wait_for(self._items.get(), timeout)
        except TimeoutError:
            return ("error", TimeoutError(f"no answer within {timeout} s"))
