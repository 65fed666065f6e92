"""Sessions and their protections: signed cookies, CSRF tokens, the login throttle, the
login / admin dependencies of pages and API, and the security headers on every response.

The cookie holds the store's session token plus an HMAC of it under the app secret
(``app.state.secret_key``), so a forged or altered cookie is rejected before the database is asked.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException

from rlhfkit.feedback.web.deps import Store

COOKIE = "rlhf_session"


def sign(request: Request, value: str) -> str:
    return hmac.new(request.app.state.secret_key, value.encode(), hashlib.sha256).hexdigest()


def csrf_token(request: Request, session_token: str) -> str:
    return sign(request, "csrf:" + session_token)


def cookie_value(request: Request, session_token: str) -> str:
    return f"{session_token}.{sign(request, session_token)}"


def check_csrf(request: Request, form: Any) -> None:
    token = getattr(request.state, "session_token", "")
    sent = str(form.get("csrf", ""))
    if not token or not hmac.compare_digest(sent, csrf_token(request, token)):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


# ---------------------------------------------------------------------------------------------
# login throttle


class LoginThrottle:
    """Failed logins per key in a sliding window, in this process's memory (one `rlhf label serve`
    process; behind several workers each counts its own).

    A login attempt is charged to two keys (:func:`throttle_keys`): the account name from any
    address, so neither a spoofed ``X-Forwarded-For`` nor a pool of addresses buys more guesses at
    one password, and the client address over all names, so one password cannot be sprayed across
    every account. An address gets ``per_address`` failures (default 4 x ``max_failures``: several
    people typing behind one office NAT must not lock each other out); any other key
    ``max_failures``."""

    def __init__(self, max_failures: int, window_s: float, clock=time.monotonic, *,
                 per_address: int | None = None):
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self.per_address = per_address or 4 * max_failures
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _limit(self, key: tuple[str, str]) -> int:
        return self.per_address if key[0] == "address" else self.max_failures

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, key: tuple[str, str]) -> int:
        """Seconds until another attempt is allowed; 0 when it is allowed now."""
        with self._lock:
            now = self.clock()
            times = self._recent(key, now)
            limit = self._limit(key)
            if len(times) < limit:
                return 0
            return max(1, math.ceil(times[-limit] + self.window_s - now))

    def failed(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.setdefault(key, []).append(self.clock())

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.pop(key, None)


def throttle_keys(request: Request, name: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The (name, address) keys a login attempt for ``name`` is charged to (see LoginThrottle)."""
    return ("name", name.strip().lower()), ("address", request.client.host if request.client else "?")


def login_refusal(throttle: LoginThrottle, request: Request, name: str) -> tuple[int, str] | None:
    """(seconds to wait, why) when this attempt must not even be checked; None when it may be."""
    by_name, by_address = (throttle.retry_after(k) for k in throttle_keys(request, name))
    if by_name:
        return by_name, f"too many failed logins for this name: try again in {by_name} s"
    if by_address:
        return by_address, f"too many failed logins from this address: try again in {by_address} s"
    return None


def login_failed(throttle: LoginThrottle, request: Request, name: str) -> None:
    for key in throttle_keys(request, name):
        throttle.failed(key)


def login_succeeded(throttle: LoginThrottle, request: Request, name: str) -> None:
    # Only the name's count: a success must not wipe the address's count, or someone with one valid
    # account could reset it between rounds of guessing at others.
    throttle.succeeded(throttle_keys(request, name)[0])


# ---------------------------------------------------------------------------------------------
# who is asking: dependencies of pages (cookie) and API (bearer token)


class LoginRequired(Exception):
    """Raised by page dependencies; turned into a redirect to /login."""


class PasswordChangeRequired(Exception):
    """Raised by page dependencies for an account that must replace a password someone else saw
    (invited, or reset by an admin); turned into a redirect to /account."""


# What an account with ``must_change_password`` may still reach: changing it, and leaving.
PASSWORD_CHANGE_PATHS = ("/account", "/logout", "/api/password")


def page_user(request: Request, store: Store):
    raw = request.cookies.get(COOKIE, "")
    token, _, sig = raw.rpartition(".")
    if not token or not hmac.compare_digest(sig, sign(request, token)):
        raise LoginRequired()
    me = store.annotator_for_session(token)
    if me is None:
        raise LoginRequired()
    request.state.annotator = me
    request.state.session_token = token
    if me.must_change_password and request.url.path not in PASSWORD_CHANGE_PATHS:
        raise PasswordChangeRequired()
    return me


PageUser = Annotated[Any, Depends(page_user)]  # a page's signed-in annotator, else to /login


def page_admin(me: PageUser):
    if me.role != "admin":
        raise HTTPException(403, "admin pages need an admin account")
    return me


PageAdmin = Annotated[Any, Depends(page_admin)]


def api_user(request: Request, store: Store):
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing 'Authorization: Bearer <token>' (POST /api/login)",
                            headers={"WWW-Authenticate": "Bearer"})
    me = store.annotator_for_session(token.strip())
    if me is None:
        raise HTTPException(401, "invalid or expired token", headers={"WWW-Authenticate": "Bearer"})
    if me.must_change_password and request.url.path not in PASSWORD_CHANGE_PATHS:
        raise HTTPException(403, "choose your own password first: POST /api/password {current, new}")
    return me


ApiUser = Annotated[Any, Depends(api_user)]


# ---------------------------------------------------------------------------------------------
# every response


# The largest request body read (a labelling form with a 20,000-character rationale is ~80 kB): a
# larger one is refused from its Content-Length before anything parses it (a 30 MB form to /login
# was parsed, unauthenticated). A body without a length (chunked) is refused too: browsers and API
# clients send one.
MAX_BODY_BYTES = 1_000_000


def body_too_large(request: Request, limit: int) -> HTMLResponse | None:
    """The refusal of a request whose body is over ``limit`` bytes or has no declared length."""
    length = request.headers.get("content-length")
    if length is None:
        if request.headers.get("transfer-encoding", "").lower() not in ("", "identity"):
            return HTMLResponse("a request body needs a Content-Length", status_code=411)
        return None
    if not length.isdigit() or int(length) > limit:
        return HTMLResponse(f"request body over {limit} bytes refused", status_code=413)
    return None


async def security_headers(request: Request, call_next):
    """HTTP middleware: refuse oversized bodies and cross-site form posts, and set CSP and friends on
    every response."""
    refused = body_too_large(request, getattr(request.app.state, "max_body_bytes", MAX_BODY_BYTES))
    if refused is not None:
        return refused
    if request.method not in ("GET", "HEAD", "OPTIONS") and not request.url.path.startswith("/api/"):
        # Browsers send Origin on every cross-site POST; SameSite=Lax already withholds the
        # cookie there, this refuses the request outright (login form included).
        # Host only, not the scheme: behind a TLS proxy the app sees http while the browser
        # says https. "null" (sandboxed frames, file: pages) is never one of our own pages.
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
            return HTMLResponse("cross-site form post refused", status_code=403)
    response = await call_next(request)
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response
