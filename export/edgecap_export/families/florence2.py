"""transformers' ``Florence2ForConditionalGeneration``: a DaViT vision tower, a projector and a BART
encoder-decoder (florence-community/Florence-2-base and -large, native in transformers >= 4.56).

What Florence-2 does differently, and the manifest records so that the runtime reproduces it:

* the prompt is a task token. ``Florence2Processor`` expands it into an English instruction (its task tables), writes
  ``<image>`` x image_seq_length, ``<s>``, the instruction, ``</s>`` and tokenizes that without adding specials; the
  image features replace the placeholders and the BART encoder reads the whole sequence. So the encoder side takes
  the prompt's token ids, and the decoder starts from ``decoder_start_token_id`` alone;
* generation forces ``<s>`` first and ``</s>`` at the length limit (``forced_bos_token_id``,
  ``forced_eos_token_id``); published configs use 3 beams, no_repeat_ngram_size 3 and early stopping;
* detection-style answers are ``label<loc_x0><loc_y0><loc_x1><loc_y1>`` runs that ``post_process_generation`` turns
  into pixel boxes with the processor's post-processor settings (recorded in the ``prompt`` section).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from edgecap.errors import ExportError, UnsupportedModelError

from ..specs import ModelShape, generation_tokens, load_eager

# The tasks edgecap runs, with the post-processing Florence2Processor applies to each answer.
TASKS = {"<CAPTION>": "pure_text", "<DETAILED_CAPTION>": "pure_text", "<MORE_DETAILED_CAPTION>": "pure_text",
         "<OCR>": "pure_text", "<OD>": "description_with_bboxes", "<CAPTION_TO_PHRASE_GROUNDING>": "phrase_grounding"}
DEFAULT_TASK = "<CAPTION>"  # what a caption without a prompt asks


class Florence2:
    """The ``florence2`` family (see :class:`edgecap_export.specs.Family`)."""

    name = "florence2"
    model_types = ("florence2",)
    validation_prompts: tuple[str | None, ...] = ("<CAPTION>", "<DETAILED_CAPTION>", "<OD>")

    def describe(self) -> str:
        return "florence2 (Florence2ForConditionalGeneration: DaViT + BART)"

    def shape(self, config: Any) -> ModelShape:
        text = config.text_config
        archs = getattr(config, "architectures", None) or ["Florence2ForConditionalGeneration"]
        if "Florence2ForConditionalGeneration" not in archs:
            raise UnsupportedModelError(f"unsupported Florence-2 head {archs[0]}: edgecap exports "
                                        "Florence2ForConditionalGeneration")
        if getattr(text, "model_type", "bart") != "bart":
            raise UnsupportedModelError(f"Florence-2 text model {text.model_type!r} is not supported: edgecap exports "
                                        "the BART encoder-decoder (text_config.model_type 'bart')")
        vision = config.vision_config
        if int(vision.projection_dim) != int(text.d_model):
            raise UnsupportedModelError(f"Florence-2 projection_dim {vision.projection_dim} differs from the text "
                                        f"model's d_model {text.d_model}: the image features cannot enter the encoder")
        if text.d_model % text.decoder_attention_heads:
            raise UnsupportedModelError(f"Florence-2 d_model {text.d_model} is not a multiple of its "
                                        f"{text.decoder_attention_heads} decoder heads")
        # The config holds no image size: the processor does (size, and image_seq_length image features).
        from ..checkpoint import image_processor_settings

        pc = image_processor_settings(config.name_or_path)
        size = pc.get("size") or {}
        if "height" not in size or "image_seq_length" not in pc:
            raise UnsupportedModelError(f"{config.name_or_path} has no Florence-2 image processor settings "
                                        "(size and image_seq_length); save the processor with the model")
        h, w = int(size["height"]), int(size["width"])
        for k, st, pad in zip(vision.patch_size, vision.patch_stride, vision.patch_padding):
            h, w = (h + 2 * pad - k) // st + 1, (w + 2 * pad - k) // st + 1
        if int(pc["image_seq_length"]) != h * w + 1:
            raise UnsupportedModelError(f"the processor's image_seq_length {pc['image_seq_length']} differs from the "
                                        f"{h * w + 1} image features the vision tower makes at "
                                        f"{size['height']}x{size['width']}")
        return ModelShape(encoder_type="florence_vision", decoder_type="bart",
                          num_layers=int(text.decoder_layers), num_heads=int(text.decoder_attention_heads),
                          head_dim=int(text.d_model) // int(text.decoder_attention_heads),
                          vocab_size=int(text.vocab_size), image_size=(int(size["height"]), int(size["width"])),
                          num_channels=3, encoder_seq_len=int(pc["image_seq_length"]),
                          encoder_hidden_size=int(text.d_model),
                          decoder_positions=int(text.max_position_embeddings))

    def load(self, model: str) -> Any:
        from transformers import Florence2ForConditionalGeneration

        return load_eager(Florence2ForConditionalGeneration, model)

    def graph_modules(self, hf_model: Any, attention: str) -> tuple[Any, Any]:
        from ..florence2_graphs import BartCachedStep, Florence2EncoderWithCrossKV

        step = BartCachedStep(hf_model.model.language_model.decoder, hf_model.lm_head, attention=attention).eval()
        return Florence2EncoderWithCrossKV(hf_model, step).eval(), step

    def generation_config(self, hf_model: Any) -> Any:
        return hf_model.generation_config

    def default_length_cap(self, hf_model: Any) -> int | None:
        return None  # Florence2Config has no max_position_embeddings of its own (its text_config has)

    def special_tokens(self, hf_model: Any) -> dict[str, Any]:
        return generation_tokens(hf_model.generation_config, hf_model.config.text_config)

    def prompt_spec(self, hf_model: Any) -> dict[str, Any]:
        """The ``task`` prompt section: the processor's expansion of each task token, how it wraps the text, and
        the post-processing settings (read from the checkpoint's processor)."""
        proc = _processor(hf_model)
        tasks = {}
        for token, kind in TASKS.items():
            takes_input = token in proc.task_prompts_with_input
            table = proc.task_prompts_with_input if takes_input else proc.task_prompts_without_inputs
            tasks[token] = {"text": table[token], "takes_input": takes_input, "post_processing": kind}
        tok = proc.tokenizer
        config = proc.post_processor_config or {}
        return {"kind": "task", "default_task": DEFAULT_TASK, "tasks": tasks, "bos_token": tok.bos_token,
                "eos_token": tok.eos_token,
                "standalone_tokens": list(proc.task_prompts_without_inputs),
                "banned_grounding_tokens": list(config.get("phrase_grounding", {}).get("banned_grounding_tokens", [])),
                "quantize_bins": list(proc.post_processor.quantize_bins),
                "max_positions": int(hf_model.config.text_config.max_position_embeddings),
                "image_positions": int(proc.num_image_tokens),
                "reserved": [proc.image_token] if getattr(proc, "image_token", None) else []}

    def _inputs(self, hf_model: Any, pixel_values: Any, prompt: str | None) -> Any:
        """The processor's input_ids for ``prompt`` (None: the default task), image placeholders included."""
        import numpy as np

        images = [np.zeros((8, 8, 3), np.uint8)] * int(pixel_values.shape[0])
        return _processor(hf_model)(text=[prompt or DEFAULT_TASK] * len(images), images=images,
                                    return_tensors="pt")["input_ids"]

    def reference_cross_kv(self, hf_model: Any, pixel_values: Any, heads: int) -> tuple[list, list, Any]:
        ids = self._inputs(hf_model, pixel_values, None)
        out = hf_model.model(input_ids=ids, pixel_values=pixel_values, decoder_input_ids=ids[:, :1])
        states = out.encoder_last_hidden_state
        ks, vs = [], []
        for layer in hf_model.model.language_model.decoder.layers:
            xa = layer.encoder_attn
            shape = (states.shape[0], states.shape[1], heads, -1)
            ks.append(xa.k_proj(states).view(shape).transpose(1, 2))
            vs.append(xa.v_proj(states).view(shape).transpose(1, 2))
        return ks, vs, hf_model.model.get_image_features(pixel_values).pooler_output.mean(dim=1)

    def reference_logits(self, hf_model: Any, pixel_values: Any, ids: Any) -> Any:
        inputs = self._inputs(hf_model, pixel_values, None)
        return hf_model(input_ids=inputs, pixel_values=pixel_values, decoder_input_ids=ids).logits

    def reference_generate(self, hf_model: Any, model: str, pixel_values: Any, prompt: str | None,
                           **kw: Any) -> tuple[Any, int]:
        inputs = self._inputs(hf_model, pixel_values, prompt)
        return hf_model.generate(input_ids=inputs, pixel_values=pixel_values, **kw), 1


def _processor(hf_model: Any) -> Any:
    return _load_processor(hf_model.name_or_path)


@lru_cache(maxsize=4)
def _load_processor(model: str) -> Any:
    """The checkpoint's Florence2Processor, read once per export (the parity grid asks for it per case)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model)
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # AttributeError: a tokenizer without <image>
        raise ExportError(f"{model} has no usable Florence-2 processor ({type(exc).__name__}); save the processor "
                          "(tokenizer and image processor) with the model (processor.save_pretrained(dir))") from None


FLORENCE2 = Florence2()
