"""The durable, searchable event log: SQLite (WAL + FTS5) written by one thread, an optional JSONL mirror, JPEG
thumbnails, retention, and the reading side (search, export, tail) behind ``edgecap events``.

Modules, by job (arrows are imports; none points back):
    model      Event, kinds, limits, cleaning, json_line, parse_time         -> units
    _writing   writable-path check, throttled log                            -> model
    sink       Ack, the EventSink protocol                                   -> model
    schema     migrations, row <-> Event, open_writer/open_reader, migrate   -> model, _writing
    mirror     JsonlSink (a sink alone, and the store's mirror)              -> model, sink, _writing
    store      EventStore, the writer thread                                 -> model, sink, schema, mirror, _writing
    thumbs     thumbnail_dir, resolve_thumbnail, save_jpeg                   -> model
    query      search, search_page, get_event, changes, cameras, export, tail -> model, schema
    retention  prune, PruneReport                                            -> model, schema, thumbs, _writing
    similar    scene embeddings (stored by the store) and SimilarIndex        -> model, schema
"""

from .mirror import JsonlSink
from .model import (ERROR, KINDS, PRUNE, MAX_CAPTION_CHARS, MAX_DETAIL_TEXT_CHARS, MAX_DETAILS_BYTES, MAX_NAME_CHARS,
                    MAX_PATH_CHARS, MAX_SEARCH_TERMS, SCENE, SYSTEM_KINDS, Event, EventStoreError, json_line,
                    parse_time)
from .query import (EXPORT_FORMATS, CameraSummary, cameras, changes, export, fts_query, get_event, search,
                    search_page, tail)
from .retention import PruneReport, prune
from .schema import SCHEMA_VERSION, migrate
from .sink import Ack, EventSink
from .store import EventStore
from .thumbs import resolve_thumbnail, save_jpeg, thumbnail_dir

__all__ = [
    "Ack", "CameraSummary", "ERROR", "EXPORT_FORMATS", "Event", "EventSink", "EventStore", "EventStoreError",
    "JsonlSink", "KINDS", "MAX_CAPTION_CHARS", "MAX_DETAILS_BYTES", "MAX_DETAIL_TEXT_CHARS", "MAX_NAME_CHARS",
    "MAX_PATH_CHARS", "MAX_SEARCH_TERMS", "PRUNE", "PruneReport", "SCENE", "SCHEMA_VERSION", "SYSTEM_KINDS",
    "cameras", "changes", "export", "fts_query", "get_event", "json_line", "migrate", "parse_time", "prune",
    "resolve_thumbnail", "save_jpeg", "search", "search_page", "tail", "thumbnail_dir",
]
