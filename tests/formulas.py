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


# ---------------------------------------------------------------- text CCT (issue 17)


def masked_softmax_by_hand(x, real, dim):
    """softmax over the positions where `real` (broadcastable to x) is True; 0 elsewhere."""
    e = torch.exp(x - x.masked_fill(~real, -math.inf).amax(dim, keepdim=True)) * real
    return e / e.sum(dim, keepdim=True)


# the value maps over the real tokens only, on (B, N, d) with tokens on axis 1; real: (B, N, 1)
MASKED_VALUE_FORMULAS = {
    "x": lambda v, real, a: v,
    "softmax": lambda v, real, a: masked_softmax_by_hand(v, real, 1),
    "softmax_x10": lambda v, real, a: 10 * masked_softmax_by_hand(v, real, 1),
    "softmax_plus_x": lambda v, real, a: masked_softmax_by_hand(v, real, 1) + v,
    "x_minus_softmax": lambda v, real, a: v - masked_softmax_by_hand(v, real, 1),
    "remix": lambda v, real, a: a * masked_softmax_by_hand(v, real, 1) + (1 - a) * v,
    "shift": lambda v, real, a: v + a * masked_softmax_by_hand(v, real, 1),
}


def official_masked_attention(x, qkv_w, proj_w, proj_b, heads, mask, value=lambda v, real: v):
    """The official MaskedAttention: scores of every pair with a padded side set to −max(float),
    then softmax. A real query ignores padded keys; a padded query averages every token.
    `value(v, real)` maps one head's V (B, N, d) given real (B, N, 1)."""
    B, N, C = x.shape
    d = C // heads
    qkv = x @ qkv_w.T
    real = mask[:, :, None]
    pairs = mask[:, :, None] & mask[:, None, :]  # (B, N, N)
    out = torch.zeros(B, N, C, dtype=x.dtype)
    for h in range(heads):
        q = qkv[..., h * d : (h + 1) * d]
        k = qkv[..., C + h * d : C + (h + 1) * d]
        v = value(qkv[..., 2 * C + h * d : 2 * C + (h + 1) * d], real)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(d)
        scores = torch.where(pairs, scores, torch.full_like(scores, -torch.finfo(x.dtype).max))
        out[..., h * d : (h + 1) * d] = softmax_by_hand(scores, dim=-1) @ v
    return out @ proj_w.T + proj_b


def windows(length, kernel, stride, padding):
    """The input positions each output of a 1-d sliding window covers (padding positions dropped)."""
    count = (length + 2 * padding - kernel) // stride + 1
    return [
        [j for j in range(i * stride - padding, i * stride - padding + kernel) if 0 <= j < length] for i in range(count)
    ]


def text_tokenizer_mask(mask, kernel, stride, padding, pool=(2, 2, 1)):
    """A token is real when its pooling window holds a conv window holding a real word."""
    out = []
    for row in mask.tolist():
        conv = [any(row[j] for j in w) for w in windows(len(row), kernel, stride, padding)]
        out.append([any(conv[j] for j in w) for w in windows(len(conv), *pool)])
    return torch.tensor(out)


def text_tokenizer(words, weight, mask, stride, padding, pool=(2, 2, 1)):
    """words (B, L, d) zero at padded words, weight (dim, 1, k, d): ReLU(conv across whole words),
    max over pooling windows, zeroed at padded tokens. → (B, n, dim)."""
    B, L, d = words.shape
    k = weight.shape[2]
    w = weight[:, 0].reshape(weight.shape[0], k * d)
    conv = []
    for i in range(len(windows(L, k, stride, padding))):
        cols = torch.zeros(B, k, d, dtype=words.dtype)
        for t in range(k):
            j = i * stride - padding + t
            if 0 <= j < L:
                cols[:, t] = words[:, j]
        conv.append(torch.relu(cols.reshape(B, k * d) @ w.T))
    conv = torch.stack(conv, 1)  # (B, n_conv, dim)
    pooled = torch.stack([conv[:, win].amax(1) for win in windows(conv.shape[1], *pool)], 1)
    return pooled * text_tokenizer_mask(mask, k, stride, padding, pool)[..., None]


def sine_rows(n, dim):
    """Row p, channel i: sin (i even) / cos (i odd) of p / 10000^(2·(i//2)/dim)."""
    return torch.tensor(
        [
            [(math.sin if i % 2 == 0 else math.cos)(p / 10000 ** (2 * (i // 2) / dim)) for i in range(dim)]
            for p in range(n)
        ]
    )


def cct_forward_gflops(dim, layers, heads, mlp_ratio, conv_channels, image=32, classes=10, in_channels=3):
    """Multiply-adds × 2 of a CCT forward pass: k=3 stride-1 convs each followed by a 2× pool,
    then `layers` blocks over N tokens, SeqPool and the head."""
    flops, size, c_in = 0, image, in_channels
    for c_out in conv_channels:
        flops += 2 * c_out * c_in * 9 * size * size
        size, c_in = size // 2, c_out
    n, hidden = size * size, int(dim * mlp_ratio)
    per_block = 2 * n * dim * 3 * dim + 2 * 2 * n * n * dim + 2 * n * dim * dim + 2 * 2 * n * dim * hidden
    return (flops + layers * per_block + 2 * n * dim + 2 * n * dim + 2 * dim * classes) / 1e9
