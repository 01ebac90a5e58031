"""transformers' ``BlipForConditionalGeneration``: a ViT encoder and a BERT-style decoder with cross-attention in
every layer (Salesforce/blip-image-captioning-base and -large).

What BLIP's ``generate`` does differently from a VisionEncoderDecoder, and the manifest records so that the
runtime reproduces it:

* it calls ``text_decoder.generate``: the settings are the text decoder's generation config (built from the text
  config; the top-level generation_config.json is not read), decoding stops at ``sep_token_id`` (the config's
  ``eos_token_id`` is an unused id in the published checkpoints) and pads with ``pad_token_id``;
* the decoder is decoder-only: a text prompt is tokenized by the processor (``[CLS] text [SEP]``), the first id
  is replaced by ``bos_token_id`` (``[DEC]``) and the last dropped; that prefix starts the sequence, its ids are
  part of what ``generate`` returns, and a ``max_length`` counts them.
"""

from __future__ import annotations

from typing import Any

from edgecap.errors import UnsupportedModelError

from ..specs import ModelShape, load_eager

# The prompt the published model cards use for conditional captioning; the export validates with it.
EXAMPLE_PROMPT = "a photography of"


class Blip:
    """The ``blip`` family (see :class:`edgecap_export.specs.Family`)."""

    name = "blip"
    model_types = ("blip",)
    validation_prompts: tuple[str | None, ...] = (None, EXAMPLE_PROMPT)

    def describe(self) -> str:
        return "blip (BlipForConditionalGeneration: ViT + BERT decoder)"

    def shape(self, config: Any) -> ModelShape:
        vision, text = config.vision_config, config.text_config
        archs = getattr(config, "architectures", None) or ["BlipForConditionalGeneration"]
        if "BlipForConditionalGeneration" not in archs:
            raise UnsupportedModelError(f"unsupported BLIP head {archs[0]}: edgecap exports "
                                        "BlipForConditionalGeneration (image captioning)")
        if text.hidden_size % text.num_attention_heads:
            raise UnsupportedModelError(f"BLIP text hidden_size {text.hidden_size} is not a multiple of its "
                                        f"{text.num_attention_heads} heads")
        for attr in ("bos_token_id", "sep_token_id"):
            if getattr(text, attr, None) is None:
                raise UnsupportedModelError(f"BLIP text_config.{attr} is not set; BLIP's generate needs it")
        size = int(vision.image_size)
        return ModelShape(encoder_type="blip_vision_model", decoder_type="blip_text_model",
                          num_layers=int(text.num_hidden_layers), num_heads=int(text.num_attention_heads),
                          head_dim=int(text.hidden_size) // int(text.num_attention_heads),
                          vocab_size=int(text.vocab_size), image_size=(size, size), num_channels=3,
                          encoder_seq_len=(size // int(vision.patch_size)) ** 2 + 1,
                          encoder_hidden_size=int(vision.hidden_size),
                          decoder_positions=int(text.max_position_embeddings))

    def load(self, model: str) -> Any:
        from transformers import BlipForConditionalGeneration

        return load_eager(BlipForConditionalGeneration, model)

    def graph_modules(self, hf_model: Any, attention: str) -> tuple[Any, Any]:
        from ..blip_graphs import BlipCachedStep, BlipEncoderWithCrossKV

        step = BlipCachedStep(hf_model.text_decoder, attention=attention).eval()
        return BlipEncoderWithCrossKV(hf_model, step).eval(), step

    def generation_config(self, hf_model: Any) -> Any:
        return hf_model.text_decoder.generation_config

    def default_length_cap(self, hf_model: Any) -> int | None:
        return int(hf_model.text_decoder.config.max_position_embeddings)  # BLIP's generate is the text decoder's

    def special_tokens(self, hf_model: Any) -> dict[str, Any]:
        text = hf_model.config.text_config
        return {"decoder_start_token_id": int(text.bos_token_id), "eos_token_id": [int(text.sep_token_id)],
                "pad_token_id": None if text.pad_token_id is None else int(text.pad_token_id),
                "bos_token_id": int(text.bos_token_id)}

    def prompt_spec(self, hf_model: Any) -> dict[str, Any]:
        text = hf_model.config.text_config
        return {"kind": "prefix", "add_special_tokens": True, "first_token_id": int(text.bos_token_id),
                "drop_last": True, "max_positions": int(text.max_position_embeddings)}

    def reference_cross_kv(self, hf_model: Any, pixel_values: Any, heads: int) -> tuple[list, list, Any]:
        states = hf_model.vision_model(pixel_values=pixel_values).last_hidden_state
        ks, vs = [], []
        for layer in hf_model.text_decoder.bert.encoder.layer:
            xa = layer.crossattention.self
            shape = (states.shape[0], states.shape[1], heads, -1)
            ks.append(xa.key(states).view(shape).transpose(1, 2))
            vs.append(xa.value(states).view(shape).transpose(1, 2))
        return ks, vs, states.mean(dim=1)

    def reference_logits(self, hf_model: Any, pixel_values: Any, ids: Any) -> Any:
        return hf_model(pixel_values=pixel_values, input_ids=ids).logits

    def reference_generate(self, hf_model: Any, model: str, pixel_values: Any, prompt: str | None,
                           **kw: Any) -> tuple[Any, int]:
        """transformers' output ids [B, L] for a prompt (tokenized by the checkpoint's processor) and the prefix
        length generate started from."""
        if prompt is None:
            return hf_model.generate(pixel_values=pixel_values, **kw), 1
        from transformers import AutoProcessor

        # with the processor's attention mask, as model.generate(**processor(images, text)) runs: without it
        # transformers masks every id equal to pad_token_id, the start token too where a config makes them equal
        text = AutoProcessor.from_pretrained(model)(text=[prompt] * pixel_values.shape[0], return_tensors="pt")
        return (hf_model.generate(pixel_values=pixel_values, input_ids=text["input_ids"],
                                  attention_mask=text["attention_mask"], **kw), text["input_ids"].shape[1] - 1)


BLIP = Blip()
