"""Who may read the log: a Jupyter-style token, the login that turns it into a cookie, and the limits around it.

Every request needs the token: an ``Authorization: Bearer`` header, the cookie set by the ``?token=`` login, or,
for API calls from scripts, ``?token=`` itself. A page opened with ``?token=`` is answered with a redirect to the
same URL without it (the token leaves the address bar and the history) that sets an HttpOnly, SameSite=Strict
cookie. Tokens are compared in constant time; a client that keeps failing is refused for a while (429) before its
token is even looked at.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import threading
import time
from collections import deque
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import parse_qsl, urlencode

from ..errors import InputError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_BYTES = 32
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is only reachable from this machine."""
    if host.strip("[]").lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def load_or_create_token(path: str | os.PathLike) -> str:
    """The token kept in ``path``, or a new one written there, readable by its owner only (0600), so the address of
    a server survives its restarts.

    Raises:
        InputError: the file cannot be read or written, is readable by others, or holds no usable token.
    """
    file = Path(path)
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(file)
    except OSError as exc:
        raise InputError(f"cannot create token file {file}: {exc.strerror or exc}; choose another --token-file"
                         ) from None
    token = new_token()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    return token


def _read_token(file: Path) -> str:
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:
        raise InputError(f"cannot read token file {file}: {exc.strerror or exc}; check its permissions") from None
    if mode & 0o077:
        raise InputError(f"token file {file} is readable by other users (mode {mode & 0o777:o}); run "
                         f"`chmod 600 {file}` or delete it to get a new token")
    if len(text) < 16 or not text.isprintable() or " " in text:
        raise InputError(f"token file {file} holds no usable token (expected one line of at least 16 characters); "
                         "delete it to get a new token")
    return text


class FailureLimiter:
    """At most ``max_failures`` failed logins per client within ``window_s``; beyond that the client is refused
    until its oldest failure leaves the window. Thread-safe; remembers at most ``max_clients`` clients."""

    def __init__(self, *, max_failures: int = 10, window_s: float = 60.0, max_clients: int = 4096):
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        """Whether ``client`` has used up its failures."""
        with self._lock:
            times = self._failures.get(client)
            if times is None:
                return False
            self._expire(times, time.monotonic())
            if not times:
                del self._failures[client]
            return len(times) >= self.max_failures

    def fail(self, client: str) -> None:
        """Count a failed login of ``client``."""
        now = time.monotonic()
        with self._lock:
            if client not in self._failures and len(self._failures) >= self.max_clients:
                # forget the quietest client rather than grow without bound under a spray of addresses
                del self._failures[min(self._failures, key=lambda c: self._failures[c][-1])]
            times = self._failures.setdefault(client, deque())
            self._expire(times, now)
            times.append(now)

    def _expire(self, times: deque[float], now: float) -> None:
        while times and now - times[0] > self.window_s:
            times.popleft()


class TokenAuth:
    """ASGI middleware: lets a request through to ``app`` only with the token (see the module docstring).

    Args:
        app: the application behind it.
        token: the token; None turns authentication off (``--no-auth``, loopback only), but then only requests
            naming a loopback host are served, so a web page elsewhere cannot reach the server by DNS rebinding.
        cookie_name: the session cookie (per port: cookies are shared by every port of a host).
        limiter: failed logins per client.
    """

    def __init__(self, app: ASGIApp, *, token: str | None, cookie_name: str,
                 limiter: FailureLimiter | None = None):
        self.app = app
        self.token = None if token is None else token.encode()
        self.cookie_name = cookie_name
        self.limiter = limiter or FailureLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.token is None:
            if is_loopback(_host(scope)):
                await self.app(scope, receive, send)
            else:
                await _plain(send, 403, "only loopback host names are served without authentication")
            return
        client = (scope.get("client") or ("?", 0))[0]
        if self.limiter.blocked(client):
            await _plain(send, 429, "too many failed logins; wait a minute", [(b"retry-after", b"60")])
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        from_query = next((v for k, v in query if k == "token"), None)
        # the first of header, query and cookie decides: a stale cookie must not spoil a fresh ?token= login
        given = (("header", _bearer(scope)), ("query", from_query), ("cookie", _cookie(scope, self.cookie_name)))
        source, offered = next(((where, t) for where, t in given if t is not None), (None, None))
        if offered is None:
            await _plain(send, 401, "authentication required: open the URL with ?token= that `edgecap serve` "
                                    "printed, or send Authorization: Bearer TOKEN", [(b"www-authenticate", b"Bearer")])
            return
        if not self._matches(offered):
            self.limiter.fail(client)
            # a cookie of an earlier server (restarted without --token-file) is dropped, so a page's many requests
            # do not use up the client's failures
            expire = [(b"set-cookie", f"{self.cookie_name}=; Path=/; Max-Age=0".encode())] if source == "cookie" else []
            await _plain(send, 401, "wrong token", [(b"www-authenticate", b"Bearer"), *expire])
            return
        if from_query is not None and scope["method"] == "GET" and not scope["path"].startswith("/api/"):
            await self._login(scope, send, [(k, v) for k, v in query if k != "token"])
            return
        await self.app(scope, receive, send)

    def _matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode("utf-8", "replace"), self.token)

    async def _login(self, scope: Scope, send: Send, rest: list[tuple[str, str]]) -> None:
        """The ``?token=`` login of a page: a cookie, and a redirect to the URL without the token."""
        location = scope["path"] + (f"?{urlencode(rest)}" if rest else "")
        cookie = (f"{self.cookie_name}={self.token.decode()}; Path=/; HttpOnly; SameSite=Strict"
                  f"{'; Secure' if scope.get('scheme') == 'https' else ''}")
        await _plain(send, 303, "logged in", [(b"location", location.encode("latin-1", "replace")),
                                              (b"set-cookie", cookie.encode())])


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _host(scope: Scope) -> str:
    host = _header(scope, b"host") or ""
    return host.rsplit(":", 1)[0] if not host.endswith("]") else host


def _bearer(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""  # another scheme counts as a wrong token


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed cookie header from some other site on this host: ignore it, not fail
        return None
    return jar[name].value if name in jar else None


async def _plain(send: Send, status: int, text: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
