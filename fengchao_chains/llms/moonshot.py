"""Moonshot (Kimi): OpenAI's chat protocol, plus documents through Moonshot's Files API.

Chat is OpenAI's with two quirks: a stream reports its usage inside ``choices[0].usage`` of
its last chunk without being asked (the OpenAI decoder reads it there, so no
``stream_options`` is sent), and the request id travels in the ``Msh-Request-Id`` header.

A chat request cannot carry files. Moonshot's documented way is to upload each document
(``POST /files``, purpose ``file-extract``), fetch the text it extracted
(``GET /files/{id}/content``, a JSON document) and put that text into the conversation as a
system message. So a document given the LangChain way, a ``file`` content block in a
``HumanMessage``, becomes a system message placed just before that human message::

    HumanMessage([
        {"type": "text", "text": "What does the contract say about notice?"},
        {"type": "file", "base64": data, "mime_type": "application/pdf",
         "filename": "contract.pdf"},
    ])

LangChain's older form (``"source_type": "base64", "data": ...``), OpenAI's
(``{"type": "file", "file": {"file_data": "data:...;base64,...", "filename": ...}}``) and a
file already uploaded to Moonshot (``file_id``) work too, as do local paths or
``(name, bytes)`` pairs given per call: ``model.invoke(question, files=["report.pdf"])``.
Local paths are only accepted that way, from code: a path inside a message, which may come
from an untrusted user of a server, would let that user read the server's files, and URLs
are not fetched for the same reason.

Each upload is deleted once its text is fetched (``delete_files_after_use``), so the
account's file quota (1000 files) does not fill up, and the extracted text is remembered
per model instance by content hash, so a document that stays in a conversation's history
is uploaded once, not once per turn.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import mimetypes
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, PrivateAttr, SecretStr

from fengchao_chains.catalog.cards import ModelCard
from fengchao_chains.llms import _http
from fengchao_chains.llms._factory import card_kwargs
from fengchao_chains.llms._http import ResponseMeta, VendorRequest
from fengchao_chains.llms._messages import TEXT_BLOCK_TYPES
from fengchao_chains.llms.errors import (
    ContextTooLongError,
    InvalidRequestError,
    QuotaExceededError,
    UpstreamError,
    VendorError,
)
from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible
from fengchao_chains.settings import Settings

logger = logging.getLogger("fengchao_chains.llms")

MOONSHOT_BASE_URL = "https://api.moonshot.cn/v1"
MAX_FILE_BYTES = 100 * 1024 * 1024
"""Moonshot's limit per file; larger documents are refused before uploading them."""

_FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

FileSource = str | os.PathLike[str] | tuple[str, bytes]
"""What the per-call ``files=`` argument takes: local paths, or (file name, content) pairs."""


@dataclass(frozen=True)
class DocumentFile:
    """One document to give the model: its bytes, or the id of a file already uploaded."""

    name: str
    data: bytes = b""
    mime_type: str = "application/octet-stream"
    file_id: str | None = None

    @property
    def key(self) -> str:
        if self.file_id:
            return f"id:{self.file_id}"
        digest = hashlib.sha256(self.data).hexdigest()
        return f"{digest}:{self.name}"


class ChatMoonshot(ChatOpenAICompatible):
    """Moonshot's chat models (``moonshot-v1-8k``, ``-32k``, ``-128k``), with documents.

    Example::

        model = ChatMoonshot(model="moonshot-v1-32k")  # key from MOONSHOT_API_KEY
        model.invoke("Summarise it in three lines.", files=["report.pdf"])
    """

    vendor_name = "moonshot"
    default_base_url = MOONSHOT_BASE_URL
    document_cache_size: ClassVar[int] = 32
    """Extracted documents remembered per model instance (oldest forgotten first)."""

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("MOONSHOT_API_KEY", default=None)
    )
    base_url: str | None = Field(default_factory=from_env("MOONSHOT_BASE_URL", default=None))
    stream_usage: bool = False
    """Moonshot reports a stream's usage in its last chunk unasked, so ``stream_options``
    (which the OpenAI protocol needs for that) is left out."""
    delete_files_after_use: bool = True
    """Delete each uploaded document once its text is fetched, so the account's file quota
    does not fill up; turn off to keep the uploads (e.g. to inspect them)."""

    _documents: OrderedDict[str, str] = PrivateAttr(default_factory=OrderedDict)

    # ------------------------------------------------------------------ auth, ids, errors

    def _sign(self, request: VendorRequest) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._require(self.api_key, 'MOONSHOT_API_KEY')}"}

    def _error_from_response(self, status: int, body: Any, meta: ResponseMeta) -> VendorError:
        """Moonshot names its errors by ``type``; a context overflow is an
        ``invalid_request_error`` saying "exceeded model token limit", and an exhausted
        balance (``exceeded_current_quota_error``) is a 429 that no retry will fix."""
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            # The gateway's own answer for an unknown URL: {"code": 5, "error": "url.not_found"}
            message = str(body.get("message") or body["error"])
            return self._error(status, message, code=body["error"], meta=meta)
        error = super()._error_from_response(status, body, meta)
        if "token limit" in error.message.lower() and type(error) is InvalidRequestError:
            return self._as_kind(error, ContextTooLongError, meta)
        if error.code == "exceeded_current_quota_error":
            return self._as_kind(error, QuotaExceededError, meta)
        return error

    # ------------------------------------------------------------------ documents

    def _call_messages(
        self, messages: list[BaseMessage], kwargs: dict[str, Any]
    ) -> list[BaseMessage]:
        """Per-call ``files=`` become file blocks of the last human message."""
        return attach_files(messages, kwargs.pop("files", None), self.vendor_name)

    def _prepare(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        plan = plan_documents(messages, self.vendor_name)
        return [SystemMessage(self._extract(i)) if isinstance(i, DocumentFile) else i for i in plan]

    async def _aprepare(self, messages: list[BaseMessage]) -> list[BaseMessage]:
        plan = plan_documents(messages, self.vendor_name)
        unique = {item.key: item for item in plan if isinstance(item, DocumentFile)}
        if not unique:
            return messages
        texts = await asyncio.gather(*(self._aextract(d) for d in unique.values()))
        extracted = dict(zip(unique, texts, strict=True))
        return [SystemMessage(extracted[i.key]) if isinstance(i, DocumentFile) else i for i in plan]

    def _extract(self, document: DocumentFile) -> str:
        """The text Moonshot extracted from ``document`` (uploading it first if needed)."""
        if (known := self._documents.get(document.key)) is not None:
            return known
        client = self.http_client
        with self._file_errors(document):
            if document.file_id is not None:
                body, _ = _http.send(self, self._content_request(document.file_id), client)
                return self._remember(document, body)
            uploaded, _ = _http.send(self, self._upload_request(document), client)
            file_id = self._uploaded_id(uploaded, document)
            try:
                self._check_status(uploaded, document)
                body, _ = _http.send(self, self._content_request(file_id), client)
            finally:
                if self.delete_files_after_use:
                    with self._cleanup(file_id):
                        _http.send(self, self._delete_request(file_id), client)
        return self._remember(document, body)

    async def _aextract(self, document: DocumentFile) -> str:
        if (known := self._documents.get(document.key)) is not None:
            return known
        client = self.http_async_client
        with self._file_errors(document):
            if document.file_id is not None:
                body, _ = await _http.asend(self, self._content_request(document.file_id), client)
                return self._remember(document, body)
            uploaded, _ = await _http.asend(self, self._upload_request(document), client)
            file_id = self._uploaded_id(uploaded, document)
            try:
                self._check_status(uploaded, document)
                body, _ = await _http.asend(self, self._content_request(file_id), client)
            finally:
                if self.delete_files_after_use:
                    with self._cleanup(file_id):
                        await _http.asend(self, self._delete_request(file_id), client)
        return self._remember(document, body)

    def _upload_request(self, document: DocumentFile) -> VendorRequest:
        if len(document.data) > MAX_FILE_BYTES:
            raise InvalidRequestError(
                f"document {document.name!r} is {len(document.data)} bytes, over Moonshot's"
                f" limit of {MAX_FILE_BYTES} bytes per file",
                vendor=self.vendor_name,
            )
        return VendorRequest(
            "POST",
            self._url("/files"),
            files={"file": (document.name, document.data, document.mime_type)},
            data={"purpose": "file-extract"},
        )

    def _content_request(self, file_id: str) -> VendorRequest:
        return VendorRequest("GET", self._url(f"/files/{file_id}/content"))

    def _uploaded_id(self, body: Any, document: DocumentFile) -> str:
        if not isinstance(body, dict) or not body.get("id"):
            raise UpstreamError(
                f"the upload of {document.name!r} was answered without a file id",
                vendor=self.vendor_name,
            )
        return str(body["id"])

    def _check_status(self, body: Any, document: DocumentFile) -> None:
        if isinstance(body, dict) and body.get("status") == "error":
            detail = body.get("status_details") or "no details given"
            raise InvalidRequestError(
                f"Moonshot could not extract text from {document.name!r}: {detail}",
                vendor=self.vendor_name,
                code="file_extract_error",
            )

    def _delete_request(self, file_id: str) -> VendorRequest:
        return VendorRequest("DELETE", self._url(f"/files/{file_id}"))

    @contextlib.contextmanager
    def _cleanup(self, file_id: str) -> Iterator[None]:
        """A failed delete only leaves a file behind: worth a warning, not the answer."""
        try:
            yield
        except VendorError as exc:
            logger.warning("could not delete Moonshot file %s: %s", file_id, exc)

    @contextlib.contextmanager
    def _file_errors(self, document: DocumentFile) -> Iterator[None]:
        """Upload errors as invalid requests: a file "exceeding the limit" is too large, not
        a conversation over the context window."""
        try:
            yield
        except ContextTooLongError as exc:
            raise InvalidRequestError(
                f"document {document.name!r}: {exc.message}",
                vendor=self.vendor_name,
                status_code=exc.status_code,
                code=exc.code,
                request_id=exc.request_id,
            ) from None

    def _remember(self, document: DocumentFile, body: Any) -> str:
        """The content answer as the JSON text Moonshot's docs put in the system message."""
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        cache = self._documents
        cache[document.key] = text
        with contextlib.suppress(KeyError):  # another thread got there first: fine
            cache.move_to_end(document.key)
            while len(cache) > self.document_cache_size:
                cache.popitem(last=False)
        return text


# ---------------------------------------------------------------------- message handling


def attach_files(
    messages: list[BaseMessage], files: Sequence[FileSource] | None, vendor: str
) -> list[BaseMessage]:
    """``messages`` with the per-call ``files`` added as file blocks to the last human
    message (a new one if there is none)."""
    if not files:
        return messages
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    blocks: list[str | dict[str, Any]] = []
    for source in files:
        if isinstance(source, tuple):
            name, data = source
        else:
            path = Path(source)
            try:
                name, data = path.name, path.read_bytes()
            except OSError as exc:
                raise InvalidRequestError(
                    f"cannot read {str(path)!r}: {exc.strerror}", vendor=vendor
                ) from None
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        encoded = base64.b64encode(data).decode()
        blocks.append({"type": "file", "base64": encoded, "mime_type": mime, "filename": name})
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, HumanMessage):
            content = message.content
            existing = [content] if isinstance(content, str) else list(content)
            updated = message.model_copy(update={"content": [*blocks, *existing]})
            return [*messages[:index], updated, *messages[index + 1 :]]
    return [*messages, HumanMessage(blocks)]


def plan_documents(messages: list[BaseMessage], vendor: str) -> list[BaseMessage | DocumentFile]:
    """The conversation with each human message's documents taken out and placed, in order,
    just before it (a human message left without text is dropped)."""
    plan: list[BaseMessage | DocumentFile] = []
    for message in messages:
        if not isinstance(message, HumanMessage) or isinstance(message.content, str):
            plan.append(message)
            continue
        kept: list[str | dict[str, Any]] = []
        for block in message.content:
            if isinstance(block, dict) and is_document(block):
                plan.append(document_of(block, vendor))
            else:
                kept.append(block)
        if len(kept) == len(message.content):
            plan.append(message)
        elif not _blank(kept):
            plan.append(message.model_copy(update={"content": kept}))
    return plan


def _blank(blocks: list[str | dict[str, Any]]) -> bool:
    """Whether content blocks hold nothing but empty text."""
    return all(
        not block.strip()
        if isinstance(block, str)
        else block.get("type") in TEXT_BLOCK_TYPES and not str(block.get("text", "")).strip()
        for block in blocks
    )


def is_document(block: dict[str, Any]) -> bool:
    if block.get("type") == "file":
        return True
    # A plain-text block given as base64 data or a file id rather than inline text.
    return block.get("type") == "text-plain" and "text" not in block


def document_of(block: dict[str, Any], vendor: str) -> DocumentFile:
    """A file content block as a :class:`DocumentFile`. LangChain hands models its v1 form
    (it converts the v0 ``source_type`` and OpenAI ``{"file": {...}}`` forms first); those
    are read too, for blocks that reach the model some other way."""
    raw = block.get("file")
    nested: dict[str, Any] = raw if isinstance(raw, dict) else {}
    name = _filename(block, nested)
    mime = block.get("mime_type") or ("text/plain" if block.get("type") == "text-plain" else "")
    file_id = nested.get("file_id") or block.get("file_id")
    if block.get("source_type") == "id":
        file_id = block.get("id")
    if file_id:
        if not _FILE_ID.fullmatch(str(file_id)):
            # It goes into a URL path signed with our key: no "../files" from a message.
            raise InvalidRequestError(f"not a Moonshot file id: {file_id!r}", vendor=vendor)
        return DocumentFile(name=name or str(file_id), file_id=str(file_id))
    if block.get("source_type") == "url" or block.get("url"):
        raise InvalidRequestError(
            "file URLs are not fetched; download the document and give it as base64 data"
            " (or pass local paths with files=[...])",
            vendor=vendor,
        )
    if isinstance(nested.get("file_data"), str):
        header, comma, payload = nested["file_data"].partition(",")
        if comma and header.startswith("data:"):
            mime = mime or header[5:].split(";")[0]
        data = _b64(payload if comma else header, vendor)
    elif isinstance(block.get("base64") or block.get("data"), str):
        data = _b64(block.get("base64") or block["data"], vendor)
    else:
        raise InvalidRequestError(
            "a file block needs base64 data ('base64' or 'data') or a Moonshot 'file_id'",
            vendor=vendor,
        )
    mime = mime or mimetypes.guess_type(name)[0] or "application/octet-stream"
    name = name or "document" + (mimetypes.guess_extension(mime) or "")
    return DocumentFile(name=name, data=data, mime_type=mime)


def _filename(block: dict[str, Any], nested: dict[str, Any]) -> str:
    """The file name wherever LangChain's forms keep it ('' if none)."""
    raw = block.get("extras")
    extras: dict[str, Any] = raw if isinstance(raw, dict) else {}
    places = [block, nested, extras, block.get("metadata"), extras.get("metadata")]
    for place in places:
        if isinstance(place, dict):
            for key in ("filename", "name") if place is not block else ("filename",):
                if isinstance(place.get(key), str) and place[key]:
                    return str(place[key])
    return ""


def _b64(text: str, vendor: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(
            "a file block's data is not valid base64", vendor=vendor
        ) from None


def create(card: ModelCard, settings: Settings, **overrides: Any) -> ChatMoonshot:
    """Catalog factory for vendor ``moonshot``."""
    kwargs = card_kwargs(
        card,
        base_url=settings.moonshot_base_url or MOONSHOT_BASE_URL,
        credentials={"api_key": settings.moonshot_api_key},
        overrides=overrides,
    )
    return ChatMoonshot(**kwargs)
