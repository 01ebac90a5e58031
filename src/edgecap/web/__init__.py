"""``edgecap serve``: review the event log in a browser (timeline, thumbnails, search, live updates) and through a
JSON API, behind a token. Needs the ``web`` extra (Starlette and uvicorn): ``pip install 'edgecap[web]'``.

Modules, by job (arrows are imports; none points back):
    auth    the token, its cookie login, failed-login limits, loopback check   -> errors
    api     the JSON routes and the search-box syntax                           -> events, sources
    app     the application (page, API, auth, security headers), bind, run     -> api, auth, events
    static/ the page: index.html, app.css, app.js (no build step, no CDN)
"""

try:
    import starlette  # noqa: F401  (only to fail early with the fix)
    import uvicorn  # noqa: F401
except ImportError as exc:
    from ..errors import DependencyError

    raise DependencyError(f"`edgecap serve` needs the web extra, which is not installed ({exc.name} is missing): "
                          "pip install 'edgecap[web]'") from None

from .app import BackgroundServer, bind, check_no_auth, create_app, run
from .auth import load_or_create_token, new_token

__all__ = ["BackgroundServer", "bind", "check_no_auth", "create_app", "load_or_create_token", "new_token", "run"]
