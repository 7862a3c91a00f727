"""The retry loop of every vendor call: exponential backoff with jitter on rate limits, 5xx
answers and connection failures, honouring ``Retry-After`` up to a limit, and an expired
credential dropped and the attempt made once more.

Kept apart from the HTTP calls because models with a client of their own (TGI's and TEI's,
over huggingface_hub) retry through it too, exactly as the others do. Which errors are
worth retrying is each error's own ``is_retryable``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from fengchao_chains.llms.errors import CredentialsExpiredError, RateLimitError, VendorError

logger = logging.getLogger("fengchao_chains.llms")

MAX_RETRY_AFTER = 60.0
"""Longest ``Retry-After`` honoured; a vendor asking for more gets the error instead."""

_T = TypeVar("_T")


class Retriable(Protocol):
    """What the retry loop needs of a model: its retry budget, and how to drop a token."""

    @property
    def max_retries(self) -> int: ...

    def _forget_credentials(self) -> None: ...


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, RateLimitError) and (exc.retry_after or 0) > MAX_RETRY_AFTER:
        return False
    return isinstance(exc, VendorError) and bool(getattr(exc, "is_retryable", False))


_backoff = wait_exponential_jitter(multiplier=0.5, max=20, jitter=0.5)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, RateLimitError) and exc.retry_after is not None:
        return exc.retry_after
    return float(_backoff(state))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.warning("retrying in %.1f s after: %s", wait, exc)


def _retrying_kwargs(max_retries: int) -> dict[str, Any]:
    return {
        "stop": stop_after_attempt(max(0, max_retries) + 1),
        "wait": _wait,
        "retry": retry_if_exception(_retryable),
        "before_sleep": _log_retry,
        "reraise": True,
    }


def with_retries(model: Retriable, attempt: Callable[[], _T]) -> _T:
    """``attempt()`` with the model's retry budget. The first try runs outside tenacity
    (which costs a little on every call, and most calls succeed at once); a retryable
    failure is handed to tenacity as its first attempt's outcome, so its waits, logging
    and budget are exactly those of a loop that began with it."""
    try:
        return _refreshing(model, attempt)
    except VendorError as exc:
        if model.max_retries < 1 or not _retryable(exc):
            raise
        failures = [exc]

    def replay_then_attempt() -> _T:
        if failures:
            raise failures.pop()
        return _refreshing(model, attempt)

    for try_ in Retrying(**_retrying_kwargs(model.max_retries)):
        with try_:
            return replay_then_attempt()
    raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises


async def awith_retries(model: Retriable, attempt: Callable[[], Awaitable[_T]]) -> _T:
    """The async twin of :func:`with_retries`."""
    try:
        return await _arefreshing(model, attempt)
    except VendorError as exc:
        if model.max_retries < 1 or not _retryable(exc):
            raise
        failures = [exc]

    async def replay_then_attempt() -> _T:
        if failures:
            raise failures.pop()
        return await _arefreshing(model, attempt)

    async for try_ in AsyncRetrying(**_retrying_kwargs(model.max_retries)):
        with try_:
            return await replay_then_attempt()
    raise AssertionError("unreachable")  # pragma: no cover


def _refreshing(model: Retriable, attempt: Callable[[], _T]) -> _T:
    """One attempt; an expired credential is dropped and the attempt made once more."""
    try:
        return attempt()
    except CredentialsExpiredError:
        model._forget_credentials()
        return attempt()


async def _arefreshing(model: Retriable, attempt: Callable[[], Awaitable[_T]]) -> _T:
    try:
        return await attempt()
    except CredentialsExpiredError:
        model._forget_credentials()
        return await attempt()
