"""Who is asking and may they: sessions (cookie), API tokens (Bearer), CSRF, login throttling.

A browser session is a random cookie (Secure, HttpOnly, SameSite=Strict) whose SHA-256 names a row
of web_sessions; every state-changing request made with that cookie must carry the session's CSRF
token (form field `csrf_token` or header `X-CSRF-Token`). Requests with a Bearer token carry no
ambient credential and need none.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from collections.abc import Callable

from fastapi import Depends, HTTPException, Request

from msfollowup.app import accounts
from msfollowup.app.accounts import Principal

SESSION_COOKIE = "msf_session"
PRE_CSRF_COOKIE = "msf_login_csrf"  # double-submit token of the login and setup forms (no session yet)
THROTTLE_FAILURES = 5
THROTTLE_SECONDS = 15 * 60


class LoginRequired(Exception):
    """No valid session or token: pages redirect to /login, the API answers 401."""


class Throttle:
    """Failed logins per user name and per client address; after THROTTLE_FAILURES within the
    window, further attempts are refused until it has passed (a correct password included)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < THROTTLE_SECONDS]
        self._failures[key] = times
        return times

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= (THROTTLE_FAILURES * 4 if k.startswith("host:") else THROTTLE_FAILURES)
                       for k in keys)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._failures.pop(k, None)


def client_host(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def is_loopback(request: Request) -> bool:
    try:
        return ipaddress.ip_address(client_host(request)).is_loopback
    except ValueError:
        return False


def resolve(request: Request) -> Principal | None:
    """The principal of a Bearer token or a session cookie, or None."""
    ctx = request.app.state.ctx
    auth = request.headers.get("authorization", "")
    if auth:
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return None
        with ctx.db.session() as s:
            return accounts.token_principal(s, secret.strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    with ctx.db.session() as s:
        return accounts.session_principal(s, cookie)


async def current(request: Request) -> Principal:
    principal = resolve(request)
    if principal is None:
        raise LoginRequired()
    request.state.user = principal.name
    if request.method not in ("GET", "HEAD", "OPTIONS") and principal.csrf_token is not None:
        await _check_csrf(request, principal.csrf_token)
    return principal


async def _check_csrf(request: Request, expected: str) -> None:
    sent = request.headers.get("x-csrf-token")
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else None
    if not sent or not secrets.compare_digest(sent, expected):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


def require(permission: str) -> Callable[..., object]:
    async def dependency(principal: Principal = Depends(current)) -> Principal:
        if not principal.may(permission):
            raise HTTPException(403, f"your role ({principal.role}) may not do this ({permission})")
        return principal

    return dependency


def check_pre_csrf(request: Request, sent: str | None) -> None:
    expected = request.cookies.get(PRE_CSRF_COOKIE)
    if not expected or not sent or not secrets.compare_digest(expected, sent):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
