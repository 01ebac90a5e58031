"""Torch modules that implement the graph contract over a Hugging Face model's own weights.

They are written as plain tensor ops so that torch.onnx traces a graph with no cache classes and no `If` node, and
they reuse the checkpoint's submodules (LayerNorm, Conv1D, MLP, embeddings), so numerics follow transformers.
"""

from __future__ import annotations

import torch
from torch import nn


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, e = x.shape
    return x.view(b, t, heads, e // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    w = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if mask is not None:
        w = torch.where(mask, w, torch.finfo(w.dtype).min)
    return torch.matmul(torch.softmax(w, dim=-1), v)


class EncoderWithCrossKV(nn.Module):
    """pixel_values -> (cross_k.0..L-1, cross_v.0..L-1, pooled): the decoder's cross K/V, once per image."""

    def __init__(self, model: nn.Module, step: "GPT2CachedStep"):
        super().__init__()
        self.encoder = model.encoder
        self.proj = getattr(model, "enc_to_dec_proj", None)
        self.step = step

    def forward(self, pixel_values: torch.Tensor):
        states = self.encoder(pixel_values=pixel_values).last_hidden_state
        pooled = states.mean(dim=1)
        if self.proj is not None:
            states = self.proj(states)
        ks, vs = self.step.cross_kv(states)
        return (*ks, *vs, pooled)


class GPT2CachedStep(nn.Module):
    """(input_ids, past_k/v per layer, cross_k/v per layer) -> (last logits, present_k/v per layer)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.t = lm.transformer
        self.lm_head = lm.lm_head
        cfg = lm.config
        self.layers = cfg.n_layer
        self.heads = cfg.n_head
        self.embed = cfg.n_embd

    def cross_kv(self, states: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ks, vs = [], []
        for block in self.t.h:
            k, v = block.crossattention.c_attn(states).split(self.embed, dim=2)
            ks.append(_split_heads(k, self.heads))
            vs.append(_split_heads(v, self.heads))
        return ks, vs

    def forward(self, input_ids: torch.Tensor, *caches: torch.Tensor):
        n = self.layers
        past, cross = caches[: 2 * n], caches[2 * n:]
        past_len = past[0].shape[2]
        new_len = input_ids.shape[1]
        positions = torch.arange(new_len, device=input_ids.device) + past_len
        hidden = self.t.wte(input_ids) + self.t.wpe(positions).unsqueeze(0)
        key_pos = torch.arange(past_len + new_len, device=input_ids.device)
        causal = key_pos.unsqueeze(0) <= positions.unsqueeze(1)  # [T, P+T]
        presents = []
        for i, block in enumerate(self.t.h):
            attn = block.attn
            q, k, v = attn.c_attn(block.ln_1(hidden)).split(self.embed, dim=2)
            k = torch.cat([past[2 * i], _split_heads(k, self.heads)], dim=2)
            v = torch.cat([past[2 * i + 1], _split_heads(v, self.heads)], dim=2)
            presents += [k, v]
            a = _attend(_split_heads(q, self.heads), k, v, attn.scaling, causal)
            hidden = attn.c_proj(_merge_heads(a)) + hidden
            xattn = block.crossattention
            q = _split_heads(xattn.q_attn(block.ln_cross_attn(hidden)), self.heads)
            a = _attend(q, cross[i], cross[n + i], xattn.scaling)
            hidden = hidden + xattn.c_proj(_merge_heads(a))
            hidden = hidden + block.mlp(block.ln_2(hidden))
        logits = self.lm_head(self.t.ln_f(hidden[:, -1, :]))
        return (logits, *presents)
