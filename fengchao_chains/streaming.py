"""A streaming response that notices at once when its client hangs up.

Starlette's ``StreamingResponse`` under an ASGI 2.4 server (uvicorn) learns of a disconnect
only when its next write fails. A model that is slow to send its next piece (or a vendor
that stalls) would keep the upstream call, and its bill, running until then. This response
also listens for ``http.disconnect`` while it streams (Starlette's own code path for older
servers), so the stream is cancelled when the client leaves: the upstream request is
closed and the call is recorded as ``aborted`` with what it had consumed.
"""

from __future__ import annotations

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

_LISTENING_SPEC = "2.3"
"""The newest ASGI spec version for which Starlette listens for the disconnect itself."""


class HangUpAwareStreamingResponse(StreamingResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": _LISTENING_SPEC}}
        await super().__call__(scope, receive, send)
