"""BLIP (``BlipForConditionalGeneration``) as the graph contract: the ViT with every decoder layer's cross K/V, and
one cached step of the BERT-style text decoder.

Written over the checkpoint's own weights and LayerNorm/activation modules, as :mod:`edgecap_export.wrappers` does
for GPT-2, with the same two attention lowerings. BLIP's text decoder is post-LayerNorm BERT: each sub-layer adds
its input and normalises after, and the embeddings are normalised (word + absolute position) before the first
layer. Positions continue from the past length, so a prompt's prefill and the steps after it see the positions
transformers gives them.
"""

from __future__ import annotations

import torch
from torch import nn

from .wrappers import AttentionMHA, CachedStepAttention, attend, linear_parts, merge_heads, split_heads


class BlipEncoderWithCrossKV(nn.Module):
    """pixel_values -> (cross_k.0..L-1, cross_v.0..L-1, pooled): BLIP's ViT (post-LayerNorm output, which the
    decoder cross-attends to) and each text layer's cross-attention K/V, once per image. ``pooled`` is the mean of
    the ViT's output over positions, the embedding the runtime's change gate compares."""

    def __init__(self, model: nn.Module, step: "BlipCachedStep"):
        super().__init__()
        self.vision = model.vision_model
        self.step = step

    def _vit(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vision.embeddings(pixel_values)
        for layer in self.vision.encoder.layers:
            attn = layer.self_attn
            width = attn.embed_dim
            # qkv is laid out [3, heads, head_dim] along its output: its thirds are q, k, v
            x = layer.layer_norm1(hidden)
            if self.step.attention == "contrib":
                q, k, v = linear_parts(attn.qkv, x)  # a MatMul per third, no Split
                a = AttentionMHA.apply(q, k, v, attn.num_heads, float(attn.scale))
            else:
                q, k, v = attn.qkv(x).split(width, dim=2)
                a = merge_heads(attend(split_heads(q, attn.num_heads), split_heads(k, attn.num_heads),
                                       split_heads(v, attn.num_heads), attn.scale))
            hidden = attn.projection(a) + hidden
            hidden = layer.mlp(layer.layer_norm2(hidden)) + hidden
        return self.vision.post_layernorm(hidden)

    def forward(self, pixel_values: torch.Tensor):
        states = self._vit(pixel_values)
        ks, vs = self.step.cross_kv(states)
        return (*ks, *vs, states.mean(dim=1))


class BlipCachedStep(CachedStepAttention):
    """(input_ids, past_k/v per layer, cross_k/v per layer) -> (last logits, present_k/v per layer)."""

    def __init__(self, text_decoder: nn.Module, attention: str = "contrib"):
        cfg = text_decoder.config
        super().__init__(attention, cfg.num_attention_heads, cfg.hidden_size)
        self.bert = text_decoder.bert
        self.head = text_decoder.cls
        self.layers = cfg.num_hidden_layers

    def cross_kv(self, states: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.project_cross_kv([(layer.crossattention.self.key, layer.crossattention.self.value)
                                      for layer in self.bert.encoder.layer], states)

    def forward(self, input_ids: torch.Tensor, *caches: torch.Tensor):
        n = self.layers
        past, cross = caches[: 2 * n], caches[2 * n:]
        past_len = past[0].shape[2]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device) + past_len
        emb = self.bert.embeddings
        hidden = emb.LayerNorm(emb.word_embeddings(input_ids) + emb.position_embeddings(positions).unsqueeze(0))
        causal = None
        if self.attention == "standard":
            key_pos = torch.arange(past_len + input_ids.shape[1], device=input_ids.device)
            causal = key_pos.unsqueeze(0) <= positions.unsqueeze(1)  # [T, P+T]
        presents = []
        for i, layer in enumerate(self.bert.encoder.layer):
            sa = layer.attention.self
            a, k, v = self.self_attention([sa.query, sa.key, sa.value], hidden, past[2 * i], past[2 * i + 1], causal)
            presents += [k, v]
            out = layer.attention.output
            hidden = out.LayerNorm(out.dense(a) + hidden)
            a = self.cross_attention(layer.crossattention.self.query, hidden, cross[i], cross[n + i])
            out = layer.crossattention.output
            hidden = out.LayerNorm(out.dense(a) + hidden)
            inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(hidden))
            hidden = layer.output.LayerNorm(layer.output.dense(inner) + hidden)
        logits = self.head(hidden[:, -1, :])
        return (logits, *presents)
