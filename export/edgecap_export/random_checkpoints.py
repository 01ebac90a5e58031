"""Random-weight checkpoints at published dimensions, for benchmarks: each saved with save_pretrained (model and
processor, a tokenizer built in code with the checkpoint's special-token ids), so the real loading path runs.

    python -c "from edgecap_export.random_checkpoints import prepare_random; \
               prepare_random('blip-base', 'engines/blip-random')"   # build, export (validated), quantize
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from edgecap.errors import InputError


def _built_whole(build: Callable[..., Path]) -> Callable[..., Path]:
    """A random checkpoint is built in a side directory and renamed into place once whole: a build stopped midway
    (Ctrl-C during save_pretrained's hundreds of MB) left a config.json beside part of the weights, which every
    later run took as built and failed on. An existing OUT with a config.json is taken as built."""
    @functools.wraps(build)
    def whole(out: Path, *args: Any, **kwargs: Any) -> Path:
        out = Path(out)
        if (out / "config.json").is_file():
            return out
        if out.exists() and any(out.iterdir()):
            raise InputError(f"{out} exists and holds no checkpoint (no config.json); delete it or pick another "
                             "--workdir")
        side = out.with_name(out.name + ".partial")
        shutil.rmtree(side, ignore_errors=True)
        build(side, *args, **kwargs)
        if out.exists():
            out.rmdir()
        os.replace(side, out)
        return out
    return whole


@_built_whole
def build_vitgpt2_random(out: Path, seed: int = 0) -> Path:
    """save_pretrained a random-weight model with nlpconnect/vit-gpt2-image-captioning's architecture."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GPT2Config, PreTrainedTokenizerFast, ViTConfig, ViTImageProcessorPil,
                              VisionEncoderDecoderConfig, VisionEncoderDecoderModel)

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


@_built_whole
def build_blip_random(out: Path, seed: int = 0) -> Path:
    """save_pretrained a random-weight model with Salesforce/blip-image-captioning-base's architecture and token
    ids ([PAD] 0, [CLS] 101, [SEP] 102, [DEC] 30522 as bos), with a BlipProcessor."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil,
                              BlipProcessor)

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
    # the published text_config: BERT-base's 12 heads of 64 (BlipTextConfig's default is 8 heads, which the
    # benchmarks before 2026-12-01 ran with: the same GEMMs, attention split 8 x 96)
    cfg = BlipConfig(vision_config={"image_size": 384, "patch_size": 16, "initializer_range": 0.02},
                     text_config={"vocab_size": 30524, "bos_token_id": 30522, "pad_token_id": 0,
                                  "sep_token_id": 102, "eos_token_id": 2, "num_attention_heads": 12,
                                  "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                                  "max_position_embeddings": 512})
    BlipForConditionalGeneration(cfg).eval().save_pretrained(out)
    BlipProcessor(BlipImageProcessorPil(), tokenizer).save_pretrained(out)
    return out


@_built_whole
def build_florence2_random(out: Path, seed: int = 0) -> Path:
    """save_pretrained a random-weight model with Florence-2-base's architecture (DaViT 128/256/512/1024 wide,
    depths 1/1/9/1, 768 px, 577 image features; BART base, 6 + 6 layers of 768, vocabulary 51289) and token ids
    (<s> 0, <pad> 1, </s> 2, <loc_0> 50269 ..., <image> 51289), with a Florence2Processor and the published
    generation settings (3 beams, no_repeat_ngram_size 3, forced <s>/</s>)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (BartConfig, BartTokenizer, CLIPImageProcessorPil, Florence2Config,
                              Florence2ForConditionalGeneration, Florence2Processor, Florence2VisionConfig)

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


@_built_whole
def build_smolvlm_random(out: Path, seed: int = 0, *, text: dict | None = None,
                         vision: dict | None = None) -> Path:
    """save_pretrained a random-weight SmolVLM with HuggingFaceTB/SmolVLM-256M-Instruct's architecture and token
    ids, and an Idefics3Processor (the processor the checkpoint names) with image splitting off: one 512 px tile.
    ``text`` and ``vision`` override dimensions (tests build a tiny one the same way)."""
    import torch
    from transformers import (Idefics3ImageProcessorPil, Idefics3Processor, LlamaConfig, SmolVLMConfig,
                              SmolVLMForConditionalGeneration, SmolVLMVisionConfig)

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
    # exported again unless an export of these weights finished and passed its validation (one stopped midway
    # leaves no manifest, or one whose validation reads "running"; a checkpoint built again since, with other
    # weights, made every later bench refuse hf/ as "not the checkpoint exported")
    from .checkpoint import weights_sha256

    manifest = work / "manifest.json"
    data = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if ((data.get("validation") or {}).get("passed") is not True
            or (data.get("source") or {}).get("weights_sha256") != weights_sha256(hf)):
        export_model(str(hf), work, name=work.name)
    if int8 and "int8" not in load_manifest(work).precisions:
        quantize_dir(work, accept_quality_drop=True, calib_frames=32, eval_frames=8)
    return work
