"""Torch modules that implement the graph contract over a Hugging Face model's own weights.

They are written as plain tensor ops so that torch.onnx traces a graph with no cache classes and no `If` node, and
they use the checkpoint's own weights and LayerNorm/activation modules, so numerics follow transformers.

Two attention lowerings (``attention=``):

* ``"contrib"`` (default, ONNX Runtime): each self-attention is one ``com.microsoft.MultiHeadAttention`` node that
  takes the projections as [B, T, D] and appends the new K/V to the past inside the kernel (causal with the past
  offset). The kernels ONNX Runtime runs per GPT-2 124M step fell from 1,542 to 265 (FP32) and from 1,820 to 205
  (INT8); most of the removed ones were shape arithmetic, each a kernel launch per token. A decoder step's
  cross-attention over the encoder's cached [B, heads, S, head_dim] K/V is the one exception: it is
  MatMul/Softmax/MatMul with the scores computed as K (q s)^T (:func:`cross_attend`), which reads the cache faster
  than the fused node and than q K^T do. Measured on 2 cores, BLIP-base INT8 decoder step (12 layers over 577
  positions, one new token): 17.9 ms with MultiHeadAttention, 16.0 with q K^T, 14.7-15.9 with K (q s)^T at batch 1;
  58.2, 54.9 and 44.0-47.5 ms at batch 8.
* ``"standard"``: only standard ONNX ops (MatMul, Softmax, ...), for TensorRT and other runtimes without Microsoft's
  contrib ops.

Linear layers are written as ``x @ W + b`` on 3-D tensors instead of transformers' Conv1D (which flattens to 2-D and
reshapes back, tracing a Shape/Gather/Concat/Reshape chain around every projection).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class _Reshape(torch.autograd.Function):
    """Reshape to a constant target where 0 keeps the input's dimension (ONNX semantics), exported as one Reshape
    with a constant shape: tracing ``x.view(b, t, heads, -1)`` writes a Shape/Gather/Unsqueeze/Concat chain per
    call (about 100 nodes per graph at 2 layers), shape arithmetic TensorRT would have to fold at build time."""

    @staticmethod
    def forward(ctx, x, shape: tuple[int, ...]):  # noqa: ANN001 - autograd signature
        return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(shape)])

    @staticmethod
    def symbolic(g, x, shape: tuple[int, ...]):  # noqa: ANN001
        return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor(list(shape), dtype=torch.int64)))


def const_reshape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Reshape to a constant target (0 keeps the input's dimension) as one ONNX Reshape with a constant shape."""
    return _Reshape.apply(x, shape)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, heads * d] -> [B, heads, T, d] (T >= 1)."""
    return _Reshape.apply(x, (0, 0, heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, d] -> [B, T, heads * d] (T >= 1)."""
    return _Reshape.apply(x.transpose(1, 2), (0, 0, -1))


ATTENTION_KINDS = ("contrib", "standard")


def _linear(conv1d: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' Conv1D (weight [in, out]) as one MatMul + Add on the 3-D input."""
    return torch.matmul(x, conv1d.weight) + conv1d.bias


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    # Q is scaled before Q.K^T (transformers scales the scores after it): TensorRT's attention fusion matches
    # the scale on Q, and the product of fewer, smaller numbers is no less exact.
    w = torch.matmul(q * scaling, k.transpose(-1, -2))
    if mask is not None:
        w = torch.where(mask, w, torch.finfo(w.dtype).min)
    return torch.matmul(torch.softmax(w, dim=-1), v)


def cached_self_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_k: torch.Tensor,
                       past_v: torch.Tensor, heads: int, scaling: float, causal: torch.Tensor | None,
                       attention: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A decoder step's self-attention: [B, T, D] projections and the [B, heads, P, head_dim] past -> (merged
    attention output, present K, present V). ``contrib`` is one MultiHeadAttention node that appends to the past
    and masks causally itself; ``standard`` concatenates and applies ``causal`` ([T, P + T])."""
    if attention == "contrib":
        return SelfAttentionMHA.apply(q, k, v, past_k, past_v, heads, scaling)
    k = torch.cat([past_k, split_heads(k, heads)], dim=2)
    v = torch.cat([past_v, split_heads(v, heads)], dim=2)
    return merge_heads(attend(split_heads(q, heads), k, v, scaling, causal)), k, v


def cross_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scaling: float,
                 attention: str) -> torch.Tensor:
    """A decoder step's cross-attention: [B, T, D] queries over the cached [B, heads, S, head_dim] K/V.

    ``standard`` is :func:`attend` (the form TensorRT's attention fusion matches). ``contrib`` computes the scores as
    K (q s)^T and transposes them ([B, heads, S, T] -> [B, heads, T, S], a reshape when T is 1): ONNX Runtime's
    GEMM streams K as the left operand faster than it reads it as a transposed right one (module docstring)."""
    q = split_heads(q, heads)
    if attention != "contrib":
        return merge_heads(attend(q, k, v, scaling))
    scores = torch.matmul(k, (q * scaling).transpose(-1, -2)).transpose(-1, -2)
    return merge_heads(torch.matmul(torch.softmax(scores, dim=-1), v))


QSCALED_ATTENTION = "edgecap_qscaled"


def qscaled_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' eager attention (queries [B, heads, T, d] in, [B, T, heads, d] out, additive mask) with Q
    scaled before Q.K^T, for the modules the standard lowering traces as they are (Florence-2's DaViT and BART
    encoder); registered as the attention implementation ``QSCALED_ATTENTION``."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    w = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None:
        w = w + attention_mask
    return torch.matmul(torch.softmax(w, dim=-1), value).transpose(1, 2).contiguous(), None


@contextmanager
def qscaled_attention_in(model: nn.Module):
    """Run ``model``'s transformers attention modules with :func:`qscaled_attention` inside the block (tracing),
    restoring every config's implementation after it (the export's validation compares with transformers' own)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register(QSCALED_ATTENTION, qscaled_attention)
    AttentionMaskInterface.register(QSCALED_ATTENTION, eager_mask)
    configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules())
               if hasattr(c, "_attn_implementation_internal")}
    saved = {k: c._attn_implementation_internal for k, c in configs.items()}
    try:
        for c in configs.values():  # each config by itself: the public setter would recurse into sub-configs
            c._attn_implementation_internal = QSCALED_ATTENTION
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation_internal = saved[k]


class SelfAttentionMHA(torch.autograd.Function):
    """Causal self-attention over past + new K/V; exported as one com.microsoft.MultiHeadAttention node."""

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, heads: int, scale: float):  # noqa: ANN001 - autograd signature
        k = torch.cat([past_k, split_heads(k, heads)], dim=2)
        v = torch.cat([past_v, split_heads(v, heads)], dim=2)
        new, total = q.shape[1], k.shape[2]
        positions = torch.arange(new) + (total - new)
        causal = torch.arange(total).unsqueeze(0) <= positions.unsqueeze(1)
        return merge_heads(attend(split_heads(q, heads), k, v, scale, causal)), k, v

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, heads: int, scale: float):  # noqa: ANN001
        none = g.op("prim::Constant").setType(torch._C.OptionalType.ofTensor())
        out, present_k, present_v = g.op("com.microsoft::MultiHeadAttention", q, k, v, none, none, none, past_k,
                                         past_v, num_heads_i=heads, scale_f=scale, unidirectional_i=1, outputs=3)
        out.setType(q.type())
        for present, past in ((present_k, past_k), (present_v, past_v)):
            present.setType(past.type().with_sizes([None, heads, None, None]))
        return out, present_k, present_v


class AttentionMHA(torch.autograd.Function):
    """Non-causal self-attention of an encoder: Q, K, V as [B, T, D]. Exported as one
    com.microsoft.MultiHeadAttention node."""

    @staticmethod
    def forward(ctx, q, k, v, heads: int, scale: float):  # noqa: ANN001
        return merge_heads(attend(*(split_heads(x, heads) for x in (q, k, v)), scale))

    @staticmethod
    def symbolic(g, q, k, v, heads: int, scale: float):  # noqa: ANN001
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads, scale_f=scale)
        out.setType(q.type())
        return out


def fused_linear(layers: list[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """Several Linear layers over the same input as one MatMul (their outputs concatenated); no bias when none of
    them has one (Llama's projections)."""
    weight = torch.cat([m.weight for m in layers], dim=0)
    if all(m.bias is None for m in layers):
        return nn.functional.linear(x, weight)
    bias = torch.cat([m.bias if m.bias is not None else torch.zeros(m.out_features) for m in layers])
    return nn.functional.linear(x, weight, bias)


def linear_parts(layer: nn.Linear, x: torch.Tensor, parts: int = 3) -> tuple[torch.Tensor, ...]:
    """A fused projection (a vision tower's qkv Linear) as one MatMul per equal part of its output, instead of one
    MatMul and a Split. With dynamic INT8 the parts share a single quantization of ``x`` (one
    DynamicQuantizeLinear, then MatMulIntegerToFloat per part), and the Split's copy of the whole output is gone.
    Measured in INT8 on 2 cores: 21 against 41 ms at DaViT's first stage (36,864 tokens x 128 channels), 23 against
    26 ms at SmolVLM's 1,024 patches."""
    weights = layer.weight.chunk(parts, dim=0)
    biases = layer.bias.chunk(parts) if layer.bias is not None else (None,) * parts
    return tuple(nn.functional.linear(x, w, b) for w, b in zip(weights, biases))


class CachedStepAttention(nn.Module):
    """The attention of a cached decoder step over Linear projections (BLIP's BERT decoder, Florence-2's BART
    decoder): every layer's cross K/V from the encoder states, cached self-attention, cross-attention, in either
    lowering."""

    def __init__(self, attention: str, heads: int, width: int):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.attention, self.heads, self.width = attention, heads, width
        self.scale = float((width // heads) ** -0.5)

    def project_cross_kv(self, pairs: list[tuple[nn.Linear, nn.Linear]], states: torch.Tensor
                         ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(key, value) projections per layer -> per-layer K and V [B, heads, S, head_dim]."""
        ks, vs = [], []
        for key, value in pairs:
            if self.attention == "contrib":  # a MatMul each, no Split (see linear_parts)
                k, v = key(states), value(states)
            else:
                k, v = fused_linear([key, value], states).split(self.width, dim=2)
            ks.append(split_heads(k, self.heads))
            vs.append(split_heads(v, self.heads))
        return ks, vs

    def self_attention(self, qkv: list[nn.Linear], x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                       causal: torch.Tensor | None):
        """(query, key, value) projections -> (merged attention output, present K, present V)."""
        q, k, v = fused_linear(qkv, x).split(self.width, dim=2)
        return cached_self_attend(q, k, v, past_k, past_v, self.heads, self.scale, causal, self.attention)

    def cross_attention(self, query: nn.Linear, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return cross_attend(query(x), k, v, self.heads, self.scale, self.attention)


def _fusable_vit(encoder: nn.Module) -> bool:
    """True when the encoder has the ViT/DeiT layout of transformers 5 that :func:`_vit_forward` reimplements."""
    layer = getattr(encoder, "layers", [None])[0]
    attn = getattr(layer, "attention", None)
    return (hasattr(encoder, "embeddings") and hasattr(encoder, "layernorm")
            and all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling"))
            and all(hasattr(layer, a) for a in ("layernorm_before", "layernorm_after", "mlp")))


def _vit_forward(encoder: nn.Module, pixel_values: torch.Tensor, attention: str) -> torch.Tensor:
    """ViT/DeiT last_hidden_state with one fused QKV MatMul per layer and the attention lowered as ``attention``
    says (one MultiHeadAttention node, or standard ops with Q scaled first, which transformers' eager ViT does not
    do)."""
    hidden = encoder.embeddings(pixel_values)
    for layer in encoder.layers:
        attn = layer.attention
        heads = attn.num_attention_heads
        width = attn.q_proj.out_features
        weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], dim=0)
        biases = [p.bias if p.bias is not None else torch.zeros(width) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
        qkv = nn.functional.linear(layer.layernorm_before(hidden), weight, torch.cat(biases))
        q, k, v = qkv.split(width, dim=2)
        if attention == "contrib":
            a = AttentionMHA.apply(q, k, v, heads, float(attn.scaling))
        else:
            a = merge_heads(attend(*(split_heads(x, heads) for x in (q, k, v)), float(attn.scaling)))
        hidden = attn.o_proj(a) + hidden
        hidden = layer.mlp(layer.layernorm_after(hidden)) + hidden
    return encoder.layernorm(hidden)


class EncoderWithCrossKV(nn.Module):
    """pixel_values -> (cross_k.0..L-1, cross_v.0..L-1, pooled): the decoder's cross K/V, once per image."""

    def __init__(self, model: nn.Module, step: "GPT2CachedStep"):
        super().__init__()
        self.encoder = model.encoder
        self.fused = _fusable_vit(model.encoder)
        self.proj = getattr(model, "enc_to_dec_proj", None)
        self.step = step

    def forward(self, pixel_values: torch.Tensor):
        if self.fused:
            states = _vit_forward(self.encoder, pixel_values, self.step.attention)
        else:
            states = self.encoder(pixel_values=pixel_values).last_hidden_state
        pooled = states.mean(dim=1)
        if self.proj is not None:
            states = self.proj(states)
        ks, vs = self.step.cross_kv(states)
        return (*ks, *vs, pooled)


class GPT2CachedStep(nn.Module):
    """(input_ids, past_k/v per layer, cross_k/v per layer) -> (last logits, present_k/v per layer)."""

    def __init__(self, lm: nn.Module, attention: str = "contrib"):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.attention = attention
        self.t = lm.transformer
        self.lm_head = lm.lm_head
        cfg = lm.config
        self.layers = cfg.n_layer
        self.heads = cfg.n_head
        self.embed = cfg.n_embd

    def cross_kv(self, states: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ks, vs = [], []
        for block in self.t.h:
            k, v = _linear(block.crossattention.c_attn, states).split(self.embed, dim=2)
            ks.append(split_heads(k, self.heads))
            vs.append(split_heads(v, self.heads))
        return ks, vs

    def _self_attention(self, attn: nn.Module, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                        causal: torch.Tensor):
        q, k, v = _linear(attn.c_attn, x).split(self.embed, dim=2)
        return cached_self_attend(q, k, v, past_k, past_v, self.heads, float(attn.scaling), causal, self.attention)

    def _cross_attention(self, xattn: nn.Module, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return cross_attend(_linear(xattn.q_attn, x), k, v, self.heads, float(xattn.scaling), self.attention)

    def forward(self, input_ids: torch.Tensor, *caches: torch.Tensor):
        n = self.layers
        past, cross = caches[: 2 * n], caches[2 * n:]
        past_len = past[0].shape[2]
        new_len = input_ids.shape[1]
        positions = torch.arange(new_len, device=input_ids.device) + past_len
        hidden = self.t.wte(input_ids) + self.t.wpe(positions).unsqueeze(0)
        causal = None
        if self.attention == "standard":
            key_pos = torch.arange(past_len + new_len, device=input_ids.device)
            causal = key_pos.unsqueeze(0) <= positions.unsqueeze(1)  # [T, P+T]
        presents = []
        for i, block in enumerate(self.t.h):
            a, k, v = self._self_attention(block.attn, block.ln_1(hidden), past[2 * i], past[2 * i + 1], causal)
            presents += [k, v]
            hidden = _linear(block.attn.c_proj, a) + hidden
            a = self._cross_attention(block.crossattention, block.ln_cross_attn(hidden), cross[i], cross[n + i])
            hidden = hidden + _linear(block.crossattention.c_proj, a)
            mlp = block.mlp
            hidden = hidden + _linear(mlp.c_proj, mlp.act(_linear(mlp.c_fc, block.ln_2(hidden))))
        logits = self.lm_head(self.t.ln_f(hidden[:, -1, :]))
        return (logits, *presents)
