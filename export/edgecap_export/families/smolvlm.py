"""SmolVLM (HuggingFaceTB/SmolVLM-256M/500M-Instruct: ``Idefics3ForConditionalGeneration``, and transformers'
``SmolVLMForConditionalGeneration``): a SigLIP tower, a pixel-shuffle connector and a Llama decoder (SmolLM2) with
grouped-query attention. A decoder-only family: no cross-attention, so the export writes a prefill graph (image +
prompt -> every layer's K/V and the first logits, in the encoder graph's place) and a step graph over the cache
(:mod:`edgecap_export.smolvlm_graphs`).

What the runtime reproduces, recorded in the manifest:

* one tile per image: the processor resizes the longest edge, then to a ``max_image_size`` square; its
  ``<image>`` in the chat text becomes ``<fake_token_around_image><global-img>`` + ``<image>`` x image_seq_len +
  ``<fake_token_around_image>``;
* the prompt is the user's text in the checkpoint's chat template (``apply_chat_template`` with an image and the
  text, generation prompt added). The export renders the template once around a sentinel and records the text
  before and after it (image expanded), so the runtime renders without jinja (``prompt.kind`` "chat");
* ``generate`` returns the prompt's ids and the new ones; edgecap returns the new ones (cut after the first EOS).
  Batches of different prompt lengths are left-padded with ``pad_token_id``, the attention mask zero there and the
  position ids ``cumsum(mask) - 1`` (0 on padding), as transformers' generate builds them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from edgecap._log import logger
from edgecap.errors import ExportError, UnsupportedModelError
from edgecap.imaging import RESAMPLE_NAMES

from ..specs import ModelShape, generation_tokens, load_eager

# What a caption without a prompt asks.
DEFAULT_PROMPT = "Describe what happens in this frame."
_SENTINEL = "EDGECAP-USER-TEXT-7f3a"


@lru_cache(maxsize=4)
def processor_for(model: str) -> Any:
    """The checkpoint's Idefics3Processor (left padding, as a batch for a decoder-only generate needs)."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(model)
    proc.tokenizer.padding_side = "left"
    proc.image_processor.do_image_splitting = False  # edgecap exports the one-tile path (see image_settings)
    return proc


def chat_text(processor: Any, text: str) -> str:
    """The checkpoint's chat template around one image and the user's ``text``, generation prompt added."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class SmolVLM:
    """The ``smolvlm`` family (see :class:`edgecap_export.specs.Family`); decoder-only."""

    name = "smolvlm"
    model_types = ("idefics3", "smolvlm")
    decoder_only = True
    # The export's parity grid: prompts of different lengths, in one padded batch and alone.
    validation_prompts: tuple[str | None, ...] = (
        DEFAULT_PROMPT, "Is the gate open?", "How many people are at the door, and what are they wearing?")

    def describe(self) -> str:
        return "smolvlm (SmolVLM / Idefics3ForConditionalGeneration: SigLIP + Llama, one image tile)"

    def shape(self, config: Any) -> ModelShape:
        text, vision = config.text_config, config.vision_config
        archs = getattr(config, "architectures", None) or ["Idefics3ForConditionalGeneration"]
        if archs[0] not in ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"):
            raise UnsupportedModelError(f"unsupported SmolVLM head {archs[0]}: edgecap exports "
                                        "Idefics3ForConditionalGeneration and SmolVLMForConditionalGeneration")
        if getattr(text, "model_type", None) != "llama":
            raise UnsupportedModelError(f"SmolVLM text model {getattr(text, 'model_type', None)!r} is not supported: "
                                        "edgecap exports the Llama decoder the published checkpoints use")
        rope = (getattr(text, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope != "default":
            raise UnsupportedModelError(f"rope_type {rope!r} is not supported: edgecap exports the default RoPE")
        heads, kv_heads = int(text.num_attention_heads), int(text.num_key_value_heads)
        if heads % kv_heads:
            raise UnsupportedModelError(f"{heads} attention heads are not a multiple of {kv_heads} KV heads")
        tile = int(self.image_settings(config.name_or_path)["max_image_size"]["longest_edge"])
        patch, scale = int(vision.patch_size), int(config.scale_factor)
        if tile % (patch * scale):
            raise UnsupportedModelError(f"tile {tile} px is not a multiple of patch {patch} x scale factor {scale}")
        return ModelShape(encoder_type="idefics3_vision", decoder_type="llama", num_layers=int(text.num_hidden_layers),
                          num_heads=heads, num_kv_heads=kv_heads,
                          head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads),
                          vocab_size=int(text.vocab_size), image_size=(tile, tile), num_channels=3,
                          encoder_seq_len=(tile // patch // scale) ** 2, encoder_hidden_size=int(vision.hidden_size))

    def image_settings(self, model: str) -> dict[str, Any]:
        """The manifest's ``image`` section: the common keys (height, width, mean, ...) and the processor's own
        settings that :func:`edgecap.idefics3_image.preprocess_idefics3` reads."""
        from ..checkpoint import image_processor_settings

        pc = image_processor_settings(model)
        if not str(pc.get("image_processor_type")).startswith(("Idefics3ImageProcessor", "SmolVLMImageProcessor")):
            raise UnsupportedModelError(f"{model} has image processor {pc.get('image_processor_type')!r}: expected "
                                        "Idefics3ImageProcessor settings (save the processor with the model)")
        from transformers import Idefics3ImageProcessorPil

        from ..idefics3_settings import IDEFICS3_KEYS, idefics3_settings

        if pc.get("do_image_splitting", True):  # the published SmolVLM-256M/500M processors split (the default)
            logger.warning("%s splits large images into 512 px tiles; edgecap exports one tile per image (the "
                           "processor's do_image_splitting=False path): validation and the runtime use that", model)
        # the Pillow processor built from what the checkpoint holds fills the defaults of what it leaves out
        kept = {k: v for k, v in pc.items() if k in IDEFICS3_KEYS}
        out = idefics3_settings(Idefics3ImageProcessorPil(**{**kept, "do_image_splitting": False}))
        tile = out["max_image_size"]["longest_edge"]
        return {"height": tile, "width": tile, "do_resize": out["do_resize"], "resample": out["resample"],
                "resample_name": RESAMPLE_NAMES.get(out["resample"], str(out["resample"])),
                "do_rescale": out["do_rescale"], "rescale_factor": out["rescale_factor"],
                "do_normalize": out["do_normalize"], "mean": out["image_mean"], "std": out["image_std"], **out}

    def load(self, model: str) -> Any:
        from transformers import AutoConfig, Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

        cls = {"idefics3": Idefics3ForConditionalGeneration,
               "smolvlm": SmolVLMForConditionalGeneration}[AutoConfig.from_pretrained(model).model_type]
        return load_eager(cls, model)

    def graph_modules(self, hf_model: Any, attention: str) -> tuple[Any, Any]:
        from ..smolvlm_graphs import LlamaCachedStep, SmolVLMPrefill

        step = LlamaCachedStep(hf_model, attention=attention).eval()
        size = self.shape(hf_model.config).image_size
        return SmolVLMPrefill(hf_model, step, size).eval(), step

    def generation_config(self, hf_model: Any) -> Any:
        return hf_model.generation_config

    def default_length_cap(self, hf_model: Any) -> int | None:
        return None  # SmolVLMConfig/Idefics3Config have no max_position_embeddings of their own

    def special_tokens(self, hf_model: Any) -> dict[str, Any]:
        tokens = generation_tokens(hf_model.generation_config, hf_model.config.text_config)
        if tokens["pad_token_id"] is None:
            raise UnsupportedModelError("SmolVLM has no pad_token_id in its generation or text config: a batch of "
                                        "prompts of different lengths needs one for the left padding")
        # decoder-only: nothing starts the decoder; the bos id stands in where the manifest needs a start token
        return {**tokens, "decoder_start_token_id": tokens["bos_token_id"] or 0}

    def prompt_spec(self, hf_model: Any) -> dict[str, Any]:
        """The ``chat`` prompt section: the chat template rendered around a sentinel, the image expanded as the
        processor expands it for one tile."""
        proc = processor_for(hf_model.config.name_or_path)
        rendered = chat_text(proc, _SENTINEL)
        if rendered.count(_SENTINEL) != 1:
            raise ExportError(f"the chat template of {hf_model.config.name_or_path} renders the user text "
                              f"{rendered.count(_SENTINEL)} times: edgecap renders templates that place it once")
        image = (proc.fake_image_token + proc.global_image_tag + proc.image_token * int(proc.image_seq_len)
                 + proc.fake_image_token)
        before, after = rendered.split(_SENTINEL)
        if (before + after).count(proc.image_token) != 1:
            raise ExportError("the chat template holds no image or several: edgecap asks about one image")
        return {"kind": "chat", "before": before.replace(proc.image_token, image),
                "after": after.replace(proc.image_token, image), "default_prompt": DEFAULT_PROMPT,
                "accepts_questions": True, "reserved": [proc.image_token, proc.fake_image_token,
                                                        proc.global_image_tag],
                "add_special_tokens": True,
                "max_positions": int(hf_model.config.text_config.max_position_embeddings)}

    def reference_inputs(self, hf_model: Any, pixel_values: Any, prompts: list[str]) -> dict[str, Any]:
        """The processor's left-padded input_ids and attention mask for ``prompts`` (one per image) with the given
        pixel values [B, 3, H, W], as ``generate`` takes them."""
        import numpy as np

        proc = processor_for(hf_model.config.name_or_path)
        dummy = [[np.zeros((8, 8, 3), np.uint8)] for _ in prompts]
        inputs = proc(text=[chat_text(proc, p) for p in prompts], images=dummy, padding=True, return_tensors="pt")
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
                "pixel_values": pixel_values.unsqueeze(1)}


SMOLVLM = SmolVLM()
