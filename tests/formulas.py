"""Reference math written out by hand for the tests (never calls attnexp)."""

from __future__ import annotations

import math

import torch


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu_erf(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def softmax_by_hand(x, dim):
    e = torch.exp(x - x.amax(dim, keepdim=True))
    return e / e.sum(dim, keepdim=True)


def attention_formula(x, qkv_w, proj_w, proj_b, heads, value=lambda v: v, scale=None):
    """softmax(c·QKᵀ) f(V) per head, heads from a [3, heads, head_dim] view of one qkv projection.

    `value` maps one head's V of shape (B, N, d) — its token axis is 1.
    """
    B, N, C = x.shape
    d = C // heads
    c = scale if scale is not None else 1 / math.sqrt(d)
    qkv = x @ qkv_w.T  # (B, N, 3C)
    out = torch.zeros(B, N, C, dtype=x.dtype)
    for h in range(heads):
        q = qkv[..., 0 * C + h * d : 0 * C + (h + 1) * d]
        k = qkv[..., 1 * C + h * d : 1 * C + (h + 1) * d]
        v = value(qkv[..., 2 * C + h * d : 2 * C + (h + 1) * d])
        weights = softmax_by_hand(c * (q @ k.transpose(1, 2)), dim=-1)
        out[..., h * d : (h + 1) * d] = weights @ v
    return out @ proj_w.T + proj_b


# the value maps of each attention / SeqPool choice, on (B, N, d) with tokens on axis 1
VALUE_FORMULAS = {
    "softmax": lambda v, a: v,
    "softmax_v": lambda v, a: softmax_by_hand(v, dim=1),
    "remix": lambda v, a: a * softmax_by_hand(v, dim=1) + (1 - a) * v,
    "shift": lambda v, a: v + a * softmax_by_hand(v, dim=1),
}
SEQPOOL_FORMULAS = {
    "x": lambda x, a: x,
    "softmax_dim0": lambda x, a: softmax_by_hand(x, dim=0),
    "softmax": lambda x, a: softmax_by_hand(x, dim=1),
    "softmax_x10": lambda x, a: 10 * softmax_by_hand(x, dim=1),
    "softmax_plus_x": lambda x, a: softmax_by_hand(x, dim=1) + x,
    "x_minus_softmax": lambda x, a: x - softmax_by_hand(x, dim=1),
    "remix": lambda x, a: a * softmax_by_hand(x, dim=1) + (1 - a) * x,
    "shift": lambda x, a: x + a * softmax_by_hand(x, dim=1),
}
