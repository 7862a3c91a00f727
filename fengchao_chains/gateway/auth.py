"""Tokens and the request dependency that checks them.

A token is the fengchao SDK's own: an HS256 JWT signed with the key's secret, header
``{"alg":"HS256","sign_type":"SIGN","typ":"JWT"}``, payload ``{"api_key", "exp",
"timestamp"}`` with ``exp`` and ``timestamp`` in Unix **milliseconds**.  Clients sign their
own (the SDK does) or get one from ``GET /aigc/token``; both are the same thing.

Verifying reads ``api_key`` from the unverified payload, looks up that key's secret (none
for an unknown or revoked key), then lets PyJWT check the signature with ``HS256`` as the
only algorithm (so ``alg: none`` and algorithm confusion fail there).  ``exp`` is required
and checked here, because PyJWT reads it as seconds: a value below ``10**11`` is taken as
seconds (standard JWT libraries), anything larger as milliseconds; the two ranges cannot
overlap for any date between 1973 and the year 5138.

The token arrives as the raw ``Authorization`` header (the SDK sends no ``Bearer``; a
``Bearer`` prefix is accepted too) or, for browsers, in the ``fengchao_token`` cookie that
``POST /login`` sets.

Clients that can only hold a fixed string, such as OpenAI clients' ``api_key``, may send the
key pair itself instead, ``<api_key>:<secret_key>``: a JWT never contains ``:``, so the two
cannot be confused.  The secret is compared in constant time.

In the server neither costs a database query on the hot path: the key comes from the key
store's per-process cache (:mod:`fengchao_chains.gateway.key_cache`: revocations are pushed
to it), and a JWT that verified is remembered (:class:`VerifiedTokens`), so the same token
again is a digest, a dict lookup and two expiry checks.  The pair needs no cache of its own:
the cached key holds the secret, which is compared in constant time on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import jwt
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from fengchao_chains.errors import ConfigurationError, FengchaoError
from fengchao_chains.gateway.key_cache import KeyCache
from fengchao_chains.gateway.keys import ActiveKey, KeyStore

if TYPE_CHECKING:
    from fengchao_chains.runtime import Runtime

logger = logging.getLogger(__name__)

AUTH_COOKIE = "fengchao_token"
ALGORITHM = "HS256"
TOKEN_HEADERS = {"alg": ALGORITHM, "sign_type": "SIGN"}  # PyJWT adds "typ": "JWT"
SECONDS_EXP_BELOW = 10**11
MAX_LIFETIME_MS = 7 * 86400 * 1000  # the longest FENGCHAO_TOKEN_TTL_SECONDS allows
"""An ``exp`` below this is Unix seconds (year 5138); at or above it, milliseconds (1973)."""
TOKEN_MAX_CHARS = 4096
VERIFIED_TOKENS_MAX = 10_000


@dataclass(frozen=True)
class Caller:
    """Who is calling: the api_key a verified token was signed for, and whether it is an
    admin key."""

    api_key: str
    admin: bool = False


ANONYMOUS = Caller(api_key="anonymous")
"""The caller without a token when ``auth_required`` is off (no real key has this name)."""


class AuthError(FengchaoError):
    """A token that does not authenticate anyone.  The message is safe to show the client:
    it never contains the token or a secret."""


def issue_token(
    api_key: str, secret_key: str, ttl_seconds: int, *, now_ms: int | None = None
) -> str:
    """A token exactly as the SDK signs one, valid for ``ttl_seconds`` from ``now_ms``."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    payload = {"api_key": api_key, "exp": now + ttl_seconds * 1000, "timestamp": now}
    return jwt.encode(payload, secret_key, algorithm=ALGORITHM, headers=TOKEN_HEADERS)


@dataclass(frozen=True, slots=True)
class _Verified:
    caller: Caller
    exp_ms: float
    key: ActiveKey  # the cached key entry it was verified against


class VerifiedTokens:
    """JWTs that verified, by the SHA-256 digest of the token (the token itself, a bearer
    credential, is not kept), in a bounded LRU.

    An entry answers only until the token's own ``exp`` and only while the key it was
    verified against is still that key's current cache entry: revoking, evicting, expiring
    or clearing the key forgets its tokens with it, without an index from keys to tokens.
    """

    def __init__(self, keys: KeyCache, max_entries: int = VERIFIED_TOKENS_MAX) -> None:
        self._keys = keys
        self._max = max(1, max_entries)
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> Caller | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        with self._lock:
            if time.time() * 1000 >= entry.exp_ms or not self._keys.is_current(entry.key):
                self._entries.pop(digest, None)
                return None
            if digest in self._entries:
                self._entries.move_to_end(digest)
        return entry.caller

    def remember(self, digest: bytes, caller: Caller, exp_ms: float, key: ActiveKey) -> None:
        """Keep a verified token, if its key is cached (else there is nothing to tie it to:
        caching is off or the listener is down)."""
        if not self._keys.is_current(key):
            return
        with self._lock:
            self._entries[digest] = _Verified(caller, exp_ms, key)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenVerifier:
    """Checks tokens against the key store: its cache while the server runs, and the table
    otherwise (a revocation reaches the cache of every process at once, by ``NOTIFY``)."""

    def __init__(self, keys: KeyStore, *, max_tokens: int = VERIFIED_TOKENS_MAX) -> None:
        self.keys = keys
        self.tokens = VerifiedTokens(keys.cache, max_tokens)

    async def averify(self, token: str) -> Caller:
        """The caller the token was signed for; :class:`AuthError` otherwise."""
        if len(token) > TOKEN_MAX_CHARS:
            raise AuthError("invalid token: too long")
        if ":" in token:
            api_key, _, secret_key = token.partition(":")
            return await self.averify_pair(api_key, secret_key)
        digest = token_digest(token)
        known = self.tokens.get(digest)
        if known is not None:
            return known
        api_key = _claimed_api_key(token)
        active = await self.keys.aactive(api_key)
        if active is None:
            raise AuthError("invalid token: unknown or revoked api_key")
        claims = _verified_claims(token, active.secret_key)
        exp_ms = _checked_exp_ms(claims.get("exp"))
        caller = Caller(api_key=api_key, admin=active.admin)
        self.tokens.remember(digest, caller, exp_ms, active)
        return caller

    async def averify_pair(self, api_key: str, secret_key: str) -> Caller:
        """The caller whose api_key and secret_key these are; :class:`AuthError` otherwise
        (the same message whether the key or the secret is wrong)."""
        active = await self.keys.aactive(api_key) if api_key and secret_key else None
        if active is None or not hmac.compare_digest(
            active.secret_key.encode("utf-8"), secret_key.encode("utf-8")
        ):
            raise AuthError("invalid credentials: unknown api_key or wrong secret_key")
        return Caller(api_key=api_key, admin=active.admin)


def _claimed_api_key(token: str) -> str:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthError("invalid token: not a JWT") from None
    api_key = claims.get("api_key")
    if not isinstance(api_key, str) or not api_key:
        raise AuthError("invalid token: no api_key")
    return api_key


def _verified_claims(token: str, secret: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"verify_exp": False, "require": ["exp"]},
        )
    except jwt.InvalidAlgorithmError:
        raise AuthError(f"invalid token: the algorithm must be {ALGORITHM}") from None
    except jwt.InvalidSignatureError:
        raise AuthError("invalid token: the signature does not match the api_key") from None
    except jwt.MissingRequiredClaimError:
        raise AuthError("invalid token: no exp") from None
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {type(exc).__name__}") from None
    return claims


def _checked_exp_ms(exp: object) -> float:
    """``exp`` in Unix milliseconds, if it is a number in the future and at most 7 days
    ahead."""
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise AuthError("invalid token: exp must be a number (Unix time in milliseconds)")
    exp_ms = exp * 1000 if exp < SECONDS_EXP_BELOW else exp
    now_ms = time.time() * 1000
    if now_ms >= exp_ms:
        raise AuthError("token expired: sign a new one")
    if exp_ms - now_ms > MAX_LIFETIME_MS:
        # a client signs its own tokens: without a cap, one leaked token would work forever
        raise AuthError("invalid token: exp is more than 7 days ahead; sign shorter-lived tokens")
    return float(exp_ms)


# --------------------------------------------------------------------------- requests ----
def token_from_request(request: Request) -> str | None:
    """The ``Authorization`` header (raw, or after ``Bearer``), else the login cookie."""
    header = request.headers.get("authorization", "").strip()
    if header:
        scheme, _, rest = header.partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" else header
        return token or None
    return request.cookies.get(AUTH_COOKIE) or None


def token_verifier(request: Request) -> TokenVerifier:
    """The app's verifier (the runtime's, over its key store)."""
    runtime: Runtime = request.app.state.runtime
    return runtime.token_verifier


class AuthHTTPException(HTTPException):
    """An authentication failure whose ``detail`` is the whole JSON body
    (``{"status": 401, "msg": ...}``), answered as such by :func:`install_auth_errors`."""

    def __init__(self, status_code: int, msg: str) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="fengchao"'} if status_code == 401 else None
        super().__init__(status_code, {"status": status_code, "msg": msg}, headers)


async def require_caller(request: Request) -> Caller:
    """FastAPI dependency: the verified caller (also left in ``request.state.caller``).

    No token: 401, or :data:`ANONYMOUS` when ``auth_required`` is off; a token that is
    sent is verified either way.  A master key that cannot decrypt the stored secrets is
    the server's fault: 500, logged.
    """
    runtime: Runtime = request.app.state.runtime
    token = token_from_request(request)
    if token is None:
        if runtime.settings.auth_required:
            raise AuthHTTPException(
                401, "missing token: send it in the Authorization header (see /aigc/token)"
            )
        caller = ANONYMOUS
    else:
        try:
            caller = await token_verifier(request).averify(token)
        except AuthError as exc:
            logger.info("refused a token: %s", exc)
            raise AuthHTTPException(401, str(exc)) from None
        except ConfigurationError as exc:
            logger.error("cannot check tokens: %s", exc)
            raise AuthHTTPException(500, "the server cannot check tokens now") from None
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(require_caller)]


async def auth_error_response(request: Request, exc: Exception) -> Response:
    """The JSON body of an :class:`AuthHTTPException`; a browser navigating to a protected
    page (a GET that accepts HTML, outside ``/aigc``) is sent to ``/login`` instead."""
    if not isinstance(exc, AuthHTTPException):  # registered for that class only
        raise exc
    root = request.scope.get("root_path", "")
    path = request.url.path
    if (
        exc.status_code == 401
        and request.method == "GET"
        and "text/html" in request.headers.get("accept", "")
        and not path.startswith(f"{root}/aigc")
    ):
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{root}/login?next={quote(target, safe='/')}", status_code=303)
    return JSONResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)


def install_auth_errors(app: FastAPI) -> None:
    """Answer :class:`AuthHTTPException` with its JSON body (the SDK's ``{"status", "msg"}``)
    instead of FastAPI's ``{"detail": ...}``."""
    app.add_exception_handler(AuthHTTPException, auth_error_response)
