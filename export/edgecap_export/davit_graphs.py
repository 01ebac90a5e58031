"""Florence-2's DaViT vision tower written for ONNX Runtime: the checkpoint's own modules and weights, the same
arithmetic as transformers' ``Florence2VisionBackbone`` and ``Florence2MultiModalProjector``, fewer layout copies.

transformers keeps the feature map as NCHW between sub-blocks and converts it to tokens and back around every
depthwise convolution, then partitions the tokens into windows and merges them back around every window
attention: at 768 px, 270 Transpose kernels and 14% of an INT8 encoder (the stage-0 map alone is 19 MB). Here the
map stays channels-last ([B, H, W, C], which is also the token layout) from the first patch embedding on:

* each convolution is written as NHWC -> NCHW -> Conv -> NCHW -> NHWC, and ONNX Runtime's NCHWc layout pass folds
  both transposes into the reorders it puts around every convolution anyway;
* a spatial block partitions into windows once and merges once; LayerNorm and the MLP act per token, so the
  windows' attention output is added to the residual in window order;
* ``attention="contrib"``: each window attention is one ``com.microsoft.MultiHeadAttention`` node (Q, K, V as
  [windows, tokens, width]);
* channel attention keeps the positions in the rows (see :func:`_channel_attention`).
"""

from __future__ import annotations

import torch
from torch import nn

from .wrappers import AttentionMHA, attend, linear_parts


def _conv_nhwc(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A Conv2d on a [B, H, W, C] map, returning [B, H', W', C']."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _patch_embed(embed: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Florence2VisionConvEmbed on a [B, H, W, C] map (LayerNorm before or after the conv, per channel)."""
    if embed.pre_norm:
        x = embed.norm(x)
    x = _conv_nhwc(embed.conv, x)
    return x if embed.pre_norm else embed.norm(x)


def _window_attention(attn: nn.Module, windows: torch.Tensor, attention: str) -> torch.Tensor:
    """[windows, tokens, C] -> [windows, tokens, C]: self-attention inside each window, then the projection."""
    heads, width = attn.num_heads, attn.dim
    if attention == "contrib":
        # qkv's output is laid out [3, heads, head_dim]: one MatMul per third, no Split (wrappers.linear_parts)
        q, k, v = linear_parts(attn.qkv, windows)
        out = AttentionMHA.apply(q, k, v, heads, float(attn.scale))
    else:
        n, t, _ = windows.shape
        qkv = attn.qkv(windows)
        q, k, v = qkv.reshape(n, t, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = attend(q, k, v, attn.scale).transpose(1, 2).reshape(n, t, width)
    return attn.proj(out)


def _channel_attention(attn: nn.Module, tokens: torch.Tensor, attention: str) -> torch.Tensor:
    """[B, N, C] -> [B, N, C]: attention between the channels of each group, over all N positions.

    transformers moves the positions last ([B, groups, C / groups, N]), a transpose that gathers single floats;
    here Q, K and V move to [B, groups, N, C / groups] in one transpose of C / groups-float rows, the scores are
    Q^T K and the output is V A^T, already in transformers' (groups, C / groups) channel order. Under ``contrib``
    Q, K and V are three MatMuls, each moved by its own transpose, instead of one MatMul whose output is split."""
    b, n, c = tokens.shape
    groups = attn.groups
    if attention == "contrib":
        q, k, v = (t.reshape(b, n, groups, c // groups).transpose(1, 2) for t in linear_parts(attn.qkv, tokens))
    else:
        qkv = attn.qkv(tokens).reshape(b, n, 3 * groups, c // groups).transpose(1, 2)
        q, k, v = qkv.split(groups, dim=1)
    # Q scaled before Q^T K, as `attend` does (TensorRT's attention fusion matches the scale on Q)
    weights = torch.softmax(torch.matmul(q.transpose(-1, -2) * n ** -0.5, k), dim=-1)  # [B, groups, C/g, C/g]
    out = torch.matmul(v, weights.transpose(-1, -2))  # [B, groups, N, C / groups]
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))


def _spatial_block(block: nn.Module, x: torch.Tensor, attention: str) -> torch.Tensor:
    """Florence2VisionSpatialBlock on a [B, H, W, C] map."""
    b, h, w, c = x.shape
    size = block.window_attn.window_size
    x = _conv_nhwc(block.conv1, x) + x
    if h % size or w % size:  # transformers pads the map to whole windows: its own module does that
        x = x + block.window_attn(block.norm1(x)).reshape(b, h, w, c)
    else:
        windows = x.reshape(b, h // size, size, w // size, size, c).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(-1, size * size, c)
        windows = windows + _window_attention(block.window_attn, block.norm1(windows), attention)
        x = windows.reshape(b, h // size, w // size, size, size, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    x = _conv_nhwc(block.conv2, x) + x
    return x + block.ffn(block.norm2(x))


def _channel_block(block: nn.Module, x: torch.Tensor, attention: str) -> torch.Tensor:
    """Florence2VisionChannelBlock on a [B, H, W, C] map."""
    b, h, w, c = x.shape
    x = _conv_nhwc(block.conv1, x) + x
    tokens = x.reshape(b, h * w, c)
    tokens = tokens + _channel_attention(block.channel_attn, block.norm1(tokens), attention)
    x = tokens.reshape(b, h, w, c)
    x = _conv_nhwc(block.conv2, x) + x
    return x + block.ffn(block.norm2(x))


def davit_image_features(model: nn.Module, pixel_values: torch.Tensor, attention: str) -> torch.Tensor:
    """Florence2Model.get_image_features(pixel_values).pooler_output ([B, 577, projection width] at 768 px), with
    the vision tower channels-last. ``model`` is the ``Florence2Model`` (``Florence2ForConditionalGeneration.model``).
    """
    tower = model.vision_tower
    x = pixel_values.to(tower.convs[0].conv.weight.dtype).permute(0, 2, 3, 1)
    for embed, blocks in zip(tower.convs, tower.blocks):
        x = _patch_embed(embed, x)
        for block in blocks:
            x = _spatial_block(block.spatial_block, x, attention)
            x = _channel_block(block.channel_block, x, attention)
    return model.multi_modal_projector(x.permute(0, 3, 1, 2))
