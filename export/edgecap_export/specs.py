"""Architecture knowledge as data, one entry per Hugging Face model type (the optimum-style registry).

An encoder spec says how to read image size, patch size and sequence length from the encoder config; a decoder
spec says where the layer/head/width counts live and which torch step module implements the graph contract
(see ARCHITECTURE.md: cross K/V computed once by the encoder graph; one decoder graph, no `If`, self-attention
past of length >= 0, last-position logits). Adding BLIP or GIT means adding entries here and a step module,
not touching the runtime: the manifest carries every name the runtime uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from edgecap.errors import UnsupportedModelError


@dataclass(frozen=True)
class EncoderSpec:
    model_type: str
    extra_tokens: int  # tokens besides the patches: [CLS] for ViT, [CLS] + distillation for DeiT

    def image_size(self, cfg: Any) -> tuple[int, int]:
        size = cfg.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def seq_len(self, cfg: Any) -> int:
        h, w = self.image_size(cfg)
        p = cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0]
        return (h // p) * (w // p) + self.extra_tokens


@dataclass(frozen=True)
class DecoderSpec:
    model_type: str
    layers_attr: str
    heads_attr: str
    hidden_attr: str
    step_factory: Callable[..., Any]  # (hf_decoder_lm, decoder_config, attention=) -> torch.nn.Module implementing the step
    unsupported: tuple[tuple[str, Any], ...] = ()  # (config attribute, the only supported value)

    def dims(self, cfg: Any) -> tuple[int, int, int]:
        layers, heads, hidden = (int(getattr(cfg, a)) for a in (self.layers_attr, self.heads_attr, self.hidden_attr))
        return layers, heads, hidden // heads


def _gpt2_step(lm: Any, cfg: Any, attention: str = "contrib") -> Any:
    from .wrappers import GPT2CachedStep

    return GPT2CachedStep(lm, attention=attention)


ENCODERS: dict[str, EncoderSpec] = {
    "vit": EncoderSpec("vit", extra_tokens=1),
    "deit": EncoderSpec("deit", extra_tokens=2),
}
DECODERS: dict[str, DecoderSpec] = {
    "gpt2": DecoderSpec("gpt2", "n_layer", "n_head", "n_embd", _gpt2_step,
                        unsupported=(("add_cross_attention", True),)),
}
SUPPORTED_WRAPPERS = ("vision-encoder-decoder",)


def describe_supported() -> str:
    return (f"vision-encoder-decoder with encoder in {{{', '.join(sorted(ENCODERS))}}} "
            f"and decoder in {{{', '.join(sorted(DECODERS))}}}")


def resolve(config: Any) -> tuple[EncoderSpec, DecoderSpec]:
    """Pick the specs for a checkpoint's config, or raise one line naming what was found and what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_WRAPPERS:
        raise UnsupportedModelError(f"unsupported model type {model_type!r}: edgecap exports {describe_supported()}")
    enc_type = config.encoder.model_type
    dec_type = config.decoder.model_type
    if enc_type not in ENCODERS or dec_type not in DECODERS:
        raise UnsupportedModelError(f"unsupported vision-encoder-decoder ({enc_type} encoder + {dec_type} decoder): "
                                    f"edgecap exports {describe_supported()}")
    dec = DECODERS[dec_type]
    for attr, value in dec.unsupported:
        if getattr(config.decoder, attr, value) != value:
            raise UnsupportedModelError(f"decoder config {attr}={getattr(config.decoder, attr)!r} is not supported "
                                        f"(expected {value!r})")
    return ENCODERS[enc_type], dec


def io_names(layers: int) -> dict[str, dict[str, Any]]:
    """The graph contract's tensor names, generated from the layer count."""
    return {
        "encoder": {
            "pixel_values": "pixel_values",
            "cross_k": [f"cross_k.{i}" for i in range(layers)],
            "cross_v": [f"cross_v.{i}" for i in range(layers)],
            "pooled": "pooled",
        },
        "decoder": {
            "input_ids": "input_ids",
            "past_k": [f"past_k.{i}" for i in range(layers)],
            "past_v": [f"past_v.{i}" for i in range(layers)],
            "cross_k": [f"cross_k.{i}" for i in range(layers)],
            "cross_v": [f"cross_v.{i}" for i in range(layers)],
            "logits": "logits",
            "present_k": [f"present_k.{i}" for i in range(layers)],
            "present_v": [f"present_v.{i}" for i in range(layers)],
        },
    }
