"""Camera URLs: masking secrets, classifying a source, and the FFmpeg protocol policy for camera entries.

A camera entry comes from a config file or a command line; FFmpeg would happily open ``file:``, ``pipe:`` or
``concat:`` behind it, so only the kinds edgecap reads are accepted, and every network source is opened with a
protocol whitelist. Camera passwords never leave this module unmasked (see :func:`mask_url` and :class:`Scrubber`).
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

from ..errors import SourceError

__all__ = ["PROTOCOL_WHITELIST", "RTSP_ANALYZE_US", "SUPPORTED_SOURCES", "Scrubber", "classify_source",
           "mask_url"]

# FFmpeg protocols that read local resources, raw sockets or wrap other URLs: never a camera URL (RELIABILITY 18).
_REFUSED_PROTOCOLS = frozenset({
    "android_content", "async", "bluray", "cache", "concat", "concatf", "crypto", "data", "fd", "ffrtmpcrypt",
    "ffrtmphttp", "file", "hls", "httpproxy", "md5", "pipe", "prompeg", "rtp", "sctp", "srtp", "subfile", "tcp",
    "tee", "tls", "udp", "udplite", "unix",
})
_SCHEME_KINDS = {"rtsp": "rtsp", "rtsps": "rtsp", "http": "http", "https": "http"}
SUPPORTED_SOURCES = "rtsp://, rtsps://, http(s)://, a video file, a folder of images, /dev/videoN or a webcam index"
# Inner protocols a network source may use; HLS segments or redirects cannot reach file: or pipe: through them.
PROTOCOL_WHITELIST = {"rtsp": "rtsp,rtsps,rtp,srtp,tcp,udp,tls", "http": "http,https,tcp,tls,crypto,httpproxy",
                      "file": "file,crypto"}
# How much of an RTSP stream FFmpeg may read to find its parameters before it opens (microseconds). Its default,
# 5 s of stream (plus ~30 frames of probing), made a 5 fps camera take 5.4 s to open -- longer than the default
# open timeout, so it never opened -- and a 10 fps one 2.9 s. The SDP and the first key frame carry what the
# decoder needs; with 0.5 s, measured against gst-rtsp-server: 10 fps 0.74 s, 5 fps 1.05 s, 2 fps with a key frame
# every 4 s 2.05 s (was 6.0 s), same width, height and rate found.
RTSP_ANALYZE_US = 500_000
# FFmpeg treats a leading run of these characters followed by ':' (or ',' ... ':') as a protocol name.
_PROTOCOL_RE = re.compile(r"^([A-Za-z0-9+.-]+)(?::|,[^:]*:)")
_QUERY_SECRET_RE = re.compile(
    r"([?&;](?:password|passwd|pass|pwd|token|access_token|secret|key|apikey|api_key|auth|sig|signature)=)([^&#;]*)",
    re.IGNORECASE)
_WEBCAM_RE = re.compile(r"^/dev/video\d+$")


def _mask_authority(rest: str) -> tuple[str, list[str]]:
    """Mask the password at the start of ``rest`` (the text after ``scheme://``); return it with the password."""
    end = len(rest)
    for sep in "/?#":
        pos = rest.find(sep)
        if pos != -1:
            end = min(end, pos)
    at = rest.rfind("@", 0, end)  # FFmpeg's rule: the last '@' before the path
    if at == -1 and "@" in rest[end:] and ":" in rest[:end] and not rest.startswith("["):
        # An unencoded '/', '?' or '#' in a password ends the authority early ("user:pa/ss@host"); mask up to the
        # last '@' rather than risk leaking the tail of the password (an odd URL may be over-masked, never leaked).
        at = rest.rfind("@")
    user, colon, password = rest[:max(at, 0)].partition(":")
    if at == -1 or not colon:
        return rest, []
    return f"{user}:***@{rest[at + 1:]}", [password]


def _split_secrets(url: str | int) -> tuple[str, list[str]]:
    """Return (the masked text, the secrets it held: passwords and secret query values, raw and %-decoded).

    Every ``scheme://`` in the text is handled, so URLs nested in FFmpeg protocols (``concat:rtsp://...``) are too.
    """
    parts = re.split(r"(?<=://)", str(url))
    secrets: list[str] = []
    for i in range(1, len(parts)):
        parts[i], found = _mask_authority(parts[i])
        secrets += found
    text = "".join(parts)
    secrets += [m.group(2) for m in _QUERY_SECRET_RE.finditer(text)]
    text = _QUERY_SECRET_RE.sub(lambda m: m.group(1) + ("***" if m.group(2) else ""), text)
    secrets = [s for s in secrets if s]
    return text, secrets + [unquote(s) for s in secrets if unquote(s) != s]


def mask_url(url: str | int) -> str:
    """Hide the password (and secret query values such as ``password=``) in a camera URL.

    Handles %-encoded passwords, an unencoded ``@`` in the password (the last ``@`` before the host counts, as in
    FFmpeg), URLs without a password (returned unchanged) and non-URLs such as file paths (returned unchanged).

    Args:
        url: a URL, path or webcam index.

    Returns:
        The URL with every password replaced by ``***``.

    Example:
        >>> mask_url("rtsp://admin:p%40ss@10.0.0.5:554/stream1")
        'rtsp://admin:***@10.0.0.5:554/stream1'
    """
    return _split_secrets(url)[0]


class Scrubber:
    """Remove a URL's secrets from free text (PyAV's exception text and ``filename`` carry the full URL)."""

    def __init__(self, url: str | int):
        self._url = str(url)
        self._masked, secrets = _split_secrets(url)
        self._secrets = sorted(set(secrets), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = text.replace(self._url, self._masked)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def classify_source(url: str | int) -> str:
    """Tell what kind of source a camera URL is, refusing what edgecap must not open.

    Args:
        url: a file path, a folder of images, ``rtsp://``/``rtsps://``/``http://``/``https://`` URL,
            ``/dev/videoN``, or a webcam index (int or digit string).

    Returns:
        ``"file"``, ``"folder"``, ``"rtsp"``, ``"http"`` or ``"webcam"``. Paths are not checked for existence
        (:meth:`Source.start` does that); anything else that is not a directory is a ``"file"``.

    Raises:
        SourceError: an unsupported scheme (``ftp://``, ``rtmp://``, ...), or an FFmpeg protocol refused for camera
            entries (``file:``, ``concat:``, ``pipe:``, ``subfile``, ``data:``, ``crypto:``, ``tcp:``, ``udp:``, ...).

    Example:
        >>> classify_source("rtsps://cam.local/live"), classify_source(0), classify_source("/dev/video2")
        ('rtsp', 'webcam', 'webcam')
    """
    if isinstance(url, bool) or not isinstance(url, (str, int)):
        raise SourceError(f"a source must be a path, URL or webcam index, got {type(url).__name__}; expected "
                          f"{SUPPORTED_SOURCES}")
    if isinstance(url, int):
        if url < 0:
            raise SourceError(f"webcam index must be >= 0, got {url}")
        return "webcam"
    if (url.isascii() and url.isdigit()) or _WEBCAM_RE.match(url):  # "\xb2" is a digit to isdigit, not to int()
        return "webcam"
    match = _PROTOCOL_RE.match(url)
    if match and len(match.group(1)) > 1:  # one letter is a Windows drive (C:\...)
        scheme = match.group(1).lower()
        if any(part in _REFUSED_PROTOCOLS for part in scheme.split("+")):
            raise SourceError(f"FFmpeg protocol '{scheme}:' is refused for camera sources (it reaches local files, "
                              f"pipes or raw sockets): {mask_url(url)}; expected {SUPPORTED_SOURCES}")
        kind = _SCHEME_KINDS.get(scheme) if url[match.end(1):].startswith("://") else None
        if kind is None:
            raise SourceError(f"unsupported source scheme '{scheme}' in {mask_url(url)}; expected {SUPPORTED_SOURCES} "
                              f"(a file whose name contains ':' can be given as ./name)")
        return kind
    return "folder" if os.path.isdir(url) else "file"
