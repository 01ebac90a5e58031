"""Camera specs and cameras.toml: every source and gate option per camera, credentials from the environment.

    [defaults]              # optional, applies to every camera
    interval = 1.0          # seconds between sampled frames
    max_interval = 30       # re-caption a static scene at least this often
    changed_share = 0.005   # gate: share of grid cells that must change
    embedding_distance = 0.02  # optional gate stage 2: skip decoding unless the pooled embedding moved this much

    [[camera]]
    name = "front-door"
    url = "rtsp://192.168.1.20:554/stream1"
    username_env = "FRONT_DOOR_USER"    # credentials come from the environment, never from this file
    password_env = "FRONT_DOOR_PASS"
    interval = 2.0
    read_timeout = 10
    buffer = "latest"

    [retention]             # optional: what `edgecap run` deletes as it goes
    days = 30
    max_gb = 20

    [[alert]]               # optional: rules, and where alerts and events go ([mqtt], [[webhook]], [outbox]);
    name = "person at the door"   # see edgecap.alerts.settings and docs/ALERTS.md
    match = "person"

Option keys are the :class:`~edgecap.sources.SourceConfig` and :class:`~edgecap.runtime.GateConfig` fields, with a
trailing ``_s`` dropped (``read_timeout_s`` -> ``read_timeout``): see :data:`OPTION_KEYS`. Precedence, lowest first:
the built-in defaults, the command line's flags, ``[defaults]``, the camera's own table.

A password written into a URL in the file is refused: config files get copied, committed and pasted into
tickets; environment variables do not.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..alerts.settings import TABLES as ALERT_TABLES
from ..alerts.settings import AlertSettings, parse_alert_settings
from ..errors import EdgecapError, InputError
from ..sources import SourceConfig, classify_source, mask_url
from .gate import GateConfig

_IDENTITY_KEYS = ("name", "url", "username_env", "password_env")
_TABLES = ("defaults", "camera", "retention", *ALERT_TABLES)
_RETENTION_KEYS = ("days", "max_gb")


def _option_key(field_name: str) -> str:
    return field_name[:-2] if field_name.endswith("_s") else field_name


def _options_of(cls: type) -> dict[str, tuple[str, Any]]:
    """TOML key -> (field name, field type) of a config dataclass, the identity fields left out."""
    hints = typing.get_type_hints(cls)
    return {_option_key(f.name): (f.name, hints[f.name]) for f in dataclasses.fields(cls)
            if f.name not in ("name", "url")}


_SOURCE_OPTIONS = _options_of(SourceConfig)
_GATE_OPTIONS = _options_of(GateConfig)
_FIELD_RE = re.compile(r"\b(?:" + "|".join(f for f, _ in (*_SOURCE_OPTIONS.values(), *_GATE_OPTIONS.values())
                                          if f.endswith("_s")) + r")\b")
#: Every per-camera option key of cameras.toml (also accepted in [defaults]).
_CAMERA_OPTIONS = {"prompt": ("prompt", str | None)}
OPTION_KEYS: tuple[str, ...] = tuple(sorted({**_SOURCE_OPTIONS, **_GATE_OPTIONS, **_CAMERA_OPTIONS}))


@dataclass(frozen=True)
class CameraSpec:
    """One camera as the runtime needs it: where and how to read it, and when a frame counts as changed.

    Attributes:
        source: reader options (the URL may carry credentials from the environment: never print it unmasked).
        gate: change-gate thresholds.
        prompt: what the model is asked for this camera's frames (a BLIP caption prefix, a Florence-2 task token);
            None: the model's unconditional caption. Checked against the model when the runtime starts.
    """

    source: SourceConfig
    gate: GateConfig = field(default_factory=GateConfig)
    prompt: str | None = None

    def __post_init__(self) -> None:
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt.strip()):
            raise InputError(f"camera {self.name!r}: prompt must be a non-empty string, got {self.prompt!r}")

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def url(self) -> str | int:
        return self.source.url


@dataclass(frozen=True)
class RetentionConfig:
    """What a running runtime deletes as it goes (see `edgecap.events.prune`).

    Attributes:
        older_than: delete events that ended longer ago than this (None: no age limit).
        max_bytes: delete the oldest events while the log and its thumbnails are larger (None: no size limit).
        every_s: how often the runtime prunes.
    """

    older_than: timedelta | None = None
    max_bytes: int | None = None
    every_s: float = 600.0

    @property
    def enabled(self) -> bool:
        return self.older_than is not None or self.max_bytes is not None


@dataclass(frozen=True)
class SiteConfig:
    """Everything cameras.toml configures."""

    cameras: list[CameraSpec]
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    alerts: AlertSettings = field(default_factory=AlertSettings)


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return " or ".join(_type_name(a) for a in args)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _convert(key: str, value: Any, tp: Any, where: str) -> Any:
    """Check a TOML value against a field type (TOML has no null, so an optional field is simply left out)."""
    allowed = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue  # true is not 1 here: `realtime = 1` and `interval = true` are mistakes worth a line
        if t is int and isinstance(value, int):
            return value
        if t is float and isinstance(value, (int, float)):
            if not math.isfinite(value):
                break
            return float(value)
        if t is str and isinstance(value, str):
            return value
        if isinstance(t, type) and issubclass(t, Enum) and isinstance(value, str):
            try:
                return t(value)
            except ValueError:
                break
    raise InputError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")


def camera_spec(name: str, url: str | int, values: Mapping[str, Any] | None = None, *,
                where: str | None = None) -> CameraSpec:
    """Build a camera from option keys (see :data:`OPTION_KEYS`), checking every value's type and range.

    Args:
        name: camera name.
        url: file, folder, stream URL or webcam (may carry credentials).
        values: option keys as in cameras.toml (``interval``, ``read_timeout``, ``changed_share``, ...).
        where: prefix of error messages (default: the camera's name).

    Raises:
        InputError: an unknown key, a value of the wrong type or out of range; one line.
    """
    where = where or f"camera {name!r}"
    values = dict(values or {})
    unknown = sorted(set(values) - set(OPTION_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(OPTION_KEYS)}")
    source_kw = {_SOURCE_OPTIONS[k][0]: _convert(k, v, _SOURCE_OPTIONS[k][1], where)
                 for k, v in values.items() if k in _SOURCE_OPTIONS}
    gate_kw = {_GATE_OPTIONS[k][0]: _convert(k, v, _GATE_OPTIONS[k][1], where)
               for k, v in values.items() if k in _GATE_OPTIONS}
    prompt = _convert("prompt", values["prompt"], str, where) if "prompt" in values else None
    try:
        return CameraSpec(SourceConfig(name=name, url=url, **source_kw), GateConfig(**gate_kw), prompt)
    except EdgecapError as exc:  # the records name their fields; say the keys the user wrote
        message = _FIELD_RE.sub(lambda m: _option_key(m.group(0)), str(exc).removeprefix(f"camera {name!r}: "))
        raise InputError(f"{where}: {message}") from None


def default_camera_name(url: str, taken: set[str]) -> str:
    """A readable unique name for a positional SOURCE (file stem or host/path), never containing credentials.

    Adds the name to ``taken``.
    """
    parts = urlsplit(url)
    if parts.scheme and parts.hostname:
        base = parts.hostname + (parts.path.rstrip("/").replace("/", "_") if parts.path else "")
    else:
        base = Path(url.rstrip("/")).stem or "camera"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def specs_for_sources(sources: Sequence[str | int | os.PathLike], values: Mapping[str, Any] | None = None, *,
                      taken: set[str] | None = None) -> list[CameraSpec]:
    """Cameras for sources given by location alone (command-line SOURCEs, `edgecap.stream`), each named by
    `default_camera_name` (unique among ``taken``, which it extends) with the same option keys."""
    taken = set() if taken is None else taken
    out = []
    for src in sources:
        url = os.fspath(src) if isinstance(src, os.PathLike) else src
        out.append(camera_spec(default_camera_name(str(url), taken), url, values, where=mask_url(url)))
    return out


def check_source(spec: CameraSpec) -> None:
    """Fail fast, before a model is loaded, on a source that cannot work: a refused or unknown scheme, or a file
    that does not exist. (Whether a file decodes is found out by reading it.)

    Raises:
        InputError: one line naming the camera and the (masked) source.
    """
    try:
        kind = classify_source(spec.url)
    except EdgecapError as exc:
        raise InputError(f"camera {spec.name!r}: {exc}") from None
    if kind == "file" and not os.path.isfile(spec.url):
        raise InputError(f"camera {spec.name!r}: video file not found: {mask_url(spec.url)}; expected a video file, a "
                         "folder of images, a stream URL or a webcam")


def _with_credentials(url: str, user: str | None, password: str | None) -> str:
    if not user and not password:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host += f":{parts.port}"
    cred = quote(user or "", safe="") + (":" + quote(password, safe="") if password else "")
    return urlunsplit((parts.scheme, f"{cred}@{host}", parts.path, parts.query, parts.fragment))


def _retention(table: Any, p: Path, base: RetentionConfig) -> RetentionConfig:
    if not isinstance(table, dict) or set(table) - set(_RETENTION_KEYS):
        raise InputError(f"{p}: [retention] accepts {', '.join(_RETENTION_KEYS)}")
    out = base
    for key, scale in (("days", None), ("max_gb", 1e9)):
        if key not in table:
            continue
        value = _convert(key, table[key], float, f"{p}: [retention]")
        if value <= 0:
            raise InputError(f"{p}: [retention] {key} must be > 0, got {table[key]!r}")
        out = dataclasses.replace(out, **({"older_than": timedelta(days=value)} if scale is None
                                          else {"max_bytes": int(value * scale)}))
    return out


def load_config(path: str | os.PathLike, *, env: Mapping[str, str] | None = None,
                defaults: Mapping[str, Any] | None = None,
                retention: RetentionConfig | None = None) -> SiteConfig:
    """Read cameras.toml.

    Args:
        path: the file.
        env: where ``username_env`` / ``password_env`` are looked up (default: the process environment).
        defaults: option keys from the command line; ``[defaults]`` and each camera's table override them.
        retention: retention from the command line; ``[retention]`` overrides its fields.

    Raises:
        InputError: missing file, TOML syntax, unknown tables or keys, wrong types or ranges, a password in the
            file, missing environment variables, duplicate names; one line.
    """
    env = os.environ if env is None else env
    p = Path(path)
    if not p.is_file():
        raise InputError(f"camera config not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not valid TOML ({str(exc).splitlines()[0]})") from None
    unknown = sorted(set(data) - set(_TABLES))
    if unknown:
        raise InputError(f"{p}: unknown table(s) or key(s) {', '.join(unknown)}; expected {', '.join(_TABLES)}")
    file_defaults = data.get("defaults", {})
    if not isinstance(file_defaults, dict):
        raise InputError(f"{p}: [defaults] must be a table of option keys")
    base = {**(defaults or {}), **file_defaults}
    cams = data.get("camera", [])
    if not isinstance(cams, list) or not cams:
        raise InputError(f"{p}: expected at least one [[camera]] table with name and url")
    out: list[CameraSpec] = []
    for i, cam in enumerate(cams, 1):
        where = f"{p}: camera #{i}"
        if not isinstance(cam, dict) or not isinstance(cam.get("name"), str) or not isinstance(cam.get("url"), str):
            raise InputError(f"{where}: needs string keys name and url")
        where = f"{p}: camera {cam['name']!r}"
        if urlsplit(cam["url"]).password:
            raise InputError(f"{where}: the url holds a password; remove it and name environment variables with "
                             "username_env / password_env instead")
        creds = []
        for key in ("username_env", "password_env"):
            var = cam.get(key)
            if var is not None and (not isinstance(var, str) or var not in env):
                raise InputError(f"{where}: environment variable {var} ({key}) is not set")
            creds.append(env[var] if var else None)
        url = _with_credentials(cam["url"], *creds)
        values = {**base, **{k: v for k, v in cam.items() if k not in _IDENTITY_KEYS}}
        out.append(camera_spec(cam["name"], url, values, where=where))
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{p}: duplicate camera name(s) {dupes}")
    keep = _retention(data.get("retention", {}), p, retention or RetentionConfig())
    return SiteConfig(out, keep, parse_alert_settings(data, str(p), env))
