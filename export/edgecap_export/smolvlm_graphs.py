"""The decoder-only graph contract over a SmolVLM / Idefics3 checkpoint's weights: a prefill graph and a step graph.

* prefill: (pixel_values [B,3,H,W], input_ids [B,P], attention_mask [B,P], position_ids [B,P]) -> the SigLIP tower,
  the pixel-shuffle connector, the token embeddings with the image features at the ``<image>`` positions and every
  Llama layer over the prefix -> (logits of the last position [B,V], present_k.i / present_v.i [B,kv_heads,P,d],
  pooled [B, vision width]);
* step: (input_ids [B,T], attention_mask [B,past+T], position_ids [B,T], past_k.i / past_v.i) -> (last logits,
  present K/V). T is 1 when decoding; any T works (an uncached reference).

Written as plain tensor ops, without transformers' DynamicCache and without the data-dependent ``arange``/
``bucketize`` of Idefics3's vision embeddings: a single tile has a fixed size, so the patch position ids are a
constant computed here exactly as transformers computes them for an image without padding. The image features are
placed with a cumulative sum and a gather (each row holds one image's ``image_seq_len`` ``<image>`` tokens; in a
left-padded batch they sit at different offsets), which equals transformers' ``masked_scatter``.

Grouped-query attention: the cache holds ``kv_heads`` heads. The standard lowering repeats K/V to the query heads
inside (transformers' ``repeat_kv`` order); ``contrib`` folds the query heads that share a K/V head into extra query
rows of one MultiHeadAttention over the ``kv_heads`` heads, so the cache is neither copied nor read three times.
Attention is masked by the attention mask (left padding) and causally by absolute key index, with ``finfo.min`` as
transformers' eager attention does. ``attention="contrib"`` writes each attention as one
com.microsoft.MultiHeadAttention node with the mask as an additive bias; ``"standard"`` uses only standard ops, Q
scaled before Q.K^T (:func:`edgecap_export.wrappers.attend`).
"""

from __future__ import annotations

import torch
from torch import nn

from .wrappers import (ATTENTION_KINDS, AttentionMHA, attend, const_reshape, fused_linear, merge_heads,
                       split_heads)


class MaskedAttentionMHA(torch.autograd.Function):
    """Attention of [B, S, D] queries over K/V [B, heads, T, d] under a boolean mask [B, 1, S, T]; exported as one
    com.microsoft.MultiHeadAttention node whose attention_bias is 0 where the mask holds and finfo.min elsewhere."""

    @staticmethod
    def forward(ctx, q, k, v, mask, heads: int, scale: float):  # noqa: ANN001 - autograd signature
        return merge_heads(attend(split_heads(q, heads), k, v, scale, mask))

    @staticmethod
    def symbolic(g, q, k, v, mask, heads: int, scale: float):  # noqa: ANN001
        zero = g.op("Constant", value_t=torch.tensor(0.0))
        low = g.op("Constant", value_t=torch.tensor(torch.finfo(torch.float32).min))
        bias = g.op("Where", mask, zero, low)
        none = g.op("prim::Constant").setType(torch._C.OptionalType.ofTensor())
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, none, none, bias, num_heads_i=heads,
                   scale_f=scale)
        out.setType(q.type())
        return out


def _rotate_half(x: torch.Tensor, half: int) -> torch.Tensor:
    """transformers' rotate_half with the half width a constant (``x.shape[-1] // 2`` traces a Shape/Gather/Div
    chain per call: 120 Div nodes at SmolVLM-256M's 30 layers)."""
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaCachedStep(nn.Module):
    """(input_ids, attention_mask, position_ids, past K/V per layer) -> (last logits, present K/V per layer) over a
    transformers Llama decoder (SmolLM2), grouped-query attention and RoPE from the position ids."""

    def __init__(self, hf_model: nn.Module, attention: str = "contrib"):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        lm = hf_model.model.text_model
        cfg = lm.config
        self.attention = attention
        self.lm, self.head = lm, hf_model.lm_head
        self.heads, self.kv_heads = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.scale = float(self.head_dim ** -0.5)
        self.register_buffer("inv_freq", lm.rotary_emb.inv_freq.detach().clone().float(), persistent=False)
        self.rope_scaling = float(lm.rotary_emb.attention_scaling)

    def _repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        """[B, kv_heads, T, d] -> [B, heads, T, d], query head h reading kv head h // (heads / kv_heads)."""
        rep = self.heads // self.kv_heads
        if rep == 1:
            return x
        return const_reshape(torch.cat([x.unsqueeze(2)] * rep, dim=2), (0, self.heads, -1, self.head_dim))

    def _grouped_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
                           ) -> torch.Tensor:
        """Grouped-query attention as one MultiHeadAttention node over the ``kv_heads`` cached heads, without
        repeating K/V: the query heads sharing a K/V head become extra query rows of that head. q [B, heads, T, d],
        k/v [B, kv_heads, L, d], mask [B, 1, T, L] -> [B, T, heads * d]. Repeating K/V copied the whole cache three
        times per layer and step (SmolVLM-256M) and made the attention read it three times."""
        rep, d = self.heads // self.kv_heads, self.head_dim
        if rep == 1:
            return MaskedAttentionMHA.apply(merge_heads(q), k, v, mask, self.heads, self.scale)
        # query head h * rep + r (transformers' repeat_kv order) -> head h, rows (r, t)
        rows = const_reshape(const_reshape(q, (0, self.kv_heads, rep, -1, d)).permute(0, 2, 3, 1, 4),
                             (0, -1, self.kv_heads * d))  # [B, rep * T, kv_heads * d]
        out = MaskedAttentionMHA.apply(rows, k, v, mask.repeat(1, 1, rep, 1), self.kv_heads, self.scale)
        out = const_reshape(out, (0, rep, -1, self.kv_heads, d)).permute(0, 2, 3, 1, 4)  # [B, T, kv, rep, d]
        return const_reshape(out, (0, 0, -1))

    def decode(self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               past: list[torch.Tensor] | None):
        """Every layer over new embeddings [B, T, D] after ``past`` (interleaved K/V, None: empty) -> (last
        logits [B, V], present K/V interleaved)."""
        new = embeds.shape[1]
        total = attention_mask.shape[1]
        query_pos = torch.arange(new, device=embeds.device) + (total - new)
        causal = torch.arange(total, device=embeds.device).unsqueeze(0) <= query_pos.unsqueeze(1)  # [T, total]
        mask = attention_mask.bool()[:, None, None, :] & causal[None, None]  # [B, 1, T, total]
        freqs = position_ids.float().unsqueeze(-1) * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scaling).unsqueeze(1)  # [B, 1, T, d]
        sin = (emb.sin() * self.rope_scaling).unsqueeze(1)
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        hidden = embeds
        presents = []
        for i, layer in enumerate(self.lm.layers):
            sa = layer.self_attn
            x = layer.input_layernorm(hidden)
            q, k, v = fused_linear([sa.q_proj, sa.k_proj, sa.v_proj], x).split([q_width, kv_width, kv_width], 2)
            q, k, v = split_heads(q, self.heads), split_heads(k, self.kv_heads), split_heads(v, self.kv_heads)
            q = q * cos + _rotate_half(q, self.head_dim // 2) * sin
            k = k * cos + _rotate_half(k, self.head_dim // 2) * sin
            if past is not None:
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            if self.attention == "contrib":
                a = self._grouped_attention(q, k, v, mask)
            else:
                a = merge_heads(attend(q, self._repeat_kv(k), self._repeat_kv(v), self.scale, mask))
            hidden = hidden + sa.o_proj(a)
            x = layer.post_attention_layernorm(hidden)
            mlp = layer.mlp
            gate, up = fused_linear([mlp.gate_proj, mlp.up_proj], x).chunk(2, dim=2)
            hidden = hidden + mlp.down_proj(mlp.act_fn(gate) * up)
        logits = self.head(self.lm.norm(hidden[:, -1, :]))
        return logits, presents

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor):
        logits, presents = self.decode(self.lm.embed_tokens(input_ids), attention_mask, position_ids, list(past))
        return (logits, *presents)


def _patch_positions(embeddings: nn.Module, rows: int, cols: int) -> torch.Tensor:
    """The patch position ids Idefics3VisionEmbeddings computes for a [rows x cols] patch grid without padding."""
    n = embeddings.num_patches_per_side
    boundaries = torch.arange(1 / n, 1.0, 1 / n)
    fh = torch.arange(rows, dtype=torch.float32)[None, :] * (1.0 / torch.tensor([rows]))[:, None]
    fw = torch.arange(cols, dtype=torch.float32)[None, :] * (1.0 / torch.tensor([cols]))[:, None]
    bh = torch.bucketize(torch.clamp(fh, max=1.0 - 1e-6), boundaries, right=True)
    bw = torch.bucketize(torch.clamp(fw, max=1.0 - 1e-6), boundaries, right=True)
    return (bh[:, :, None] * n + bw[:, None, :]).reshape(-1)


class SmolVLMPrefill(nn.Module):
    """(pixel_values, input_ids, attention_mask, position_ids) -> (last logits, present K/V per layer, pooled)."""

    def __init__(self, hf_model: nn.Module, step: LlamaCachedStep, image_size: tuple[int, int]):
        super().__init__()
        self.vision = hf_model.model.vision_model
        self.connector = hf_model.model.connector
        self.step = step
        self.image_token_id = int(hf_model.config.image_token_id)
        patch = int(hf_model.config.vision_config.patch_size)
        self.patch_grid, self.vision_width = image_size[0] // patch, int(hf_model.config.vision_config.hidden_size)
        self.text_width = int(hf_model.config.text_config.hidden_size)
        self.register_buffer("patch_positions", _patch_positions(self.vision.embeddings, image_size[0] // patch,
                                                                 image_size[1] // patch), persistent=False)

    def image_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(connector output [B, image_seq_len, text width], pooled vision states [B, vision width])."""
        emb = self.vision.embeddings
        hidden = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        hidden = hidden + emb.position_embedding(self.patch_positions).unsqueeze(0)
        for layer in self.vision.encoder.layers:
            sa = layer.self_attn
            width = sa.q_proj.out_features
            x = layer.layer_norm1(hidden)
            if self.step.attention == "contrib":
                # one MatMul per projection, no Split (see wrappers.linear_parts)
                q, k, v = sa.q_proj(x), sa.k_proj(x), sa.v_proj(x)
                a = AttentionMHA.apply(q, k, v, sa.num_heads, float(sa.scale))
            else:
                q, k, v = fused_linear([sa.q_proj, sa.k_proj, sa.v_proj], x).split(width, 2)
                a = merge_heads(attend(*(split_heads(t, sa.num_heads) for t in (q, k, v)), float(sa.scale)))
            hidden = hidden + sa.out_proj(a)
            hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        hidden = self.vision.post_layernorm(hidden)
        return self.connector.modality_projection(self._pixel_shuffle(hidden)), hidden.mean(dim=1)

    def _pixel_shuffle(self, x: torch.Tensor) -> torch.Tensor:
        """Idefics3Connector.pixel_shuffle with constant shapes (its ``view(bsz, ...)`` traces the example's batch
        size into the graph)."""
        side, s, dim = self.patch_grid, int(self.connector.scale_factor), self.vision_width
        seq = side * side
        x = const_reshape(x, (0, side, side // s, dim * s)).permute(0, 2, 1, 3)
        x = const_reshape(x, (0, side // s, side // s, dim * s * s)).permute(0, 2, 1, 3)
        return const_reshape(x, (0, seq // (s * s), dim * s * s))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor):
        features, pooled = self.image_features(pixel_values)
        embeds = self.step.lm.embed_tokens(input_ids)
        is_image = input_ids == self.image_token_id
        # the k-th <image> token of a row takes the row's k-th image feature
        index = torch.where(is_image, torch.cumsum(is_image.long(), dim=1) - 1, 0)  # no Clip: TensorRT lacks it
        per_image = (self.patch_grid // int(self.connector.scale_factor)) ** 2
        rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1) * per_image
        placed = nn.functional.embedding(index + rows, const_reshape(features, (-1, self.text_width)))
        embeds = torch.where(is_image.unsqueeze(-1), placed, embeds)
        logits, presents = self.step.decode(embeds, attention_mask, position_ids, None)
        return (logits, *presents, pooled)
