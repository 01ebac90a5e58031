"""transformers' ``VisionEncoderDecoderModel``: a ViT or DeiT encoder with a GPT-2 decoder.

Architecture knowledge as data (the optimum-style registry): an :class:`EncoderSpec` says how to read image size,
patch size and sequence length from the encoder config; a :class:`DecoderSpec` says where the layer/head/width
counts live and which torch step module implements the graph contract. Another encoder or decoder of this wrapper
is an entry here (and a step module in :mod:`edgecap_export.wrappers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from edgecap.errors import ExportError, UnsupportedModelError

from ..specs import ModelShape, load_eager


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
    step_factory: Callable[..., Any]  # (hf_decoder_lm, attention=) -> torch.nn.Module implementing the step
    unsupported: tuple[tuple[str, Any], ...] = ()  # (config attribute, the only supported value)

    def dims(self, cfg: Any) -> tuple[int, int, int]:
        layers, heads, hidden = (int(getattr(cfg, a)) for a in (self.layers_attr, self.heads_attr, self.hidden_attr))
        return layers, heads, hidden // heads


def _gpt2_step(lm: Any, attention: str) -> Any:
    from ..wrappers import GPT2CachedStep

    return GPT2CachedStep(lm, attention=attention)


ENCODERS: dict[str, EncoderSpec] = {
    "vit": EncoderSpec("vit", extra_tokens=1),
    "deit": EncoderSpec("deit", extra_tokens=2),
}
DECODERS: dict[str, DecoderSpec] = {
    "gpt2": DecoderSpec("gpt2", "n_layer", "n_head", "n_embd", _gpt2_step,
                        unsupported=(("add_cross_attention", True),)),
}


class VisionEncoderDecoder:
    """The ``vision-encoder-decoder`` family (see :class:`edgecap_export.specs.Family`)."""

    name = "vision-encoder-decoder"
    model_types = ("vision-encoder-decoder",)
    validation_prompts: tuple[str | None, ...] = (None,)

    def describe(self) -> str:
        return (f"vision-encoder-decoder with encoder in {{{', '.join(sorted(ENCODERS))}}} "
                f"and decoder in {{{', '.join(sorted(DECODERS))}}}")

    def specs(self, config: Any) -> tuple[EncoderSpec, DecoderSpec]:
        """The encoder and decoder specs of a config, or one line naming what was found and what is supported."""
        enc_type = config.encoder.model_type
        dec_type = config.decoder.model_type
        if enc_type not in ENCODERS or dec_type not in DECODERS:
            raise UnsupportedModelError(f"unsupported vision-encoder-decoder ({enc_type} encoder + {dec_type} "
                                        f"decoder): edgecap exports {self.describe()}")
        dec = DECODERS[dec_type]
        for attr, value in dec.unsupported:
            if getattr(config.decoder, attr, value) != value:
                raise UnsupportedModelError(f"decoder config {attr}={getattr(config.decoder, attr)!r} is not "
                                            f"supported (expected {value!r})")
        return ENCODERS[enc_type], dec

    def shape(self, config: Any) -> ModelShape:
        enc, dec = self.specs(config)
        layers, heads, head_dim = dec.dims(config.decoder)
        return ModelShape(encoder_type=enc.model_type, decoder_type=dec.model_type, num_layers=layers,
                          num_heads=heads, head_dim=head_dim, vocab_size=int(config.decoder.vocab_size),
                          image_size=enc.image_size(config.encoder), num_channels=int(config.encoder.num_channels),
                          encoder_seq_len=enc.seq_len(config.encoder),
                          encoder_hidden_size=int(config.encoder.hidden_size),
                          decoder_positions=getattr(config.decoder, "max_position_embeddings", None))

    def load(self, model: str) -> Any:
        from transformers import VisionEncoderDecoderModel

        return load_eager(VisionEncoderDecoderModel, model)

    def graph_modules(self, hf_model: Any, attention: str) -> tuple[Any, Any]:
        from ..wrappers import EncoderWithCrossKV

        _enc, dec = self.specs(hf_model.config)
        step = dec.step_factory(hf_model.decoder, attention=attention).eval()
        return EncoderWithCrossKV(hf_model, step).eval(), step

    def generation_config(self, hf_model: Any) -> Any:
        return hf_model.generation_config

    def default_length_cap(self, hf_model: Any) -> int | None:
        return None  # a VisionEncoderDecoderConfig has no max_position_embeddings of its own

    def special_tokens(self, hf_model: Any) -> dict[str, Any]:
        gc = hf_model.generation_config
        eos = gc.eos_token_id
        eos = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(t) for t in eos])
        start = gc.decoder_start_token_id if gc.decoder_start_token_id is not None else gc.bos_token_id
        if start is None:
            raise ExportError("the model has no decoder_start_token_id (nor bos_token_id); set it in the config")
        pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else None)
        return {"decoder_start_token_id": int(start), "eos_token_id": eos,
                "pad_token_id": None if pad is None else int(pad),
                "bos_token_id": None if gc.bos_token_id is None else int(gc.bos_token_id)}

    def prompt_spec(self, hf_model: Any) -> None:
        return None  # captions are unconditional

    def reference_logits(self, hf_model: Any, pixel_values: Any, ids: Any) -> Any:
        return hf_model(pixel_values=pixel_values, decoder_input_ids=ids).logits

    def reference_generate(self, hf_model: Any, model: str, pixel_values: Any, prompt: str | None,
                           **kw: Any) -> tuple[Any, int]:
        return hf_model.generate(pixel_values=pixel_values, **kw), 1

    def reference_cross_kv(self, hf_model: Any, pixel_values: Any, heads: int) -> tuple[list, list, Any]:
        states = hf_model.encoder(pixel_values=pixel_values).last_hidden_state
        proj = getattr(hf_model, "enc_to_dec_proj", None)
        cross_in = proj(states) if proj is not None else states
        ks, vs = [], []
        for block in hf_model.decoder.transformer.h:
            k, v = block.crossattention.c_attn(cross_in).split(cross_in.shape[-1], dim=2)
            shape = (k.shape[0], k.shape[1], heads, -1)
            ks.append(k.view(shape).transpose(1, 2))
            vs.append(v.view(shape).transpose(1, 2))
        return ks, vs, states.mean(dim=1)


VISION_ENCODER_DECODER = VisionEncoderDecoder()
