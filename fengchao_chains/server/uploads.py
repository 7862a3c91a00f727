"""``POST /aigc/uploadfiles/``: the fengchao SDK's file upload (multipart, repeated field
``files``, no ``Authorization``).

The answer is always JSON, whatever happens, because the SDK parses the body unconditionally
(and retries, then raises, on anything else): ``{"status": 200, "msg": "执行成功", "files":
[ids]}``, or HTTP 445 with ``{"status": 445, "msg": <why>, "files": []}``.  The SDK sends the
ids back in the chat body's ``files``.

The whole body is capped before it is parsed (``upload_max_files`` files of
``upload_max_bytes`` plus multipart overhead): a declared ``Content-Length`` over the cap is
refused unread, and a body that grows past it is cut off.  A token is optional; when one is
sent it must be valid (401 otherwise) and its key owns the files at once.  Checks, storage
and ownership: :mod:`fengchao_chains.gateway.uploads`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from fengchao_chains.errors import ConfigurationError
from fengchao_chains.gateway.auth import AuthError, token_from_request, token_verifier
from fengchao_chains.gateway.uploads import UploadError
from fengchao_chains.runtime import Runtime
from fengchao_chains.server.deps import RuntimeDep
from fengchao_chains.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/aigc", tags=["aigc"])

OK = "执行成功"
FIELD = "files"
PART_OVERHEAD_BYTES = 16 * 1024
"""Room per file for its multipart headers (a long file name included)."""
REQUEST_OVERHEAD_BYTES = 64 * 1024

_MULTIPART_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": [FIELD],
                "properties": {
                    FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}
                },
            }
        }
    },
}


def body_limit(settings: Settings) -> int:
    """The largest request body accepted: every allowed file at its largest, plus overhead."""
    per_file = settings.upload_max_bytes + PART_OVERHEAD_BYTES
    return settings.upload_max_files * per_file + REQUEST_OVERHEAD_BYTES


@router.post("/uploadfiles/", response_model=None, openapi_extra={"requestBody": _MULTIPART_BODY})
async def upload_files(request: Request, runtime: RuntimeDep) -> JSONResponse:
    """Store the request's files (all or none); answers their ids in the order sent."""
    body = _CappedBody(request, body_limit(runtime.settings))
    try:
        owner = await _owner(request)
        ids = await _store_form(request, body, runtime, owner)
    except UploadError as exc:
        logger.info("refused an upload: %s", exc)
        status, msg = exc.code, str(exc)
    except AuthError as exc:
        logger.info("refused an upload's token: %s", exc)
        status, msg = 401, str(exc)
    except ClientDisconnect:
        logger.info("an upload's client went away before sending all of it")
        status, msg = 400, "the upload was cut off"
    except ConfigurationError as exc:
        logger.error("cannot check tokens: %s", exc)
        status, msg = 500, "the server cannot check tokens now"
    except Exception:  # the SDK needs JSON whatever happened; the log gets the details
        logger.exception("an upload failed")
        status, msg = 500, "the upload could not be stored; try again later"
    else:
        return _answer(200, OK, ids)
    return _answer(status, msg)


async def _owner(request: Request) -> str | None:
    """The api_key of the request's token, or None without one (the SDK's way)."""
    token = token_from_request(request)
    if token is None:
        return None
    caller = await token_verifier(request).averify(token)
    return caller.api_key


async def _store_form(
    request: Request, body: _CappedBody, runtime: Runtime, owner: str | None
) -> list[str]:
    settings = runtime.settings
    capped = Request(request.scope, body)
    try:
        if body.declared is not None and body.declared > body.limit:
            raise _BodyTooLargeError
        async with capped.form(
            max_files=settings.upload_max_files, max_fields=16, max_part_size=64 * 1024
        ) as form:
            parts = form.getlist(FIELD)
            if any(not isinstance(part, UploadFile) for part in parts):
                raise UploadError(f"'{FIELD}' must be file parts (with a filename), not text")
            files = [
                (part.filename or "", part.content_type, part.file)
                for part in parts
                if isinstance(part, UploadFile)
            ]
            stored = await runtime.uploads.asave(owner, files)
    except HTTPException as exc:  # Starlette's answer to a malformed multipart body
        raise UploadError(f"not a valid multipart upload: {exc.detail}") from None
    except _BodyTooLargeError:
        raise UploadError(
            f"the request is larger than {body.limit} bytes ({settings.upload_max_files}"
            f" files of at most {settings.upload_max_bytes} bytes)"
        ) from None
    return [f.id for f in stored]


def _answer(status: int, msg: str, files: list[str] | None = None) -> JSONResponse:
    content: dict[str, Any] = {"status": status, "msg": msg, "files": files or []}
    return JSONResponse(content, status_code=status)


class _BodyTooLargeError(Exception):
    pass


class _CappedBody:
    """The request's ``receive``, raising :class:`_BodyTooLargeError` once the body passes
    ``limit`` bytes.

    What the client still sends after a refusal is left to the server: uvicorn reads and
    drops the rest of the body, so a client that writes its whole body before reading (the
    SDK's requests does) still gets the JSON answer (tested with a 30 MB body).
    """

    def __init__(self, request: Request, limit: int) -> None:
        self.receive: Receive = request.receive
        self.limit = limit
        length = request.headers.get("content-length", "")
        self.declared = int(length) if length.isdigit() else None
        self.received = 0

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise _BodyTooLargeError
        return message
