"""Fine-tune or train a VisionEncoderDecoder captioner on image + caption pairs, then export it.

Data (``--data``):
  * a JSONL file of {"image": path, "caption": text} (relative paths are relative to the file),
  * a folder holding such a ``captions.jsonl``, or image files each with a same-named ``.txt`` caption,
  * ``synth:N`` -- N scenes from ``edgecap.synth`` (seeds 0..N-1, never the held-out range).
Base (``--base``): a save_pretrained checkpoint directory (fine-tune; its tokenizer is kept), or a preset name
(``tiny``, ``demo``) / a JSON file of preset-style sizes (train from scratch with a word-level tokenizer learnt
from the captions).

Training is deterministic for a given seed on a given machine (seeded torch and data order), resumable (the last
checkpoint in OUT/train/ is picked up automatically), shows a progress bar with the running loss, and ends by
exporting OUT (manifest + ONNX + tokenizer, validated against transformers).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecap._log import logger
from edgecap.errors import ExportError, InputError
from edgecap.imaging import BILINEAR, load_image, resize
from edgecap.sources import IMAGE_EXTENSIONS

PRESETS: dict[str, dict[str, Any]] = {
    # a few seconds per epoch on a handful of images: for tests
    "tiny": dict(image_size=32, patch_size=8, enc_layers=1, enc_hidden=32, enc_heads=2, dec_layers=1,
                 dec_hidden=32, dec_heads=2, max_length=40),
    # the bundled demo model (see docs/DEMO_MODEL.md)
    # 128x160 keeps most of a 4:3 camera frame's aspect, so thin shapes (bicycle frames, dog legs) survive
    "demo": dict(image_size=(128, 160), patch_size=16, enc_layers=4, enc_hidden=192, enc_heads=3, dec_layers=3,
                 dec_hidden=192, dec_heads=3, max_length=40),
}
SPECIALS = ("<s>", "</s>", "<pad>", "<unk>")


@dataclass
class TrainConfig:
    """Hyper-parameters; stored with every checkpoint so a resume continues the same run."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    seed: int = 0
    threads: int | None = None
    canonical_share: float = 0.85  # synth data: share of captions in the canonical wording
    checkpoint_every: int = 500
    extra: dict[str, Any] = field(default_factory=dict)


# -- data ---------------------------------------------------------------------------------------------------------
def _hw(size: int | tuple | list) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _synth_pairs(n: int, size: tuple[int, int], seed: int, canonical_share: float,
                 progress: bool) -> tuple[np.ndarray, list[str]]:
    from tqdm import tqdm

    from edgecap import synth

    if n <= 0 or n >= synth.HELD_OUT_SEED_START:
        raise InputError(f"synth:N needs 0 < N < {synth.HELD_OUT_SEED_START}, got {n}")
    rng = np.random.default_rng(seed)
    others = max(synth.N_CAPTION_VARIANTS - 1, 1)
    probs = [canonical_share] + [(1 - canonical_share) / others] * (synth.N_CAPTION_VARIANTS - 1)
    variants = rng.choice(synth.N_CAPTION_VARIANTS, size=n, p=probs)
    images = np.empty((n, size[0], size[1], 3), dtype=np.uint8)
    captions = []
    for i in tqdm(range(n), desc="render synth", unit="img", disable=not progress):
        img, spec = synth.render_scene(i)
        images[i] = resize(img, size[0], size[1], BILINEAR)
        captions.append(spec.caption(int(variants[i])))
    return images, captions


def caption_pairs(data: Path) -> list[tuple[Path, str]]:
    """Read (image path, caption) pairs from a JSONL file or a folder.

    Args:
        data: a JSONL file of ``{"image": relative path, "caption": text}`` lines, or a folder holding
            captions.jsonl or images with same-named .txt captions.

    Returns:
        The pairs, in file order (folders: sorted by image name).

    Raises:
        InputError: missing data, a malformed line (named by file:line), or no pairs.
    """
    if data.is_dir():
        jsonl = data / "captions.jsonl"
        if jsonl.is_file():
            return caption_pairs(jsonl)
        pairs = []
        for img in sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
            txt = img.with_suffix(".txt")
            if txt.is_file():
                pairs.append((img, txt.read_text(encoding="utf-8").strip()))
        if not pairs:
            raise InputError(f"{data} has no captions.jsonl and no image files with same-named .txt captions")
        return pairs
    if not data.is_file():
        raise InputError(f"training data not found: {data}; expected a JSONL file, a folder or synth:N")
    pairs = []
    for n, line in enumerate(data.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append(((data.parent / row["image"]).resolve(), str(row["caption"]).strip()))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"{data}:{n}: expected a JSON object with 'image' and 'caption'") from None
    if not pairs:
        raise InputError(f"{data} holds no image/caption pairs")
    return pairs


def load_data(data: str, size: tuple[int, int], cfg: TrainConfig, progress: bool) -> tuple[np.ndarray, list[str]]:
    """(uint8 images [N, height, width, 3] resized as the image processor will, captions)."""
    if data.startswith("synth:"):
        try:
            n = int(data.split(":", 1)[1])
        except ValueError:
            raise InputError(f"expected synth:N with an integer N, got {data!r}") from None
        return _synth_pairs(n, size, cfg.seed, cfg.canonical_share, progress)
    pairs = caption_pairs(Path(data))
    images = np.stack([resize(load_image(p), size[0], size[1], BILINEAR) for p, _ in pairs])
    return images, [c for _, c in pairs]


# -- model and tokenizer ------------------------------------------------------------------------------------------
def train_word_tokenizer(captions: list[str]):
    """A word-level tokenizer over the captions (Metaspace keeps punctuation attached, so decoding is exact)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(captions, trainers.WordLevelTrainer(special_tokens=list(SPECIALS), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def build_from_preset(preset: dict[str, Any], tokenizer: Any, seed: int):
    import torch
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    torch.manual_seed(seed)
    enc = ViTConfig(image_size=list(_hw(preset["image_size"])), patch_size=preset["patch_size"],
                    num_hidden_layers=preset["enc_layers"], hidden_size=preset["enc_hidden"],
                    num_attention_heads=preset["enc_heads"], intermediate_size=4 * preset["enc_hidden"])
    dec = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=preset["dec_hidden"],
                     n_layer=preset["dec_layers"], n_head=preset["dec_heads"], add_cross_attention=True,
                     is_decoder=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id = tokenizer.bos_token_id
    cfg.pad_token_id = tokenizer.pad_token_id
    cfg.eos_token_id = tokenizer.eos_token_id
    model = VisionEncoderDecoderModel(config=cfg)
    gc = model.generation_config
    gc.max_length, gc.num_beams, gc.decoder_start_token_id = preset["max_length"], 1, tokenizer.bos_token_id
    gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    return model


def resolve_base(base: str, captions: list[str], seed: int):
    """(model, tokenizer, image processor) from a checkpoint dir, a preset name or a preset JSON file."""
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel, ViTImageProcessorPil

    if os.path.isdir(base):
        model = VisionEncoderDecoderModel.from_pretrained(base)
        tok = AutoTokenizer.from_pretrained(base)
        try:
            proc = AutoImageProcessor.from_pretrained(base, backend="pil")
        except TypeError:
            proc = AutoImageProcessor.from_pretrained(base)
        return model, tok, proc
    if base in PRESETS:
        preset = PRESETS[base]
    elif os.path.isfile(base):
        preset = {**PRESETS["tiny"], **json.loads(Path(base).read_text())}
    else:
        raise InputError(f"unknown base {base!r}: expected a checkpoint directory, a preset "
                         f"({', '.join(PRESETS)}) or a JSON file of preset sizes")
    tok = train_word_tokenizer(captions)
    model = build_from_preset(preset, tok, seed)
    h, w = _hw(preset["image_size"])
    proc = ViTImageProcessorPil(size={"height": h, "width": w}, resample=BILINEAR,
                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return model, tok, proc


# -- training -----------------------------------------------------------------------------------------------------
def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _batch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def finetune(data: str, out: str | os.PathLike, *, base: str = "tiny", cfg: TrainConfig | None = None,
             progress: bool = True, export: bool = True, max_steps: int | None = None) -> Path:
    """Train, checkpoint, resume, save the Hugging Face checkpoint to OUT/hf and export OUT.

    Args:
        data: see the module docstring.
        out: output directory: OUT/train (checkpoints), OUT/hf (save_pretrained), OUT itself (edgecap export).
        base: checkpoint directory, preset name or preset JSON file.
        cfg: hyper-parameters.
        progress: progress bars on stderr.
        export: run `edgecap export` on the result (with validation).
        max_steps: stop after this many optimiser steps in total (for smoke tests).

    Returns:
        The exported directory (OUT).
    """
    import torch
    from tqdm import tqdm

    cfg = cfg or TrainConfig()
    out = Path(out)
    train_dir = out / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    state_path = train_dir / "last.pt"
    resumed = state_path.is_file()
    if resumed:
        state = torch.load(state_path, weights_only=False)
        if state["data"] != data or state["base"] != base:
            raise InputError(f"{train_dir} holds a run on data={state['data']!r} base={state['base']!r}; "
                             "use another --out or delete it to start over")
        cfg = TrainConfig(**state["config"])
    model, tok, proc = None, None, None
    cache = train_dir / "data.npz"
    size_hint = PRESETS.get(base, {}).get("image_size")
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        images, captions = z["images"], [str(c) for c in z["captions"]]
    else:
        if size_hint is None:
            from transformers import AutoConfig

            size_hint = AutoConfig.from_pretrained(base).encoder.image_size if os.path.isdir(base) else \
                json.loads(Path(base).read_text()).get("image_size", PRESETS["tiny"]["image_size"])
        images, captions = load_data(data, _hw(size_hint), cfg, progress)
        np.savez(cache, images=images, captions=np.asarray(captions))
    if resumed:
        from transformers import AutoTokenizer, VisionEncoderDecoderModel, ViTImageProcessorPil

        model = VisionEncoderDecoderModel.from_pretrained(train_dir / "model")
        tok = AutoTokenizer.from_pretrained(train_dir / "model")
        proc = ViTImageProcessorPil.from_pretrained(train_dir / "model")
    else:
        model, tok, proc = resolve_base(base, captions, cfg.seed)
    size = _hw(model.config.encoder.image_size)
    if images.shape[1:3] != size:
        raise ExportError(f"cached data is {images.shape[1:3]} px but the model takes {size} px; delete {cache}")

    # Tokenise once: labels end with EOS, pad with -100 so the loss ignores padding.
    enc = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in captions]
    max_len = model.generation_config.max_length - 1
    labels = np.full((len(enc), max_len), -100, dtype=np.int64)
    for i, ids in enumerate(enc):
        ids = ids[:max_len]
        labels[i, :len(ids)] = ids
    mean = np.asarray(proc.image_mean, np.float32)[None, :, None, None]
    std = np.asarray(proc.image_std, np.float32)[None, :, None, None]

    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if max_steps is not None:
        total = min(total, max_steps)
    step = 0
    if resumed:
        optim.load_state_dict(state["optimizer"])
        step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
        logger.info("resuming %s at step %d/%d", train_dir, step, total)
    model.train()
    bar = tqdm(total=total, initial=step, desc="finetune", unit="step", disable=not progress)
    ema = None
    t0 = time.perf_counter()

    def save_state() -> None:
        model.save_pretrained(train_dir / "model")
        tok.save_pretrained(train_dir / "model")
        proc.save_pretrained(train_dir / "model")
        tmp = train_dir / "last.pt.tmp"
        torch.save({"step": step, "optimizer": optim.state_dict(), "torch_rng": torch.get_rng_state(),
                    "config": asdict(cfg), "data": data, "base": base}, tmp)
        os.replace(tmp, state_path)

    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        idx = _batch_order(len(images), epoch, cfg.seed)[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        px = (images[idx].transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - mean) / std
        lab = labels[idx]
        lab = lab[:, : max(1, int((lab != -100).sum(1).max()))]
        for g in optim.param_groups:
            g["lr"] = _lr_at(step, total, cfg)
        loss = model(pixel_values=torch.from_numpy(px), labels=torch.from_numpy(lab)).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        step += 1
        value = loss.item()
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        bar.set_postfix(loss=f"{ema:.3f}", epoch=epoch + 1)
        bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == total:
            save_state()
    bar.close()
    logger.info("trained %d steps in %.0f s", step, time.perf_counter() - t0)
    model.eval()
    hf_dir = out / "hf"
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    proc.save_pretrained(hf_dir)
    (hf_dir / "training.json").write_text(json.dumps({"data": data, "base": base, "steps": step,
                                                       "final_loss_ema": ema, "config": asdict(cfg)}, indent=2))
    if not export:
        return hf_dir
    from .exporter import export_model

    return export_model(str(hf_dir), out, name=out.name, progress=progress)
