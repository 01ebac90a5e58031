"""cameras.toml: named cameras with their URL, sampling interval and gate thresholds.

    [defaults]            # optional, applies to every camera
    interval = 1.0        # seconds between sampled frames
    max_interval = 30     # re-caption a static scene at least this often
    changed_share = 0.005 # gate: share of grid cells that must change
    embedding_distance = 0.02  # optional gate stage 2: skip decoding unless the pooled embedding moved this much

    [[camera]]
    name = "front-door"
    url = "rtsp://192.168.1.20:554/stream1"
    username_env = "FRONT_DOOR_USER"    # credentials come from the environment, never from this file
    password_env = "FRONT_DOOR_PASS"
    interval = 2.0

A password written into a URL in the file is refused: config files get copied, committed and pasted into
tickets; environment variables do not.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import InputError
from .gate import GateConfig

_CAMERA_KEYS = {"name", "url", "username_env", "password_env", "interval", "max_interval", "changed_share",
                "cell_delta", "embedding_distance", "realtime", "read_timeout", "open_timeout"}
_DEFAULT_KEYS = _CAMERA_KEYS - {"name", "url", "username_env", "password_env"}


@dataclass(frozen=True)
class CameraSpec:
    """One camera as the runtime needs it (the URL may carry credentials from the environment)."""

    name: str
    url: str
    interval_s: float
    gate: GateConfig
    realtime: bool = False
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0


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


def camera_from_values(name: str, url: str, values: dict[str, Any], where: str) -> CameraSpec:
    unknown = sorted(set(values) - _CAMERA_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(_CAMERA_KEYS)}")
    try:
        interval = float(values.get("interval", 1.0))
        gate = GateConfig(cell_delta=float(values.get("cell_delta", GateConfig.cell_delta)),
                          changed_share=float(values.get("changed_share", GateConfig.changed_share)),
                          max_interval_s=float(values.get("max_interval", GateConfig.max_interval_s)),
                          embedding_distance=None if values.get("embedding_distance") is None
                          else float(values["embedding_distance"]))
        open_t = float(values.get("open_timeout", 5.0))
        read_t = float(values.get("read_timeout", 5.0))
    except (TypeError, ValueError):
        raise InputError(f"{where}: interval, max_interval, changed_share, cell_delta and timeouts must be "
                         "numbers") from None
    if interval <= 0:
        raise InputError(f"{where}: interval must be > 0 seconds, got {interval}")
    return CameraSpec(name, url, interval, gate, bool(values.get("realtime", False)), open_t, read_t)


def load_cameras(path: str | os.PathLike, env: dict[str, str] | None = None) -> list[CameraSpec]:
    """Read cameras.toml.

    Raises:
        InputError: missing file, TOML syntax, unknown keys, a password in the file, missing environment
            variables, duplicate names.
    """
    env = os.environ if env is None else env
    p = Path(path)
    if not p.is_file():
        raise InputError(f"camera config not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not valid TOML ({str(exc).splitlines()[0]})") from None
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - _DEFAULT_KEYS:
        raise InputError(f"{p}: [defaults] accepts {sorted(_DEFAULT_KEYS)}")
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
            if var is not None and var not in env:
                raise InputError(f"{where}: environment variable {var} ({key}) is not set")
            creds.append(env[var] if var else None)
        url = _with_credentials(cam["url"], *creds)
        values = {**defaults, **{k: v for k, v in cam.items() if k not in ("name", "url")}}
        values.pop("username_env", None)
        values.pop("password_env", None)
        out.append(camera_from_values(cam["name"], url, values, where))
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{p}: duplicate camera name(s) {dupes}")
    return out
