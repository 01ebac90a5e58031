"""The application of ``edgecap serve``: the page and its static files, the API, authentication and security
headers around them, and running it on a socket with uvicorn."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import InputError
from ..events import EventStoreError, thumbnail_dir
from .api import Api
from .auth import ASGIApp, FailureLimiter, Receive, Scope, Send, TokenAuth, is_loopback

STATIC = Path(__file__).parent / "static"
# Scripts, styles and images only from this server, no inline script (a caption that slipped through escaping
# still could not run), no framing, no MIME sniffing, no referrer carrying the page's URL elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = ((b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"))


class SecurityHeaders:
    """ASGI middleware adding ``SECURITY_HEADERS`` to every response, refusals included."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def _page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                        headers={"cache-control": "no-cache"})


def _error(status: int):
    async def handle(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=status, headers={"cache-control": "no-store"})

    return handle


def create_app(db: str | os.PathLike, *, token: str | None, port: int, thumbnails: str | os.PathLike | None = None,
               poll_s: float = 0.5, limiter: FailureLimiter | None = None) -> ASGIApp:
    """The whole server as an ASGI application.

    Args:
        db: the event database (opened read-only, per request).
        token: the access token; None serves without authentication (only for loopback host names).
        port: the port it will listen on (names the session cookie: browsers share cookies across ports).
        thumbnails: the folder thumbnails may be served from (default: ``thumbnails/`` next to the database).
        poll_s: how often the live stream checks for writes.
        limiter: failed-login limits (default: 10 per client per minute).

    Returns:
        the application, authentication and security headers included.
    """
    api = Api(Path(db), Path(thumbnails) if thumbnails is not None else thumbnail_dir(db), poll_s=poll_s)
    app = Starlette(routes=[Route("/", _page), *api.routes(), Mount("/static", StaticFiles(directory=STATIC))],
                    exception_handlers={InputError: _error(400), EventStoreError: _error(503)})
    return SecurityHeaders(TokenAuth(app, token=token, cookie_name=f"edgecap_token_{port}", limiter=limiter))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port).

    Raises:
        InputError: the address cannot be used (taken, not local, not resolvable).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto as resolved (IPPROTO_TCP), not 0: asyncio turns Nagle off only for sockets that say TCP, and with
        # Nagle on, every request after the first on a keep-alive connection waited 40 ms for a delayed ACK
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc}; check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or "
                         "--host") from None
    return sock


def check_no_auth(host: str) -> None:
    """``--no-auth`` is for a loopback address only: anyone who reaches the port would read every caption."""
    if not is_loopback(host):
        raise InputError(f"--no-auth is accepted only on a loopback address (127.0.0.1, ::1, localhost), got "
                         f"--host {host}; drop --no-auth and use the printed token")


def _server(app: ASGIApp):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1,
                            lifespan="off", server_header=False)
    return uvicorn.Server(config)


def run(app: ASGIApp, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGINT or SIGTERM (open live streams are closed after one second)."""
    _server(app).run(sockets=[sock])


class BackgroundServer:
    """Serve ``app`` on ``sock`` from a daemon thread, beside other work (``edgecap run --serve``): the process's
    signals stay with its main thread, and `stop` ends the server."""

    def __init__(self, app: ASGIApp, sock: socket.socket):
        self._server = _server(app)
        self._sock = sock
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="edgecap-serve",
                                        daemon=True)

    def start(self) -> BackgroundServer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()
