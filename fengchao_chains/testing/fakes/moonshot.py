"""A fake of Moonshot's API: OpenAI-style chat plus the Files API (vendors.md section 6).

Chat as Moonshot answers it: ``cmpl-`` ids, no ``system_fingerprint`` or ``logprobs``, a
stream whose last chunk carries the usage inside ``choices[0]`` (``stream_options`` is
accepted and ignored: Moonshot reports usage unasked), ``data: [DONE]``, the request id in
the ``Msh-Request-Id`` header, and errors as ``{"error": {"message", "type"}}`` with
Moonshot's types. An unknown URL gets the gateway's own ``{"code": 5, "error":
"url.not_found", ...}`` body.

Files: upload (multipart ``file`` + ``purpose``), list, metadata, extracted content (a JSON
document ``{"content", "file_type", "filename", "title", "type"}``) and delete. A text file
is "extracted" as its decoded text; any other type gets a deterministic stand-in naming the
file, its size and hash, and a ``.pdf`` that does not start with ``%PDF`` fails extraction
(``status: "error"``). Files over ``max_file_bytes``, of types Moonshot does not list, or
beyond ``max_files`` are refused with a 400. Auth faults, rate limits, server errors and
slowness scripted with ``inject`` apply to the file routes too; the chat-only faults
(context, filter, stream) wait for the next chat request.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, ClassVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fengchao_chains.testing.fakes._common import (
    Fault,
    FaultSpec,
    Reply,
    bearer,
    count_tokens,
    new_id,
    paced,
    retry_after,
)
from fengchao_chains.testing.fakes.openai import FakeOpenAI

PURPOSES = ("file-extract", "image", "video")
TEXT_EXTENSIONS = frozenset({
    ".txt", ".csv", ".md", ".html", ".json", ".log", ".go", ".h", ".c", ".cpp", ".cxx", ".cc",
    ".cs", ".java", ".js", ".css", ".jsp", ".php", ".py", ".py3", ".asp", ".yaml", ".yml",
    ".ini", ".conf", ".ts", ".tsx",
})  # fmt: skip
SUPPORTED_EXTENSIONS = TEXT_EXTENSIONS | frozenset({
    ".pdf", ".doc", ".docx", ".xls", ".xlsx", ".ppt", ".pptx", ".jpeg", ".jpg", ".png", ".bmp",
    ".gif", ".svg", ".svgz", ".webp", ".ico", ".xbm", ".dib", ".pjp", ".tif", ".pjpeg", ".avif",
    ".dot", ".apng", ".epub", ".tiff", ".jfif", ".mobi",
})  # fmt: skip
"""The formats Moonshot's file documentation lists."""

_FILE_FAULTS = {Fault.UNAUTHORIZED, Fault.TOKEN_EXPIRED, Fault.RATE_LIMITED, Fault.SERVER_ERROR}


@dataclass
class FakeFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    mime_type: str
    created_at: int
    status: str = "ok"
    status_details: str = ""

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status,
            "status_details": self.status_details,
        }

    def extracted(self) -> str:
        """The fake extraction: a text file's text, else a deterministic stand-in."""
        if PurePosixPath(self.filename).suffix.lower() in TEXT_EXTENSIONS or (
            self.mime_type.startswith("text/")
        ):
            return self.data.decode("utf-8", errors="replace")
        digest = hashlib.sha256(self.data).hexdigest()[:16]
        return f"[{self.filename}: {len(self.data)} bytes of {self.mime_type}, sha256 {digest}]"


def parse_multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, str, bytes]]:
    """``multipart/form-data`` fields as name -> (file name, content type, bytes), with the
    standard library's MIME parser (no extra dependency)."""
    if not content_type.lower().startswith("multipart/form-data"):
        return {}
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.message_from_bytes(head + raw, policy=email.policy.HTTP)
    fields: dict[str, tuple[str | None, str, bytes]] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), part.get_content_type(), payload)
    return fields


@dataclass
class FakeMoonshot(FakeOpenAI):
    """Moonshot's protocol; ``api_keys`` are the keys it accepts, ``files`` what is stored."""

    max_file_bytes: int = 100 * 1024 * 1024
    max_files: int = 1000
    exhausted: bool = False
    """When set, chat requests fail with ``exceeded_current_quota_error`` (HTTP 429)."""
    too_large_message: str = (
        "file size is too large, max file size is 100MB, please confirm and re-upload the file"
    )
    files: dict[str, FakeFile] = field(default_factory=dict)

    # Chat as Moonshot answers it (see the module docstring); FakeOpenAI does the rest.
    id_prefix: ClassVar[str] = "cmpl-"
    request_id_header: ClassVar[str] = "msh-request-id"
    openai_fields: ClassVar[bool] = False
    ensure_ascii: ClassVar[bool] = False
    bad_json_message: ClassVar[str] = "Invalid request: invalid json body"
    missing_message: ClassVar[str] = "Invalid request: messages and model are required"

    # ----------------------------------------------------------------- protocol details

    def routes(self) -> list[Route]:
        p = self.prefix
        return [
            Route(f"{p}/chat/completions", self.chat, methods=["POST"]),
            Route(f"{p}/files", self.upload, methods=["POST"]),
            Route(f"{p}/files", self.list_files, methods=["GET"]),
            Route(f"{p}/files/{{file_id}}", self.file_info, methods=["GET"]),
            Route(f"{p}/files/{{file_id}}", self.delete_file, methods=["DELETE"]),
            Route(f"{p}/files/{{file_id}}/content", self.file_content, methods=["GET"]),
        ]

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=self.routes(), exception_handlers={HTTPException: self.gateway_error}
        )

    async def gateway_error(self, request: Request, exc: Exception) -> Response:
        """What Moonshot's gateway answers for a URL or method it does not route."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        body = {
            "code": 5,
            "error": "url.not_found",
            "message": "没找到对象",
            "method": request.method,
            "scode": "0x5",
            "status": False,
            "ua": request.headers.get("user-agent", ""),
            "url": request.url.path,
        }
        return JSONResponse(body, status_code=status, headers=self.id_headers())

    def request_id(self) -> str:
        return new_id("")

    def error(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        body = {"error": {"message": message, "type": kind}}
        return JSONResponse(
            body, status_code=status, headers={**self.id_headers(), **(headers or {})}
        )

    def account_refusal(self, fault: FaultSpec | None) -> Response | None:
        if self.exhausted and (fault is None or fault.fault is not Fault.UNAUTHORIZED):
            return self.error(
                429,
                "Your account is suspended, please check your plan and billing details",
                "exceeded_current_quota_error",
            )
        return None

    def includes_usage(self, body: dict[str, Any]) -> bool:
        return False  # no final usage chunk: the last chunk's choice carries the usage

    def finish_chunk(self, base: dict[str, Any], extra: dict[str, Any], reply: Reply) -> str:
        choice = self.choice("delta", {}, reply.finish_reason, usage=self.usage(reply))
        return self.event({**base, "choices": [choice], **extra})

    def mid_stream_error_chunk(self) -> str:
        error = {"error": {"message": "server error, please retry", "type": "server_error"}}
        return f"data: {json.dumps(error)}\n\n"

    def fault_response(self, fault: FaultSpec | None, prompt: str) -> Response | None:
        kind = fault.fault if fault else None
        if kind in (Fault.UNAUTHORIZED, Fault.TOKEN_EXPIRED):
            return self.error(401, "Invalid Authentication", "invalid_authentication_error")
        if kind is Fault.RATE_LIMITED:
            return self.error(
                429,
                "Your account request reached organization max RPM: 3, please try again later",
                "rate_limit_reached_error",
                headers=retry_after(fault),
            )
        if kind is Fault.SERVER_ERROR:
            return self.error(500, "server error, please try again later", "server_error")
        if kind is Fault.CONTENT_FILTERED:
            return self.error(
                400,
                "The request was rejected because it was considered high risk",
                "content_filter",
            )
        if kind is Fault.CONTEXT_TOO_LONG or self.too_long(prompt):
            requested = max(count_tokens(prompt), self.context_window + 1)
            return self.error(
                400,
                "Invalid request: Your request exceeded model token limit:"
                f" {self.context_window} (requested: {requested})",
                "invalid_request_error",
            )
        return None

    # ----------------------------------------------------------------- files

    def _file_fault(self) -> FaultSpec | None:
        """The next scripted fault if it is one a file route can show (else left queued)."""
        with self._lock:
            if self._faults and self._faults[0].fault in (*_FILE_FAULTS, Fault.SLOW):
                return self._faults.popleft()
        return None

    async def _file_call(self, request: Request, **recorded: Any) -> Response | None:
        """Record a files request and apply auth and scripted faults; an error answer or None."""
        self.record(
            path=request.url.path, method=request.method, headers=dict(request.headers), **recorded
        )
        fault = self._file_fault()
        await paced(fault)
        if bearer(request.headers) not in self.api_keys:
            fault = FaultSpec(Fault.UNAUTHORIZED)
        return self.fault_response(fault if fault and fault.fault in _FILE_FAULTS else None, "")

    def _not_found(self, file_id: str) -> Response:
        return self.error(404, f"file {file_id} not found", "resource_not_found_error")

    async def upload(self, request: Request) -> Response:
        form = parse_multipart(request.headers.get("content-type", ""), await request.body())
        file_part = form.get("file")
        purpose = form["purpose"][2].decode() if "purpose" in form else None
        filename = (file_part[0] if file_part else None) or ""
        failed = await self._file_call(request, purpose=purpose, filename=filename)
        if failed is not None:
            return failed
        refused = self._refusal(file_part, purpose, filename)
        if refused is not None or file_part is None or purpose is None:
            return refused or self.error(400, "Invalid request", "invalid_request_error")
        _, mime_type, data = file_part
        suffix = PurePosixPath(filename).suffix.lower()
        stored = FakeFile(
            id=new_id("cn")[:20],
            filename=filename,
            purpose=purpose,
            data=data,
            mime_type=mime_type,
            created_at=int(time.time()),
        )
        if suffix == ".pdf" and not data.startswith(b"%PDF"):
            stored.status, stored.status_details = "error", "failed to parse the pdf file"
        self.files[stored.id] = stored
        return JSONResponse(stored.info(), headers=self.id_headers())

    def _refusal(
        self, part: tuple[str | None, str, bytes] | None, purpose: str | None, filename: str
    ) -> Response | None:
        """Why an upload is refused (None if it is fine)."""
        if part is None or not filename:
            return self.error(400, "Invalid request: file is required", "invalid_request_error")
        if purpose not in PURPOSES:
            return self.error(
                400,
                f"Invalid request: purpose must be one of {', '.join(PURPOSES)}",
                "invalid_request_error",
            )
        suffix = PurePosixPath(filename).suffix.lower()
        if len(part[2]) > self.max_file_bytes:
            return self.error(400, self.too_large_message, "invalid_request_error")
        if suffix not in SUPPORTED_EXTENSIONS:
            return self.error(
                400, f"unsupported file type: {suffix or filename}", "invalid_request_error"
            )
        if len(self.files) >= self.max_files:
            return self.error(
                400,
                f"too many files: an account may keep {self.max_files} files,"
                " please delete some and retry",
                "invalid_request_error",
            )
        return None

    async def list_files(self, request: Request) -> Response:
        failed = await self._file_call(request)
        if failed is not None:
            return failed
        data = [f.info() for f in self.files.values()]
        return JSONResponse({"object": "list", "data": data}, headers=self.id_headers())

    async def _stored(self, request: Request) -> FakeFile | Response:
        """The file a ``/files/{file_id}`` route names, after auth and scripted faults (or
        the error answer)."""
        file_id = request.path_params["file_id"]
        failed = await self._file_call(request, file_id=file_id)
        if failed is not None:
            return failed
        return self.files.get(file_id) or self._not_found(file_id)

    async def file_info(self, request: Request) -> Response:
        stored = await self._stored(request)
        if isinstance(stored, Response):
            return stored
        return JSONResponse(stored.info(), headers=self.id_headers())

    async def file_content(self, request: Request) -> Response:
        stored = await self._stored(request)
        if isinstance(stored, Response):
            return stored
        if stored.purpose != "file-extract":
            return self.error(
                400, "Invalid request: file purpose is not file-extract", "invalid_request_error"
            )
        if stored.status == "error":
            return self.error(
                400, f"Invalid request: {stored.status_details}", "invalid_request_error"
            )
        content = {
            "content": stored.extracted(),
            "file_type": stored.mime_type,
            "filename": stored.filename,
            "title": "",
            "type": "file",
        }
        return JSONResponse(content, headers=self.id_headers())

    async def delete_file(self, request: Request) -> Response:
        stored = await self._stored(request)
        if isinstance(stored, Response):
            return stored
        file_id = request.path_params["file_id"]
        self.files.pop(file_id, None)
        body = {"id": file_id, "object": "file", "deleted": True}
        return JSONResponse(body, headers=self.id_headers())
