"""Latency benchmark, systems alternated in one run: transformers eager generate, edgecap FP32, edgecap INT8.

    edgecap bench --vitgpt2-random                # ViT-B/16 224 + GPT-2 124M, random weights
    edgecap bench --model runs/demo --runs 20     # any exported directory (eager if DIR/hf exists)
    python -c "from edgecap_export.bench import prepare_random; prepare_random('blip-base', 'engines/blip-random')"
    edgecap bench --model engines/blip-random     # ViT-B/16 384 + BERT-base decoder (blip-image-captioning-base)
    edgecap bench --arch smolvlm-256m --batch 1 4  # SmolVLM-256M: a question per image, prefill + decode steps
    python benchmarks/bench.py ...                # the same, from a checkout

Exactly --tokens new tokens (min = max), greedy, batch sizes --batch (default 1 and 8). For each system and batch:
per-stage p50/p90/p99 (preprocess, encoder or SmolVLM's prefill, first decode step, per-token decode),
per-caption latency, captions/s, tokens/s and RSS; a JSON with CPU model, thread count and library versions, and a
PNG of the latency distributions when matplotlib is installed. Machines are shared and noisy: quote medians and
ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecap.errors import InputError

ROOT = Path.cwd()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


SIMD_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16"})


def cpu_flags() -> list[str]:
    """The host's :data:`SIMD_FLAGS` that decide INT8 and FP32 GEMM speed (AVX2 alone, AVX-512, VNNI, AMX),
    recorded in every result: hosts of one machine kind differ, and so do their INT8 / FP32 ratios."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(SIMD_FLAGS.intersection(flags))


def load_average() -> float | None:
    """The host's 1-minute load average (None where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def peak_rss_mb() -> float:
    """This process's peak resident memory (POSIX; NaN where the `resource` module does not exist)."""
    try:
        import resource
    except ImportError:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def package_versions(*packages: str) -> dict[str, str]:
    """The Python version and each installed package's version ("missing" when it is not installed)."""
    import importlib.metadata as metadata

    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "n": len(xs)}


def build_vitgpt2_random(out: Path, seed: int = 0) -> Path:
    """save_pretrained a random-weight model with nlpconnect/vit-gpt2-image-captioning's architecture."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GPT2Config, PreTrainedTokenizerFast, ViTConfig, ViTImageProcessorPil,
                              VisionEncoderDecoderConfig, VisionEncoderDecoderModel)

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    enc = ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072)
    dec = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                     add_cross_attention=True, is_decoder=True, bos_token_id=50256, eos_token_id=50256,
                     pad_token_id=50256)
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 50256, 50256, 50256
    model = VisionEncoderDecoderModel(config=cfg).eval()
    model.generation_config.max_length = 21
    model.save_pretrained(out)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["a photo of a street"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(out)
    return out


def build_blip_random(out: Path, seed: int = 0) -> Path:
    """save_pretrained a random-weight model with Salesforce/blip-image-captioning-base's architecture and token
    ids ([PAD] 0, [CLS] 101, [SEP] 102, [DEC] 30522 as bos), with a BlipProcessor."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil,
                              BlipProcessor)

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    specials = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "[DEC]": 30522}
    words = ["a", "photography", "picture", "of", "the", "street", "car", "person", "at", "night"]
    vocab = {f"[unused{i}]": i for i in range(30524)}
    vocab = {**{k: i for k, i in vocab.items() if i not in specials.values() and i - 1000 not in range(len(words))},
             **specials, **{w: 1000 + i for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 101),
                                                                                                ("[SEP]", 102)])
    tokenizer = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                  cls_token="[CLS]", mask_token="[MASK]", bos_token="[DEC]")
    cfg = BlipConfig(vision_config={"image_size": 384, "patch_size": 16, "initializer_range": 0.02},
                     text_config={"vocab_size": 30524, "bos_token_id": 30522, "pad_token_id": 0,
                                  "sep_token_id": 102, "eos_token_id": 2})
    BlipForConditionalGeneration(cfg).eval().save_pretrained(out)
    BlipProcessor(BlipImageProcessorPil(), tokenizer).save_pretrained(out)
    return out


def build_florence2_random(out: Path, seed: int = 0) -> Path:
    """save_pretrained a random-weight model with Florence-2-base's architecture (DaViT 128/256/512/1024 wide,
    depths 1/1/9/1, 768 px, 577 image features; BART base, 6 + 6 layers of 768, vocabulary 51289) and token ids
    (<s> 0, <pad> 1, </s> 2, <loc_0> 50269 ..., <image> 51289), with a Florence2Processor and the published
    generation settings (3 beams, no_repeat_ngram_size 3, forced <s>/</s>)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (BartConfig, BartTokenizer, CLIPImageProcessorPil, Florence2Config,
                              Florence2ForConditionalGeneration, Florence2Processor, Florence2VisionConfig)

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    locs = [f"<loc_{i}>" for i in range(1000)]
    vocab = {t: i for i, t in enumerate(specials + alphabet)}
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), 50269)})
    vocab.update({t: 50269 + i for i, t in enumerate(locs)})
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), 51289)})
    vocab["<image>"] = 51289
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = BartTokenizer(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                              unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_tokens(locs, special_tokens=True)
    vision = Florence2VisionConfig(embed_dim=[128, 256, 512, 1024], depths=[1, 1, 9, 1], num_heads=[4, 8, 16, 32],
                                   num_groups=[4, 8, 16, 32], window_size=12, projection_dim=768)
    text = BartConfig(vocab_size=51290, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                      decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                      max_position_embeddings=1024, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                      decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2)
    model = Florence2ForConditionalGeneration(Florence2Config(vision_config=vision.to_dict(),
                                                              text_config=text.to_dict(), image_token_id=51289)).eval()
    for k, v in {"num_beams": 3, "no_repeat_ngram_size": 3, "early_stopping": True, "decoder_start_token_id": 2,
                 "forced_bos_token_id": 0, "forced_eos_token_id": 2, "max_length": 21}.items():
        setattr(model.generation_config, k, v)
    model.save_pretrained(out)
    images = CLIPImageProcessorPil(size={"height": 768, "width": 768}, do_center_crop=False, resample=3,
                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    images.image_seq_length = 577
    Florence2Processor(images, tokenizer, post_processor_config={"pure_text": {}}).save_pretrained(out)
    return out


# SmolVLM's chat template (HuggingFaceTB/SmolVLM-256M-Instruct's chat_template): "<|im_start|>User:<image>question
# <end_of_utterance>\nAssistant:"; the processor expands <image> into the tile's 64 image tokens.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
SMOLVLM_QUESTION = "Describe what happens in this frame."  # the runtime's default prompt (issue 13)
SMOLVLM_FAMILIES = ("smolvlm", "idefics3")  # manifest families that take a question and have a prefill graph


def smolvlm_tokenizer() -> Any:
    """A byte-level BPE tokenizer with SmolVLM's special token ids and vocabulary size: <|endoftext|> 0,
    <|im_start|> 1 (bos), <|im_end|> 2 (pad), fillers up to 49151 (SmolLM2's 49,152 words), <global-img> 49152,
    <row_1_col_1> .. <row_6_col_6> 49153-49188, <fake_token_around_image> 49189, <image> 49190 (the config's
    image_token_id), reserved fillers, <end_of_utterance> 49279 (eos; vocabulary 49,280). Its merges are trained
    on the prompt's words so that a question is about as many tokens as with the real tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["User: Assistant: Describe what happens in this frame. Is the gate open? How many people are at the "
              "door? A person walks a dog along the street at night, a car is parked."] * 10
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), 49152)})
    state["model"]["vocab"] = vocab
    tok = Tokenizer.from_str(json.dumps(state))
    added = (["<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
             + ["<fake_token_around_image>", "<image>"] + [f"<reserved{i}>" for i in range(49191, 49279)]
             + ["<end_of_utterance>"])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in added])
    assert tok.token_to_id("<image>") == 49190 and tok.get_vocab_size() == 49280
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>", padding_side="left")


def build_smolvlm_random(out: Path, seed: int = 0, *, text: dict | None = None,
                         vision: dict | None = None) -> Path:
    """save_pretrained a random-weight SmolVLM with HuggingFaceTB/SmolVLM-256M-Instruct's architecture and token
    ids, and an Idefics3Processor (the processor the checkpoint names) with image splitting off: one 512 px tile.
    ``text`` and ``vision`` override dimensions (tests build a tiny one the same way)."""
    import torch
    from transformers import (Idefics3ImageProcessorPil, Idefics3Processor, LlamaConfig, SmolVLMConfig,
                              SmolVLMForConditionalGeneration, SmolVLMVisionConfig)

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    # Vision: google/siglip-base-patch16-512 (the model card's vision encoder, "93M": 86.4M here without SigLIP's
    # attention-pooling head, which Idefics3 does not use): 12 layers of 768, MLP 3072, 12 heads, 512 px in 16 px
    # patches (1,024 patches).
    vision_cfg = SmolVLMVisionConfig(**{"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                        "num_attention_heads": 12, "image_size": 512, "patch_size": 16,
                                        **(vision or {})})
    # Text: SmolLM2-135M (the card's base model): 30 layers of 576, 9 query and 3 KV heads of 64, MLP 1536,
    # vocabulary 49,280 with SmolVLM's added tokens, rope theta 100,000, RMSNorm eps 1e-5, 8,192 positions.
    # tie_word_embeddings False: SmolLM2-135M ties them, but 256M is the parameter count with an untied LM head
    # (vision 86M + connector 7M + 30 layers 106M + embeddings 28M = 228M; + a 28M LM head = 256M).
    text_cfg = LlamaConfig(**{"vocab_size": 49280, "hidden_size": 576, "intermediate_size": 1536,
                              "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                              "head_dim": 64, "max_position_embeddings": 8192, "rope_theta": 100000.0,
                              "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 49279, "pad_token_id": 2,
                              "tie_word_embeddings": False, **(text or {})})
    # Connector: pixel shuffle with scale factor 4 (1,024 patches -> 64 image tokens of 16 x 768), one linear layer.
    cfg = SmolVLMConfig(vision_config=vision_cfg.to_dict(), text_config=text_cfg.to_dict(), scale_factor=4,
                        image_token_id=49190, tie_word_embeddings=False, pad_token_id=2)
    model = SmolVLMForConditionalGeneration(cfg).eval()
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = 1, 49279, 2
    model.save_pretrained(out)
    tile = vision_cfg.image_size
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 4 * tile},
                                       max_image_size={"longest_edge": tile}, resample=1)
    seq_len = (tile // vision_cfg.patch_size) ** 2 // cfg.scale_factor ** 2
    Idefics3Processor(images, smolvlm_tokenizer(), image_seq_len=seq_len,
                      chat_template=SMOLVLM_CHAT_TEMPLATE).save_pretrained(out)
    return out


RANDOM_ARCHS: dict[str, Callable[[Path], Path]] = {"vitgpt2-base": build_vitgpt2_random,
                                                   "blip-base": build_blip_random,
                                                   "florence2-base": build_florence2_random,
                                                   "smolvlm-256m": build_smolvlm_random}


def prepare_random(arch: str, workdir: str | Path, *, int8: bool = True) -> Path:
    """Build a random-weight checkpoint of ``arch`` in WORKDIR/hf, export it to WORKDIR (validated) and quantize
    it (the quality gate accepted: random weights say nothing about quality); returns WORKDIR."""
    from edgecap.manifest import load_manifest

    from .exporter import export_model
    from .quantize import quantize_dir

    work = Path(workdir)
    hf = RANDOM_ARCHS[arch](work / "hf")
    if not (work / "manifest.json").is_file():
        export_model(str(hf), work, name=work.name)
    if int8 and "int8" not in load_manifest(work).precisions:
        quantize_dir(work, accept_quality_drop=True, calib_frames=32, eval_frames=8)
    return work


def _edgecap_runner(cap: Any, images: list[np.ndarray], kw: dict, *,
                    prefill: bool = False) -> Callable[[], dict[str, float]]:
    """``prefill``: the model's first graph is a prefill graph (SmolVLM): its stage is reported as "prefill"."""
    def run() -> dict[str, float]:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        px = cap.preprocess(images)
        timings["preprocess"] = (time.perf_counter() - t) * 1e3
        cap.generate(px, _timings=timings, **kw)
        timings["total"] = (time.perf_counter() - t) * 1e3
        # a prefill graph gives the first token, so every step-graph call is a later token; an encoder-decoder's
        # first step is timed apart ("decoder_first") and counted in decoder_steps
        steps = max(1, int(timings.pop("decoder_steps", 1)) - (0 if prefill else 1))
        timings["decode_per_token"] = timings.pop("decoder_rest", 0.0) / steps
        if prefill:
            timings["prefill"] = timings.pop("encoder", 0.0)
        return timings
    return run


def _eager_runner(model: Any, processor: Any, images: list[np.ndarray], kw: dict) -> Callable[[], dict[str, float]]:
    import torch

    def run() -> dict[str, float]:
        t = time.perf_counter()
        px = torch.from_numpy(np.asarray(processor(images=images, return_tensors="np")["pixel_values"]))
        pre = (time.perf_counter() - t) * 1e3
        with torch.no_grad():
            t1 = time.perf_counter()
            model.generate(pixel_values=px, **kw)
        return {"preprocess": pre, "total": pre + (time.perf_counter() - t1) * 1e3}
    return run


def _florence2_eager_runner(model: Any, processor: Any, images: list[np.ndarray],
                            kw: dict) -> Callable[[], dict[str, float]]:
    """transformers' Florence-2 path: the processor builds pixel values and the <CAPTION> task's ids."""
    import torch

    def run() -> dict[str, float]:
        t = time.perf_counter()
        inputs = processor(text=["<CAPTION>"] * len(images), images=images, return_tensors="pt")
        pre = (time.perf_counter() - t) * 1e3
        with torch.no_grad():
            t1 = time.perf_counter()
            model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], **kw)
        return {"preprocess": pre, "total": pre + (time.perf_counter() - t1) * 1e3}
    return run



def smolvlm_eager_runner(model: Any, processor: Any, images: list[np.ndarray], kw: dict,
                         question: str = SMOLVLM_QUESTION) -> Callable[[], dict[str, float]]:
    """transformers' SmolVLM path: the chat template with the image and ``question``, the processor's ids and pixel
    values (left padding), generate; the prefill (vision tower, connector and the prompt through every layer, up
    to the first logits) and each later step timed by a logits processor that notes when it is called."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Clock(LogitsProcessor):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            self.stamps.append(time.perf_counter())
            return scores

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)

    def run() -> dict[str, float]:
        t = time.perf_counter()
        inputs = processor(text=[text] * len(images), images=[[im] for im in images], return_tensors="pt",
                           padding=True)
        pre = (time.perf_counter() - t) * 1e3
        clock = _Clock()
        with torch.no_grad():
            t1 = time.perf_counter()
            model.generate(**inputs, logits_processor=LogitsProcessorList([clock]), do_sample=False, **kw)
            t2 = time.perf_counter()
        steps = np.diff(clock.stamps) * 1e3
        return {"preprocess": pre, "prefill": (clock.stamps[0] - t1) * 1e3,
                "decode_per_token": float(np.mean(steps)) if len(steps) else 0.0,
                "total": pre + (t2 - t1) * 1e3}
    return run


def main(argv: list[str] | None = None) -> int:
    from edgecap.cli.args import OneLineParser
    from edgecap.cli.model import add_bench_arguments

    p = OneLineParser(prog="edgecap bench", description=__doc__.split("\n\n")[0])
    add_bench_arguments(p)
    return run(p.parse_args(argv))


SYSTEMS = ("eager", "fp32", "int8")


def _checked_request(args: argparse.Namespace, manifest: Any, model_dir: Path) -> tuple[list[str], Path]:
    """(the systems to time, the report path): what cannot run or be written is one line before any timing, not a
    traceback or an empty report at the end. Without --systems, the systems the directory holds."""
    holds = {"eager": (model_dir / "hf").is_dir(), **{p: p in manifest.precisions for p in ("fp32", "int8")}}
    missing = [s for s in args.systems or () if not holds[s]]
    if missing:
        raise InputError(f"--systems {' '.join(missing)}: {model_dir} has no "
                         + ", ".join("checkpoint in hf/ (eager)" if s == "eager" else f"{s} graphs" for s in missing)
                         + "; drop them, or run `edgecap quantize` for int8")
    positions = manifest.data["architecture"].get("decoder_positions")
    if positions is not None and args.tokens > positions:
        raise InputError(f"--tokens {args.tokens}: the model's decoder holds {positions} positions, so at most "
                         f"{positions} new tokens")
    out = Path(args.out or ROOT / "benchmarks" / "results" / "bench.json")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; expected a .json file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create its directory ({exc.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise InputError(f"--out {out}: its directory is not writable")
    return [s for s in args.systems or SYSTEMS if holds[s]], out


def run(args: argparse.Namespace) -> int:
    import onnxruntime
    from tqdm import tqdm

    from edgecap import Captioner
    from edgecap.manifest import load_manifest

    arch = args.arch or ("vitgpt2-base" if args.vitgpt2_random else None)
    if arch:
        workdir = args.workdir or ROOT / "engines" / f"{arch.removesuffix('-base')}-random"
        model_dir = prepare_random(arch, workdir, int8="int8" in (args.systems or SYSTEMS))
    else:
        model_dir = Path(args.model)
    manifest = load_manifest(model_dir)  # the manifest alone: a Captioner would load both graphs to read it
    hf_dir = model_dir / "hf"
    systems, out = _checked_request(args, manifest, model_dir)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(max(args.batch))]
    kw = dict(min_new_tokens=args.tokens, max_new_tokens=args.tokens, num_beams=1)
    smolvlm = manifest.data.get("family") in SMOLVLM_FAMILIES  # a question per image: both sides get the same one

    runners: dict[str, Callable[[list[np.ndarray]], Callable[[], dict[str, float]]]] = {}
    rss: dict[str, float] = {"start": rss_mb()}
    versions = {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    for system in systems:
        if system in ("fp32", "int8"):
            cap = Captioner(model_dir, precision=system, threads=args.threads)
            edge_kw = {**kw, "prompt": SMOLVLM_QUESTION} if smolvlm else kw
            runners[f"edgecap_{system}"] = lambda imgs, cap=cap, ekw=edge_kw: _edgecap_runner(cap, imgs, ekw,
                                                                                              prefill=smolvlm)
        elif system == "eager":
            import torch
            import transformers
            from transformers import AutoImageProcessor

            from .exporter import load_config
            from .families import family_for

            transformers.logging.set_verbosity_error()
            if args.threads:
                torch.set_num_threads(args.threads)
            model = family_for(load_config(str(hf_dir))).load(str(hf_dir))  # eager attention, eval mode
            try:
                proc = AutoImageProcessor.from_pretrained(hf_dir, backend="pil")
            except TypeError:
                proc = AutoImageProcessor.from_pretrained(hf_dir)
            runners["transformers_eager"] = lambda imgs, m=model, pr=proc: _eager_runner(m, pr, imgs, kw)
            if manifest.data.get("family") == "florence2":  # its processor also writes the task prompt's ids
                from transformers import AutoProcessor

                runners["transformers_eager"] = lambda imgs, m=model, pr=AutoProcessor.from_pretrained(hf_dir): \
                    _florence2_eager_runner(m, pr, imgs, kw)
            elif smolvlm:  # the processor writes the chat template's ids around the image tokens
                from transformers import AutoProcessor

                runners["transformers_eager"] = lambda imgs, m=model, pr=AutoProcessor.from_pretrained(hf_dir): \
                    smolvlm_eager_runner(m, pr, imgs, kw)
            versions.update(torch=torch.__version__, transformers=transformers.__version__)
        rss[f"after_loading_{system}"] = rss_mb()

    results: dict[str, Any] = {}
    load = {"start": load_average()}  # other tenants of a shared host show up here, not in the ratios
    for b in args.batch:
        load[f"batch{b}_start"] = load_average()
        calls = {name: make(images[:b]) for name, make in runners.items()}
        for call in calls.values():
            call()  # warm-up
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
        for i in tqdm(range(args.runs), desc=f"batch {b}", unit="round"):
            # alternate systems within each round, the order reversed every other round; pause between systems so
            # the previous one's idle worker threads (torch's OpenMP pool, ONNX Runtime's spinning threads) are
            # asleep before the next is timed
            for name in (list(calls) if i % 2 == 0 else list(reversed(calls))):
                time.sleep(args.settle_ms / 1e3)
                samples[name].append(calls[name]())
        for name, rows in samples.items():
            totals = [r["total"] for r in rows]
            stages = {k: percentiles([r[k] for r in rows]) for k in rows[0] if k != "total"}
            med = statistics.median(totals)
            results[f"{name}/batch{b}"] = {
                "per_batch_ms": percentiles(totals), "per_caption_ms_p50": med / b, "stages_ms": stages,
                "captions_per_s": 1000 * b / med, "tokens_per_s": 1000 * b * args.tokens / med, "runs_ms": totals}
        load[f"batch{b}_end"] = load_average()
    load["end"] = load_average()
    ratios = {}
    for b in args.batch:
        base = results.get(f"transformers_eager/batch{b}")
        for name in ("edgecap_fp32", "edgecap_int8"):
            r = results.get(f"{name}/batch{b}")
            if base and r:
                ratios[f"{name}_vs_eager/batch{b}"] = base["per_batch_ms"]["p50"] / r["per_batch_ms"]["p50"]
    m = manifest.data
    int8 = m["graphs"].get("int8", {})
    report = {
        "model": str(model_dir), "tokens": args.tokens, "runs": args.runs, "settle_ms": args.settle_ms,
        "results": results, "speedups": ratios,
        "graphs": {"attention": m["architecture"].get("attention", "standard"), "int8_recipe": int8.get("recipe"),
                   "sha256": {f"{p}.{part}": g[part]["sha256"] for p, g in m["graphs"].items()
                              for part in ("encoder", "decoder") if part in g}},
        "rss_mb": {**rss, "peak": peak_rss_mb()},
        "machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "threads": args.threads or "default",
                    "python": platform.python_version(), "logical_cpus": os.cpu_count(), "loadavg_1m": load},
        "versions": versions,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    for name, r in results.items():
        print(f"{name:28s} per caption p50 {r['per_caption_ms_p50']:9.1f} ms  {r['captions_per_s']:7.2f} captions/s")
    for name, v in ratios.items():
        print(f"{name:28s} {v:.2f}x")
    print(f"wrote {out}")
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = sorted(results)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.5))
    per_caption = [[t / int(n.split("batch")[1]) for t in results[n]["runs_ms"]] for n in names]
    ax.boxplot(per_caption, orientation="horizontal")
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_xscale("log")
    ax.set_xlabel("ms per caption (log scale)")
    ax.set_title("edgecap benchmark: latency per caption, one run, systems alternated")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
