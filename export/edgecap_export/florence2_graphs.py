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

from contextlib import nullcontext

import torch
from torch import nn

from .davit_graphs import davit_image_features
from .wrappers import CachedStepAttention, qscaled_attention_in


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
        # the standard lowering scales Q before Q.K^T in transformers' own attention modules too (TensorRT)
        with qscaled_attention_in(self.model) if self.step.attention == "standard" else nullcontext():
            image = davit_image_features(self.model, pixel_values, self.step.attention)
            embeds = torch.cat([image, self.embed(input_ids)], dim=1)
            states = self.model.language_model.encoder(inputs_embeds=embeds).last_hidden_state
        ks, vs = self.step.cross_kv(states)
        return (*ks, *vs, image.mean(dim=1))


class BartCachedStep(CachedStepAttention):
    """(input_ids, past_k/v per layer, cross_k/v per layer) -> (last logits, present_k/v per layer)."""

    def __init__(self, decoder: nn.Module, lm_head: nn.Module, attention: str = "contrib"):
        cfg = decoder.config
        super().__init__(attention, cfg.decoder_attention_heads, cfg.d_model)
        self.decoder = decoder
        self.head = lm_head
        self.layers = cfg.decoder_layers

    def cross_kv(self, states: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.project_cross_kv([(layer.encoder_attn.k_proj, layer.encoder_attn.v_proj)
                                      for layer in self.decoder.layers], states)

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
            sa = layer.self_attn
            a, k, v = self.self_attention([sa.q_proj, sa.k_proj, sa.v_proj], hidden, past[2 * i], past[2 * i + 1],
                                          causal)
            presents += [k, v]
            hidden = layer.self_attn_layer_norm(layer.self_attn.out_proj(a) + hidden)
            a = self.cross_attention(layer.encoder_attn.q_proj, hidden, cross[i], cross[n + i])
            hidden = layer.encoder_attn_layer_norm(layer.encoder_attn.out_proj(a) + hidden)
            hidden = layer.final_layer_norm(layer.fc2(layer.activation_fn(layer.fc1(hidden))) + hidden)
        logits = self.head(hidden[:, -1, :])
        return (logits, *presents)
