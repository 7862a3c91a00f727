"""Getting a token: ``GET /aigc/token`` for programs, ``/login`` and ``/logout`` for browsers.

``/aigc/token`` takes the credentials in the query string, as the fengchao server did (its Go
SDK calls it that way), so uvicorn's access log would print the secret: importing this
module adds a filter to the ``uvicorn.access`` logger that masks ``secret_key=`` values.

``/login`` is a small form for reaching the LangServe playground in a browser: it checks the
api_key and secret_key and sets an HttpOnly, SameSite=Lax ``fengchao_token`` cookie holding
an ordinary token (``FENGCHAO_TOKEN_TTL_SECONDS``), then redirects to ``?next=`` when that
is a path on this server, never elsewhere.
"""

from __future__ import annotations

import html
import logging
import re
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from fengchao_chains.errors import ConfigurationError
from fengchao_chains.gateway.auth import (
    AUTH_COOKIE,
    AuthError,
    TokenVerifier,
    issue_token,
    token_verifier,
)

logger = logging.getLogger(__name__)

router = APIRouter(tags=["auth"])

_SECRET_IN_QUERY = re.compile(r"(secret_key=)[^&\s#\"]*", re.IGNORECASE)
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
}


# --------------------------------------------------------------------------- access log --
class SecretQueryFilter(logging.Filter):
    """Masks ``secret_key=...`` in a log record's arguments (uvicorn's access log passes the
    request path with its query string as one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _SECRET_IN_QUERY.sub(r"\1***", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def redact_access_log() -> None:
    """Add :class:`SecretQueryFilter` to uvicorn's access log and the app's own (once)."""
    for name in ("uvicorn.access", "fengchao_chains.access"):
        access = logging.getLogger(name)
        if not any(isinstance(f, SecretQueryFilter) for f in access.filters):
            access.addFilter(SecretQueryFilter())


redact_access_log()


# --------------------------------------------------------------------------- checks ------
async def _checked(verifier: TokenVerifier, api_key: str | None, secret_key: str | None) -> bool:
    """Whether the pair is an active key and its secret (compared in constant time)."""
    try:
        await verifier.averify_pair(api_key or "", secret_key or "")
    except AuthError:
        return False
    return True


def local_path(target: str | None) -> str:
    """``target`` when it is a path on this server, else ``/`` (no open redirect: ``//host``,
    ``/\\host``, schemes and control characters are all refused)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(char) < 0x20 or ord(char) == 0x7F for char in target)
    ):
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def _ttl(request: Request) -> int:
    return int(request.app.state.runtime.settings.token_ttl_seconds)


# --------------------------------------------------------------------------- /aigc/token -
@router.get("/aigc/token")
@router.get("/aigc/token/", include_in_schema=False)
async def aigc_token(
    request: Request, api_key: str | None = None, secret_key: str | None = None
) -> JSONResponse:
    """A token for a key, the same as the SDK signs itself; 401 for wrong credentials."""
    try:
        valid = await _checked(token_verifier(request), api_key, secret_key)
    except ConfigurationError as exc:
        logger.error("cannot check credentials: %s", exc)
        return JSONResponse({"status": 500, "msg": "the server cannot issue tokens now"}, 500)
    if not valid or api_key is None or secret_key is None:
        return JSONResponse(
            {"status": 401, "msg": "invalid api_key or secret_key"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="fengchao"'},
        )
    token = issue_token(api_key, secret_key, _ttl(request))
    return JSONResponse({"status": 200, "msg": "执行成功", "token": token})


# --------------------------------------------------------------------------- browsers ----
@router.get("/login", response_class=HTMLResponse)
async def login_page(next: str | None = None) -> HTMLResponse:
    """The login form; ``next`` is where to go after signing in."""
    return _login_page(local_path(next))


@router.post("/login", response_model=None)
async def login(
    request: Request,
    api_key: Annotated[str, Form()] = "",
    secret_key: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    """Check the form and set the token cookie, then 303 to ``next`` (a local path) or ``/``."""
    target = local_path(next or request.query_params.get("next"))
    try:
        valid = await _checked(token_verifier(request), api_key, secret_key)
    except ConfigurationError as exc:
        logger.error("cannot check credentials: %s", exc)
        return _login_page(target, "The server cannot check keys now.", status_code=500)
    if not valid:
        return _login_page(target, "Wrong api_key or secret_key.", status_code=401)
    ttl = _ttl(request)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        AUTH_COOKIE,
        issue_token(api_key, secret_key, ttl),
        max_age=ttl,
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="lax",
    )
    logger.info("browser login for API key %s", api_key)
    return response


@router.post("/logout")
async def logout() -> RedirectResponse:
    """Clear the token cookie and go back to the login form."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(AUTH_COOKIE, path="/", httponly=True, samesite="lax")
    return response


def _login_page(target: str, error: str | None = None, *, status_code: int = 200) -> HTMLResponse:
    notice = f'<p class="error">{html.escape(error)}</p>' if error else ""
    page = _LOGIN_HTML.format(next=html.escape(target, quote=True), notice=notice)
    return HTMLResponse(page, status_code=status_code, headers=_PAGE_HEADERS)


_LOGIN_HTML = """<!doctype html>
<html lang="zh">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fengchao · 登录</title>
<style>
body {{ font-family: sans-serif; max-width: 24rem; margin: 4rem auto; padding: 0 1rem; }}
label {{ display: block; margin-top: 1rem; }}
input {{ width: 100%; padding: .4rem; box-sizing: border-box; }}
button {{ margin-top: 1.2rem; padding: .5rem 1.2rem; }}
.error {{ color: #b00020; }}
</style>
</head>
<body>
<h1>fengchao 登录</h1>
{notice}
<form method="post" action="login">
<input type="hidden" name="next" value="{next}">
<label>api_key <input name="api_key" autocomplete="username" required></label>
<label>secret_key
<input name="secret_key" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form>
</body>
</html>
"""
