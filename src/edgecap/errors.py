"""Typed exceptions. Every message is one line: what was expected, what was found, what to do."""

from __future__ import annotations

import os


class EdgecapError(Exception):
    """Base class of every error edgecap raises on purpose."""


class ModelError(EdgecapError):
    """A model directory is missing, incomplete or not loadable."""


class ManifestError(ModelError):
    """manifest.json is missing, corrupt, of another schema version, or disagrees with the ONNX graphs."""


class InputError(EdgecapError, ValueError):
    """An image, batch or option passed by the caller is not usable."""


class DependencyError(EdgecapError, ImportError):
    """An optional dependency (an extra) is not installed."""


class ExportError(EdgecapError):
    """The export step failed."""


class UnsupportedModelError(ExportError):
    """The checkpoint's architecture is not one edgecap can export."""


class ParityError(ExportError):
    """The exported graphs do not reproduce the reference model; ``report`` lists every mismatch."""

    def __init__(self, message: str, report: list[str]):
        super().__init__(message)
        self.report = report


class SourceError(EdgecapError):
    """A video source cannot be opened or read."""


class RunFailedError(EdgecapError):
    """The streaming runtime gave up: captioning (or writing events) kept failing for longer than allowed."""


def directory_not_found(path: object, what: str = "model directory") -> str:
    """The start of a one-line error for a path that is not a directory: absent, or a file given instead."""
    if os.path.exists(str(path)):
        return f"{path} is a file, not a {what}"
    return f"{what} not found: {path}"
