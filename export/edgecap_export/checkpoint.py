"""A Hugging Face checkpoint as the export reads it: where it is (a save_pretrained directory, or a hub id through
the hub and its local cache), its config and weights (one clear line when they cannot be read), the checksum of its
weight files, and the JSON files its processor saved."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from edgecap.errors import ExportError, directory_not_found

from .families import family_for
from .specs import Family


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# A Hugging Face hub id: "name" or "owner/name" of letters, digits, "-", "_" and ".".
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def is_hub_id(model: str) -> bool:
    """True when ``model`` names a checkpoint on the hub (or in its local cache) rather than a directory: it has a
    hub id's form and no such path exists here ("owner/name" holds a "/" but is not a path). "engines/blip" where
    ./engines is a directory is a mistyped path, not a hub id: looking it up went to the network (offline, half a
    minute of retries and a dozen warning lines) before failing."""
    if os.path.exists(model) or _HUB_ID.fullmatch(model) is None or ".." in model:
        return False
    owner, sep, _ = model.partition("/")
    return not (sep and os.path.isdir(owner))


def load_config(model: str) -> Any:
    """Read and check a checkpoint's config (cheap), failing with one clear line before any heavy work."""
    from transformers import AutoConfig

    hub = is_hub_id(model)
    if not hub:
        if not os.path.isdir(model):
            from edgecap.sources.urls import mask_url  # a URL pasted with its password: not echoed back

            raise ExportError(f"{directory_not_found(mask_url(model))}; expected a hub id (owner/name) or a "
                              "save_pretrained directory")
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ExportError(f"{model} has no config.json; expected a directory written by save_pretrained")
    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as exc:
        where = "no such directory here, and from the hub" if hub else "its config"
        raise ExportError(f"cannot load {model!r} ({where}): {first_line(exc)}") from None
    family_for(config).shape(config)
    return config


def load_checkpoint(family: Family, model: str) -> Any:
    """Load the checkpoint through its family (eager attention: plain MatMul/Softmax graphs) in eval mode, without
    transformers' own "Loading weights" bar (the export's bar names this stage; with --quiet the bar made every
    later one-line error two lines)."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return family.load(model)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load the weights of {model!r}: {first_line(exc)}") from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def read_checkpoint_json(model: str, name: str) -> dict[str, Any]:
    from transformers.utils import cached_file

    try:
        path = cached_file(model, name)
        data = json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def image_processor_settings(model: str) -> dict[str, Any]:
    """The image processor's settings as the checkpoint holds them: preprocessor_config.json, or (transformers 5
    processors save it so) the ``image_processor`` entry of processor_config.json; {} when neither exists."""
    pc = read_checkpoint_json(model, "preprocessor_config.json")
    if not pc:
        nested = read_checkpoint_json(model, "processor_config.json").get("image_processor")
        pc = nested if isinstance(nested, dict) else {}
    return pc


def pil_image_processor(model: str) -> Any | None:
    """The checkpoint's image processor on transformers' Pillow backend, or None if it cannot be built here."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(model, backend="pil")
    except TypeError:  # transformers < 5 has no backend argument; its slow processor uses Pillow
        return AutoImageProcessor.from_pretrained(model)
    except (OSError, ValueError, ImportError):
        return None


def source_info(model: str, hf_model: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"model": model, "revision": getattr(hf_model.config, "_commit_hash", None)}
    local = _checkpoint_dir(model)
    if info["revision"] is None and local is not None and is_hub_id(model) and re.fullmatch(r"[0-9a-f]{40}",
                                                                                             local.name):
        info["revision"] = local.name  # transformers 5 no longer sets _commit_hash: the cache's snapshot is it
    if local is not None and (digest := weights_sha256(local)) is not None:
        info["weights_sha256"] = digest
    return info


def weights_sha256(directory: Path) -> str | None:
    """The checksum of a checkpoint directory's weight files (the manifest's ``source.weights_sha256``), or None
    when it holds none. The files transformers loads: model*.safetensors, else pytorch_model*.bin -- not every
    .bin beside them (a Trainer's training_args.bin, the pytorch_model.bin `huggingface-cli download` fetches next
    to model.safetensors), with which the same weights had another checksum in another directory."""
    files = sorted(directory.iterdir())
    weights = ([p for p in files if p.name.startswith("model") and p.suffix == ".safetensors"]
               or [p for p in files if p.name.startswith("pytorch_model") and p.suffix == ".bin"])
    if not weights:
        return None
    h = hashlib.sha256()
    for p in weights:
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _checkpoint_dir(model: str) -> Path | None:
    """The directory holding a checkpoint's files: ``model`` itself, or for a hub id its snapshot in the local
    cache (from_pretrained has just put the weights there)."""
    if os.path.isdir(model):
        return Path(model)
    from transformers.utils import cached_file

    try:
        config = cached_file(model, "config.json")
    except (OSError, ValueError):
        return None
    return Path(config).parent if config else None
