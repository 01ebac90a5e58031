"""The graph contract every model family exports to, and what a family must provide to be exported.

The contract: the encoder graph computes the decoder's cross-attention K/V once per image; one decoder graph,
no `If`, takes a self-attention past of length >= 0 and returns the last position's logits. The manifest carries
every tensor name (:func:`io_names`) and the shape numbers (:class:`ModelShape`), so the runtime never guesses.
A model family (:class:`Family`, one module per family in :mod:`edgecap_export.families`) maps a Hugging Face
checkpoint onto this contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ModelShape:
    """The numbers of one checkpoint that the export and the manifest's ``architecture`` section need.

    Attributes:
        encoder_type: the encoder's Hugging Face model type (e.g. "vit").
        decoder_type: the decoder's model type (e.g. "gpt2").
        num_layers: decoder layers (one cross K/V and one past K/V pair per layer).
        num_heads: decoder attention heads.
        head_dim: width of one head.
        vocab_size: decoder vocabulary size.
        image_size: (height, width) of the encoder's input.
        num_channels: image channels of the encoder's input.
        encoder_seq_len: encoder output positions (the cross K/V length).
        encoder_hidden_size: width of the encoder's output.
        num_kv_heads: key/value heads of grouped-query attention (a decoder-only family's cache); None: num_heads.
        decoder_positions: the decoder's learned position table (tokens a decode may feed in all); None: unbounded.
    """

    encoder_type: str
    decoder_type: str
    num_layers: int
    num_heads: int
    head_dim: int
    vocab_size: int
    image_size: tuple[int, int]
    num_channels: int
    encoder_seq_len: int
    encoder_hidden_size: int
    num_kv_heads: int | None = None
    decoder_positions: int | None = None

    def architecture(self) -> dict[str, Any]:
        """The manifest's ``architecture`` entries (the exporter adds opset and attention)."""
        return {"encoder_type": self.encoder_type, "decoder_type": self.decoder_type,
                "num_layers": self.num_layers, "num_heads": self.num_heads, "head_dim": self.head_dim,
                "hidden_size": self.num_heads * self.head_dim, "vocab_size": self.vocab_size,
                "encoder_seq_len": self.encoder_seq_len, "encoder_hidden_size": self.encoder_hidden_size,
                **({"num_kv_heads": self.num_kv_heads, "decoder_only": True} if self.num_kv_heads else {}),
                **({"decoder_positions": self.decoder_positions} if self.decoder_positions else {})}


def load_eager(model_class: Any, model: str) -> Any:
    """``model_class.from_pretrained(model)`` as every family loads a checkpoint: eager attention (plain
    MatMul/Softmax graphs), float32 whatever dtype the weights were saved in, eval mode.

    float32 because the graphs run in float32: transformers 5 loads with ``dtype="auto"``, so weights saved in
    float16/bfloat16 would come back in that dtype (tracing then fails on float32 inputs); widening them is exact.

    Raises:
        ValueError: the checkpoint lacks weights the model has (transformers draws those at random on every load,
            so no export could match a later load); OSError/ValueError as ``from_pretrained`` raises them.
    """
    import torch

    hf_model, info = model_class.from_pretrained(model, attn_implementation="eager", dtype=torch.float32,
                                                 output_loading_info=True)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ValueError(f"the checkpoint lacks {len(missing)} of the model's weights ({shown}), which transformers "
                         "draws at random on every load; save the model again with all its weights")
    return hf_model.eval()


class Family(Protocol):
    """A model family: how to read, load and lower one kind of Hugging Face captioner.

    ``model_types`` are the top-level ``config.model_type`` values the family handles; ``validation_prompts`` the
    prompt forms the export's parity grid runs (None: unconditional).

    A decoder-only family (``decoder_only = True``: SmolVLM) has no cross-attention: its first graph is a prefill
    (:func:`io_names` with ``decoder_only``), its ``shape`` sets ``num_kv_heads``, and instead of the reference_*
    methods below it provides ``image_settings(model)`` (the manifest's ``image`` section) and
    ``reference_inputs(hf_model, pixel_values, prompts)`` (what its ``generate`` takes); see
    :mod:`edgecap_export.families.smolvlm`.
    """

    name: str
    model_types: tuple[str, ...]
    validation_prompts: tuple[str | None, ...]

    def describe(self) -> str:
        """What the family exports, for "unsupported" messages."""

    def shape(self, config: Any) -> ModelShape:
        """Check a config and read its numbers; raise UnsupportedModelError (one line) for what it cannot export."""

    def load(self, model: str) -> Any:
        """The checkpoint in eval mode, with plain (eager) attention so that the traced graphs are plain ops.

        Raises:
            OSError, ValueError: as transformers' ``from_pretrained`` does (the exporter turns them into one line).
        """

    def graph_modules(self, hf_model: Any, attention: str) -> tuple[Any, Any]:
        """(encoder module, decoder step module): torch modules implementing the graph contract."""

    def generation_config(self, hf_model: Any) -> Any:
        """The GenerationConfig the checkpoint's ``generate`` actually uses."""

    def default_length_cap(self, hf_model: Any) -> int | None:
        """Where transformers stops its default length (20 new tokens after the prefix): the
        ``max_position_embeddings`` of the config of the model whose ``generate`` runs, None where it has none."""

    def special_tokens(self, hf_model: Any) -> dict[str, Any]:
        """The manifest's ``special_tokens``: decoder_start_token_id, eos_token_id (a list: the ids that end a
        caption as generate stops), pad_token_id, bos_token_id."""

    def prompt_spec(self, hf_model: Any) -> dict[str, Any] | None:
        """The manifest's ``prompt`` section (see :mod:`edgecap.manifest`), or None for a model without prompts."""

    def reference_cross_kv(self, hf_model: Any, pixel_values: Any, heads: int) -> tuple[list, list, Any]:
        """transformers' own cross K/V per layer [B, heads, S, head_dim] and the pooled embedding, for parity."""

    def reference_logits(self, hf_model: Any, pixel_values: Any, ids: Any) -> Any:
        """transformers' logits [B, T, V] for decoder ids [B, T] that start with the decoder start token."""

    def reference_generate(self, hf_model: Any, model: str, pixel_values: Any, prompt: str | None,
                           **kw: Any) -> tuple[Any, int]:
        """transformers' ``generate`` output [B, L] for a prompt (None: unconditional), and the length of the
        prefix it started from (start token and prompt)."""


def generation_tokens(generation_config: Any, config: Any) -> dict[str, Any]:
    """The manifest's ``special_tokens`` as ``generate`` reads them: each id from the generation config, else the
    model (text) config; ``eos_token_id`` a list, the others the first id of a list or None."""
    def pick(name: str) -> int | None:
        value = getattr(generation_config, name, None)
        value = getattr(config, name, None) if value is None else value
        return None if value is None else int(value[0] if isinstance(value, list) else value)

    eos = generation_config.eos_token_id if generation_config.eos_token_id is not None else config.eos_token_id
    return {"decoder_start_token_id": pick("decoder_start_token_id"),
            "eos_token_id": [int(t) for t in (eos if isinstance(eos, list) else [eos])],
            "pad_token_id": pick("pad_token_id"), "bos_token_id": pick("bos_token_id")}


def io_names(layers: int, *, prompt_ids: bool = False, decoder_only: bool = False) -> dict[str, dict[str, Any]]:
    """The graph contract's tensor names, generated from the layer count; ``prompt_ids``: the encoder also takes
    the prompt's token ids (Florence-2); ``decoder_only``: the "encoder" graph is a prefill (image and prompt ids
    -> every layer's K/V and the first logits) and the step graph reads no cross K/V but an attention mask and
    position ids (SmolVLM)."""
    if decoder_only:
        inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids"}
        cache = {"logits": "logits", "present_k": [f"present_k.{i}" for i in range(layers)],
                 "present_v": [f"present_v.{i}" for i in range(layers)]}
        return {"encoder": {"pixel_values": "pixel_values", **inputs, **cache, "pooled": "pooled"},
                "decoder": {**inputs, "past_k": [f"past_k.{i}" for i in range(layers)],
                            "past_v": [f"past_v.{i}" for i in range(layers)], **cache}}
    return {
        "encoder": {
            "pixel_values": "pixel_values",
            **({"input_ids": "input_ids"} if prompt_ids else {}),
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
