"""The JSON API of ``edgecap serve``: events (search and keyset pages), one event, its thumbnail, cameras, a
server-sent-event stream of writes, and a health check. Every route reads the database read-only, per request.

The search text is the box of the page: free words, searched like ``edgecap events search`` (each word must occur
in the caption, by stem), plus filter tokens ``camera:NAME`` and ``kind:KIND`` (quote a name with spaces:
``camera:"front door"``).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, AsyncIterator, Iterable

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import InputError
from ..events import Event, EventStoreError, cameras, changes, get_event, search_page
from ..events.similar import SimilarIndex
from ..events.thumbs import resolve_thumbnail
from ..sources import mask_url

MAX_PAGE = 500
DEFAULT_PAGE = 100
KEEPALIVE_S = 15.0  # a comment this often keeps proxies from closing an idle stream and finds closed clients
_TOKEN = re.compile(r'(?<!\S)(camera|kind):(?:"([^"]*)"|(\S+))')
_NO_STORE = {"cache-control": "no-store"}


@dataclass(frozen=True)
class Query:
    """A search box and its URL parameters, read: caption words and filters."""

    text: str
    cameras: tuple[str, ...]
    kinds: tuple[str, ...]


def parse_query(q: str, *, cameras: Iterable[str] = (), kinds: Iterable[str] = ()) -> Query:
    """Split the search box into caption words and ``camera:``/``kind:`` tokens; URL filters add to the tokens.

    Example:
        >>> parse_query('red car camera:"front door" kind:scene')
        Query(text='red car', cameras=('front door',), kinds=('scene',))
    """
    found: dict[str, list[str]] = {"camera": list(cameras), "kind": list(kinds)}
    for m in _TOKEN.finditer(q):
        found[m.group(1)].append(m.group(2) if m.group(2) is not None else m.group(3))
    text = " ".join(_TOKEN.sub(" ", q).split())
    return Query(text, tuple(dict.fromkeys(found["camera"])), tuple(dict.fromkeys(found["kind"])))


_URL_IN_TEXT = re.compile(r"\S*://\S*")
_TRAILING = ":;,.)]'\""
MAX_SQLITE_INT = 2**63 - 1


def _mask_text(text: str) -> str:
    """Mask each URL inside free text on its own: mask_url reads a secret query value up to the next & # or ;, so
    given a whole message it also swallowed the words after the URL (the reason an outage is given)."""
    if not any(ch.isspace() for ch in text):
        return mask_url(text)

    def one(m: re.Match) -> str:
        url = m.group(0)
        core = url.rstrip(_TRAILING)
        return mask_url(core) + url[len(core):]

    return _URL_IN_TEXT.sub(one, text)


def _masked(value: Any) -> Any:
    """Details with any URL's password masked: the runtime masks them already, the page must never be the leak."""
    if isinstance(value, str):
        return _mask_text(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _event_id(request: Request) -> int | None:
    """The path's event id, or None past SQLite's integers (no event has it; SQLite would raise OverflowError)."""
    event_id = request.path_params["event_id"]
    return event_id if event_id <= MAX_SQLITE_INT else None


def event_json(ev: Event) -> dict[str, Any]:
    """The API form of an event: the fields of ``edgecap events search --json`` plus ``thumbnail_url``; the
    thumbnail is named by its file name only (the page's cache key), not the server's path to it."""
    record = ev.to_json()
    record["details"] = _masked(record["details"])
    record["thumbnail"] = PurePath(ev.thumbnail).name if ev.thumbnail else None
    record["thumbnail_url"] = f"/api/events/{ev.id}/thumbnail.jpg" if ev.thumbnail else None
    return record


def _ascii_int(text: str, max_digits: int) -> int | None:
    """The value of ``text`` when it is 1 to ``max_digits`` ASCII digits, else None: str.isdigit also takes "\xb2"
    (a superscript two), which int() refuses, and int() refuses more than 4,300 digits."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= max_digits else None


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE
    value = _ascii_int(text, len(str(MAX_PAGE)))
    if value is None or not 1 <= value <= MAX_PAGE:
        raise InputError(f"limit must be an integer from 1 to {MAX_PAGE}, got {text[:20]!r}")
    return value


class Api:
    """The routes, bound to one database and its thumbnail folder.

    Args:
        db: the event database.
        thumbnails: the only folder thumbnails are served from.
        poll_s: how often the stream looks for new writes.
    """

    def __init__(self, db: Path, thumbnails: Path, *, poll_s: float = 0.5):
        self.db = db
        self.thumbnails = thumbnails.resolve()
        self.poll_s = poll_s
        self.similar_index = SimilarIndex(db)

    def routes(self) -> list[Route]:
        return [
            Route("/api/events", self.events),
            Route("/api/events/{event_id:int}", self.event),
            Route("/api/events/{event_id:int}/thumbnail.jpg", self.thumbnail),
            Route("/api/events/{event_id:int}/similar", self.similar),
            Route("/api/cameras", self.cameras),
            Route("/api/stream", self.stream),
            Route("/healthz", self.healthz),
        ]

    def events(self, request: Request) -> Response:
        """``GET /api/events?q=&camera=&kind=&since=&until=&limit=&cursor=``, newest first."""
        params = request.query_params
        query = parse_query(params.get("q", ""), cameras=params.getlist("camera"), kinds=params.getlist("kind"))
        found, cursor = search_page(self.db, query.text, cameras=query.cameras or None, kinds=query.kinds or None,
                                    since=params.get("since") or None, until=params.get("until") or None,
                                    limit=_limit(params.get("limit")), cursor=params.get("cursor") or None)
        return JSONResponse({"events": [event_json(ev) for ev in found], "next_cursor": cursor}, headers=_NO_STORE)

    def _get(self, request: Request) -> Event | None:
        event_id = _event_id(request)
        return None if event_id is None else get_event(self.db, event_id)

    def event(self, request: Request) -> Response:
        ev = self._get(request)
        if ev is None:
            return JSONResponse({"error": "no such event"}, status_code=404, headers=_NO_STORE)
        return JSONResponse(event_json(ev), headers=_NO_STORE)

    async def similar(self, request: Request) -> Response:
        """``GET /api/events/{id}/similar?limit=``: the nearest scene events by image embedding (cosine), the event
        itself excluded, most similar first, each with a ``similarity``; ``reason`` says why the list is empty."""
        limit = _limit(request.query_params.get("limit"))
        event_id = _event_id(request)
        if event_id is None:
            return JSONResponse({"error": "no such event"}, status_code=404, headers=_NO_STORE)
        found = await to_thread.run_sync(lambda: self.similar_index.nearest(event_id, limit=limit))
        if found is None:
            return JSONResponse({"error": "no such event"}, status_code=404, headers=_NO_STORE)
        events = [{**event_json(ev), "similarity": round(score, 4)} for ev, score in found.events]
        return JSONResponse({"events": events, "next_cursor": None, "reason": found.reason}, headers=_NO_STORE)

    def thumbnail(self, request: Request) -> Response:
        """The thumbnail, only if its stored path resolves (symlinks followed) to a file inside the folder."""
        ev = self._get(request)
        path = None if ev is None or not ev.thumbnail else resolve_thumbnail(self.thumbnails, ev.thumbnail)
        if path is None:
            return JSONResponse({"error": "no thumbnail"}, status_code=404, headers=_NO_STORE)
        return FileResponse(path, media_type="image/jpeg", headers={"cache-control": "private, max-age=300"})

    def cameras(self, request: Request) -> Response:
        """Each camera: its newest event and status, its open outage, and a state."""
        out = []
        for cam in cameras(self.db):
            status = cam.last_status.kind if cam.last_status is not None else None
            out.append({"camera": cam.camera,
                        "state": "down" if cam.open_outage is not None else status or "unknown",
                        "last_event": None if cam.last_event is None else event_json(cam.last_event),
                        "open_outage": None if cam.open_outage is None else event_json(cam.open_outage)})
        return JSONResponse({"cameras": out}, headers=_NO_STORE)

    def healthz(self, request: Request) -> Response:
        """Whether the database can be read (200) or not (503)."""
        try:
            _, mark = changes(self.db, None)
        except EventStoreError as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=503, headers=_NO_STORE)
        return JSONResponse({"ok": True, "writes": mark}, headers=_NO_STORE)

    async def stream(self, request: Request) -> Response:
        """``GET /api/stream``: server-sent events, one ``data:`` JSON event per write (new or updated event), from
        now on, or from the ``Last-Event-ID`` an ``EventSource`` sends when it reconnects."""
        last = request.headers.get("last-event-id", "")
        after = _ascii_int(last, 18)  # 18 digits: within SQLite's integers
        return StreamingResponse(self._writes(after), media_type="text/event-stream",
                                 headers={**_NO_STORE, "x-accel-buffering": "no"})

    async def _writes(self, after: int | None) -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        quiet = 0.0
        while True:
            try:
                found, mark = await to_thread.run_sync(changes, self.db, after)
            except EventStoreError:
                found, mark = [], after  # the database is being replaced or repaired: try again next poll
            if after is None:
                after = mark
            elif found:
                lines = [f"data: {json.dumps(event_json(ev), ensure_ascii=False)}\n\n" for ev in found]
                lines[-1] = f"id: {mark}\n{lines[-1]}"
                after, quiet = mark, 0.0
                yield "".join(lines)
                continue  # more may be pending
            quiet += self.poll_s
            if quiet >= KEEPALIVE_S:
                quiet = 0.0
                yield ": keepalive\n\n"
            await asyncio.sleep(self.poll_s)
