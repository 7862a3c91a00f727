"""The one HTTP layer every vendor chat model uses: a request's shape, sending it over the
shared pools (:mod:`._http_clients`) with retries (:mod:`._retries`), and turning the answer
into a parsed body or the project's exception tree. A stream is retried only while opening
it: once the first byte has reached the caller, a failure is raised, never replayed, so no
answer is duplicated.

Vendors plug in through :class:`Exchange`: how to sign a request, how to turn an error
answer into the project's exception tree, and how to spot an error hidden in a 200 body.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import httpx
import orjson
import urllib3
import yarl

from fengchao_chains.llms._http_clients import (
    _aiohttp_timeout,
    _proxy_of,
    _shared_pool,
    _urllib3_timeout,
    async_client,
)
from fengchao_chains.llms._retries import Retriable, awith_retries, with_retries
from fengchao_chains.llms.errors import (
    UpstreamError,
    VendorConnectionError,
    VendorError,
    VendorTimeoutError,
)


class _RedactQueryStrings(logging.Filter):
    """httpx logs every request's URL at INFO. Some vendors put credentials in the query
    string (Qianfan's ``access_token``, and its token request's ``client_secret``), so query
    values are masked before any handler sees the line."""

    _QUERY_VALUE = re.compile(r"([?&][^=&\s\"']+)=[^&\s\"']*")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message:
            record.msg, record.args = self._QUERY_VALUE.sub(r"\1=***", message), None
        return True


for _logger_name in ("httpx", "urllib3.connectionpool"):  # both log request lines
    _request_logger = logging.getLogger(_logger_name)
    if not any(isinstance(f, _RedactQueryStrings) for f in _request_logger.filters):
        _request_logger.addFilter(_RedactQueryStrings())


@dataclass
class VendorRequest:
    """One HTTP call to a vendor, before signing."""

    method: str
    url: str
    json_body: Any = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    stream: bool = False

    @functools.cached_property
    def body(self) -> bytes:
        """The exact bytes sent, which request-signing schemes hash (serialised once)."""
        if self.json_body is None:
            return b""
        return json.dumps(self.json_body, ensure_ascii=False).encode()


@dataclass
class ResponseMeta:
    """What the parsers may need from an answer besides its body."""

    status_code: int
    headers: Mapping[str, str]
    """Case-insensitive (urllib3's, aiohttp's or httpx's headers)."""
    request_id: str | None
    model: str | None = None
    """The model the call asked for (a per-call ``model=`` wins over the instance's), for
    vendors whose answers do not name it."""


class Exchange(Retriable, Protocol):
    """The vendor-specific half of a call (implemented by each chat model)."""

    @property
    def vendor_name(self) -> str: ...

    def _sign(self, request: VendorRequest) -> dict[str, str]: ...

    async def _asign(self, request: VendorRequest) -> dict[str, str]: ...

    def _error_from_response(self, status: int, body: Any, meta: ResponseMeta) -> VendorError: ...

    def _check_body(self, body: Any, meta: ResponseMeta) -> None: ...

    def _request_id(self, headers: Mapping[str, str], body: Any = None) -> str | None: ...

    def _timeout(self) -> httpx.Timeout: ...


# --------------------------------------------------------------------------- errors


def loads_json(raw: str | bytes) -> Any:
    """JSON text as Python: orjson, three times as fast (every stream event is parsed here),
    else the standard library, which also reads what orjson refuses (``NaN``, UTF-16, lone
    surrogates). Integers beyond 64 bits come back as floats. Raises ``ValueError`` for
    what neither reads."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _parse_json(raw: bytes) -> Any:
    try:
        return loads_json(raw) if raw.strip() else None
    except ValueError:
        return raw.decode(errors="replace")[:500]


def _meta(
    model: Exchange, status: int, headers: Mapping[str, str], body: Any = None
) -> ResponseMeta:
    return ResponseMeta(status, headers, model._request_id(headers, body))


def _raise_for_answer(
    model: Exchange, status: int, headers: Mapping[str, str], raw: bytes
) -> tuple[Any, ResponseMeta]:
    """The parsed body of a complete answer and its metadata, or the vendor's error raised."""
    body = _parse_json(raw)
    meta = _meta(model, status, headers, body)
    if status >= 400:
        raise model._error_from_response(status, body, meta)
    if isinstance(body, str):
        raise UpstreamError(
            f"unreadable answer: {body[:200]!r}",
            vendor=model.vendor_name,
            status_code=status,
            request_id=meta.request_id,
        )
    model._check_body(body, meta)
    return body, meta


TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, aiohttp.ClientError, asyncio.TimeoutError)
"""What the clients raise when a connection fails or times out (aiohttp raises the builtin
``TimeoutError`` for some of its timeouts)."""

_TIMEOUTS = (
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.EmptyPoolError,
    asyncio.TimeoutError,
)
"""Timeouts, including waiting longer than the pool timeout for a free connection."""


def transport_error(model: Exchange, exc: BaseException, *, during: str) -> VendorError:
    """A transport failure as the project's error (the URL is kept out: it may carry a
    token in its query string)."""
    timed_out = isinstance(exc, _TIMEOUTS)
    kind: type[VendorConnectionError] = VendorTimeoutError if timed_out else VendorConnectionError
    return kind(f"{during}: {type(exc).__name__}", vendor=model.vendor_name)


def _headers(request: VendorRequest, signature: dict[str, str]) -> dict[str, str]:
    headers = {**request.headers, **signature}
    if request.stream:
        headers.setdefault("Accept", "text/event-stream")
    if request.files is None and request.data is None and request.json_body is not None:
        headers.setdefault("Content-Type", "application/json")
    return headers


def encoded_url(request: VendorRequest) -> str:
    """The request's URL with its query string, encoded the one way both sides send it
    (some vendors sign the query)."""
    if not request.params:
        return request.url
    return str(httpx.URL(request.url, params=request.params))


def _urlopen(
    pool: urllib3.PoolManager,
    model: Exchange,
    request: VendorRequest,
    signature: dict[str, str],
    *,
    during: str = "request failed",
) -> urllib3.BaseHTTPResponse:
    """Send ``request`` once; a stream's answer is left unread for the caller. The pool's
    own headers are sent too (urllib3 drops them when a call names any). A transport
    failure is raised as the project's error, saying it happened ``during`` this."""
    headers = {**pool.headers, **_headers(request, signature)}
    body: bytes | None = None
    if request.files is not None or request.data is not None:
        body, headers["Content-Type"] = urllib3.encode_multipart_formdata(
            {**(request.data or {}), **(request.files or {})}
        )
    elif request.json_body is not None:
        body = request.body
    timeout = model._timeout()
    try:
        return pool.urlopen(
            request.method,
            encoded_url(request),
            body=body,
            headers=headers,
            timeout=_urllib3_timeout(timeout.connect, timeout.read),
            pool_timeout=timeout.pool,
            preload_content=not request.stream,
            redirect=False,
            retries=False,
        )
    except TRANSPORT_ERRORS as exc:
        raise transport_error(model, exc, during=during) from None


def _let_go_sync(response: urllib3.BaseHTTPResponse) -> None:
    """Back to the pool if the answer was read to its end (urllib3 releases it then); else
    the connection is closed (the only way to tell a vendor mid-answer to stop)."""
    if response.connection is not None:
        response.close()
        response.release_conn()


def _asend_request(
    session: aiohttp.ClientSession,
    model: Exchange,
    request: VendorRequest,
    signature: dict[str, str],
    proxy: str | None,
) -> Any:
    """The aiohttp request (an awaitable context manager). The query string is encoded by
    httpx exactly as the sync side sends it, since some vendors sign it."""
    url: str | yarl.URL = request.url
    if request.params:
        url = yarl.URL(encoded_url(request), encoded=True)
    body: Any = None
    if request.files is not None or request.data is not None:
        body = aiohttp.FormData()
        for name, value in (request.data or {}).items():
            body.add_field(name, value)
        for name, (filename, content, content_type) in (request.files or {}).items():
            body.add_field(name, content, filename=filename, content_type=content_type)
    elif request.json_body is not None:
        body = request.body
    return session.request(
        request.method,
        url,
        data=body,
        headers=_headers(request, signature),
        timeout=_aiohttp_timeout(model._timeout()),
        allow_redirects=False,
        proxy=proxy,
    )


# --------------------------------------------------------------------------- calls


def send(
    model: Exchange, request: VendorRequest, client: urllib3.PoolManager | None = None
) -> tuple[Any, ResponseMeta]:
    """Send a non-streaming request with retries; the parsed JSON body and its metadata."""
    pool = client or _shared_pool(request.url)

    def attempt() -> tuple[Any, ResponseMeta]:
        response = _urlopen(pool, model, request, model._sign(request))
        return _raise_for_answer(model, response.status, response.headers, response.data)

    return with_retries(model, attempt)


def fetch(
    model: Exchange,
    request: VendorRequest,
    client: urllib3.PoolManager | None = None,
    *,
    during: str = "request failed",
) -> urllib3.BaseHTTPResponse:
    """One unsigned request, no retries, the answer read whatever its status (for a
    vendor's own exchanges, such as fetching an access token)."""
    return _urlopen(client or _shared_pool(request.url), model, request, {}, during=during)


async def asend(
    model: Exchange, request: VendorRequest, client: aiohttp.ClientSession | None = None
) -> tuple[Any, ResponseMeta]:
    """The async twin of :func:`send`."""
    session = client or async_client()
    proxy = None if client else _proxy_of(request.url)

    async def attempt() -> tuple[Any, ResponseMeta]:
        signature = await model._asign(request)
        try:
            async with _asend_request(session, model, request, signature, proxy) as response:
                raw = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(model, exc, during="request failed") from None
        return _raise_for_answer(model, response.status, response.headers, raw)

    return await awith_retries(model, attempt)


@dataclass
class OpenedStream:
    """A stream whose headers arrived fine: either a live SSE response, or (for a vendor
    that answered a stream request with one JSON document) that document."""

    response: Any
    """``urllib3.BaseHTTPResponse`` (sync) or ``aiohttp.ClientResponse`` (async)."""
    meta: ResponseMeta
    whole_body: Any = None

    @property
    def is_sse(self) -> bool:
        return self.whole_body is None


def _is_event_stream(headers: Mapping[str, str]) -> bool:
    return "text/event-stream" in headers.get("content-type", "")


@contextlib.contextmanager
def open_stream(
    model: Exchange, request: VendorRequest, client: urllib3.PoolManager | None = None
) -> Iterator[OpenedStream]:
    """Open a streaming request, retrying until the answer's headers say it is good.
    Leaving it releases the connection as :func:`let_go` does."""
    pool = client or _shared_pool(request.url)
    request.stream = True

    def attempt() -> OpenedStream:
        response = _urlopen(pool, model, request, model._sign(request))
        if response.status < 400 and _is_event_stream(response.headers):
            return OpenedStream(response, _meta(model, response.status, response.headers))
        try:
            raw = response.read()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(model, exc, during="reading the answer failed") from None
        finally:
            _let_go_sync(response)
        body, meta = _raise_for_answer(model, response.status, response.headers, raw)
        return OpenedStream(response, meta, whole_body=body)

    opened = with_retries(model, attempt)
    try:
        yield opened
    finally:
        _let_go_sync(opened.response)


async def aopen(
    model: Exchange, request: VendorRequest, client: aiohttp.ClientSession | None = None
) -> OpenedStream:
    """The async twin of :func:`open_stream`'s opening: a streaming request sent and
    retried until the answer's headers say it is good. Whoever holds the stream must
    :func:`let_go` of it however it ends."""
    session = client or async_client()
    proxy = None if client else _proxy_of(request.url)
    request.stream = True

    async def attempt() -> OpenedStream:
        signature = await model._asign(request)
        try:
            response = await _asend_request(session, model, request, signature, proxy)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(model, exc, during="request failed") from None
        if response.status < 400 and _is_event_stream(response.headers):
            return OpenedStream(response, _meta(model, response.status, response.headers))
        try:
            raw = await response.read()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(model, exc, during="reading the answer failed") from None
        finally:
            response.release()
        body, meta = _raise_for_answer(model, response.status, response.headers, raw)
        return OpenedStream(response, meta, whole_body=body)

    return await awith_retries(model, attempt)


def let_go(response: aiohttp.ClientResponse) -> None:
    """Release a stream :func:`aopen` opened: back to the pool if the answer was read to
    its end, else the connection is closed at once (the only way to tell a vendor
    mid-answer to stop)."""
    if response.content.at_eof():
        response.release()
    else:
        response.close()
