"""Florence-2 (``Florence2ForConditionalGeneration``) as the graph contract: the encoder side (DaViT + projector +
BART encoder over the image features and the prompt's text) with every decoder layer's cross K/V, and one cached
step of the BART decoder.

The encoder side reuses the checkpoint's own vision tower, projector and BART encoder modules (traced once per
image and prompt: their cost is not per token). The processor writes the image placeholders first, then
``<s> prompt </s>``; the model scatters the image features over the placeholders, so concatenating the image
features with the embedded text ids is the same sequence. The decoder step is written over the checkpoint's weights,
as :mod:`edgecap_export.blip_graphs` does for BLIP, with the same two attention lowerings. BART's decoder is
post-LayerNorm with learned positions offset by 2 and a LayerNorm over the embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from .blip_graphs import fused_linear
from .wrappers import ATTENTION_KINDS, AttentionMHA, SelfAttentionMHA, attend, merge_heads, split_heads


class Florence2EncoderWithCrossKV(nn.Module):
    """(pixel_values, input_ids) -> (cross_k.0..L-1, cross_v.0..L-1, pooled). ``input_ids`` are the prompt's text
    ids (``<s> ... </s>``, without the image placeholders); ``pooled`` is the mean of the projected image features,
    the embedding the runtime's change gate compares."""

    takes_prompt_ids = True  # the exporter traces (pixel_values, input_ids)

    def __init__(self, model: nn.Module, step: "BartCachedStep"):
        super().__init__()
        self.model = model.model
        self.embed = model.get_input_embeddings()
        self.step = step

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor):
        image = self.model.get_image_features(pixel_values).pooler_output
        embeds = torch.cat([image, self.embed(input_ids)], dim=1)
        states = self.model.language_model.encoder(inputs_embeds=embeds).last_hidden_state
        ks, vs = self.step.cross_kv(states)
        return (*ks, *vs, image.mean(dim=1))


class BartCachedStep(nn.Module):
    """(input_ids, past_k/v per layer, cross_k/v per layer) -> (last logits, present_k/v per layer)."""

    def __init__(self, decoder: nn.Module, lm_head: nn.Module, attention: str = "contrib"):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.attention = attention
        self.decoder = decoder
        self.head = lm_head
        cfg = decoder.config
        self.layers = cfg.decoder_layers
        self.heads = cfg.decoder_attention_heads
        self.width = cfg.d_model
        self.scale = float((cfg.d_model // cfg.decoder_attention_heads) ** -0.5)

    def cross_kv(self, states: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ks, vs = [], []
        for layer in self.decoder.layers:
            xa = layer.encoder_attn
            k, v = fused_linear([xa.k_proj, xa.v_proj], states).split(self.width, dim=2)
            ks.append(split_heads(k, self.heads))
            vs.append(split_heads(v, self.heads))
        return ks, vs

    def _self_attention(self, sa: nn.Module, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                        causal: torch.Tensor | None):
        q, k, v = fused_linear([sa.q_proj, sa.k_proj, sa.v_proj], x).split(self.width, dim=2)
        if self.attention == "contrib":
            return SelfAttentionMHA.apply(q, k, v, past_k, past_v, self.heads, self.scale)
        k = torch.cat([past_k, split_heads(k, self.heads)], dim=2)
        v = torch.cat([past_v, split_heads(v, self.heads)], dim=2)
        return merge_heads(attend(split_heads(q, self.heads), k, v, self.scale, causal)), k, v

    def _cross_attention(self, xa: nn.Module, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = xa.q_proj(x)
        if self.attention == "contrib":
            return AttentionMHA.apply(q, k, v, self.heads, self.scale)
        return merge_heads(attend(split_heads(q, self.heads), k, v, self.scale))

    def forward(self, input_ids: torch.Tensor, *caches: torch.Tensor):
        n = self.layers
        past, cross = caches[: 2 * n], caches[2 * n:]
        past_len = past[0].shape[2]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) + past_len
        dec = self.decoder
        pos = nn.functional.embedding(positions + dec.embed_positions.offset, dec.embed_positions.weight)
        hidden = dec.layernorm_embedding(dec.embed_tokens(input_ids) + pos.unsqueeze(0))
        causal = None
        if self.attention == "standard":
            key_pos = torch.arange(past_len + input_ids.shape[1], device=input_ids.device)
            causal = key_pos.unsqueeze(0) <= positions.unsqueeze(1)  # [T, P+T]
        presents = []
        for i, layer in enumerate(dec.layers):
            a, k, v = self._self_attention(layer.self_attn, hidden, past[2 * i], past[2 * i + 1], causal)
            presents += [k, v]
            hidden = layer.self_attn_layer_norm(layer.self_attn.out_proj(a) + hidden)
            a = self._cross_attention(layer.encoder_attn, hidden, cross[i], cross[n + i])
            hidden = layer.encoder_attn_layer_norm(layer.encoder_attn.out_proj(a) + hidden)
            hidden = layer.final_layer_norm(layer.fc2(layer.activation_fn(layer.fc1(hidden))) + hidden)
        logits = self.head(hidden[:, -1, :])
        return (logits, *presents)
