"""Sigmoid attention: sigmoid(c·QKᵀ + b)·f(V), b = −log N (Ramapuram et al., 2024, "Theory, Analysis,
and Best Practices for Sigmoid Self-Attention").

Each query weighs each key on its own, with no normalisation across the keys;
the bias b = −log N, N the number of keys (the class token included; only the
real tokens when a padding mask is given), starts every weight near 1/N, where
softmax over N equal scores would put it. No fused kernel computes it, so it
runs on the explicit path (`impl=sdpa` is refused at start-up). Parameters,
value maps and state_dict keys are the softmax attention's.
"""

from __future__ import annotations

import torch

from attnexp.layers.attention import Attention, key_mask


class SigmoidAttention(Attention):
    has_fused_kernel = False

    def attention_maps(self, q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, N, N)
        if attn_mask is None:
            keys = torch.full((1, 1, 1, 1), k.shape[-2], dtype=scores.dtype, device=scores.device)
        else:
            keys = attn_mask.sum(-1).clamp_min(1).to(scores.dtype)[:, None, None, None]  # real keys per example
        weights = torch.sigmoid(scores - keys.log())
        return weights if attn_mask is None else weights.masked_fill(~key_mask(attn_mask), 0.0)
