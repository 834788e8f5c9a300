"""The contract between a backbone and its attention modules.

Every attention module (`conf/attention/*.yaml` targets a subclass of
`AttentionLayer`) is built by the backbone's blocks with exactly these keywords,
and nothing else:

    dim         width of the token stream (in and out)
    num_heads   heads
    head_dim    width per head; None = dim // num_heads. A backbone may decouple
                it from dim (seed 003's ViT: 4 heads × 64 on a 128-wide stream),
                so inner widths are num_heads · head_dim and the output
                projection maps them back to dim.
    qkv_bias    bias on the input projections
    attn_drop   dropout on the mixing weights (attention maps; ConvNN's prime conv)
    proj_drop   dropout after the output projection

A value the attention config sets (not null) wins over the backbone's
(`layers.block.bind_attention`), e.g. ConvNN's own `num_heads`.

    forward(x, attn_mask=None) -> same shape as x
    x          (B, N, dim)
    attn_mask  None, or (B, N) bool, True where a token is real: padded tokens
               receive no weight as keys of a real query, and value maps
               soft-max over the real tokens only. What a padded query returns
               is the module's to define (Attention: the official uniform
               average). A module that cannot honour a mask raises ValueError
               when given one.

Capabilities a backbone may ask for are class attributes, checked where the
backbone is built, so a combination that cannot work is refused at start-up:
    has_attention_maps   explicit (B, h, N, N) maps exist, so DeepViT's
                         re-attention can mix them (passed as reattention=True)
"""

from __future__ import annotations

from torch import nn

CONTRACT = ("dim", "num_heads", "head_dim", "qkv_bias", "attn_drop", "proj_drop")


class AttentionLayer(nn.Module):
    """Base of every attention module: (B, N, dim) → (B, N, dim), built from CONTRACT's keywords."""

    has_attention_maps: bool = False


def inner_width(dim: int, num_heads: int, head_dim: int | None) -> int:
    """num_heads · head_dim, the width attention works in (dim when head_dim is not given)."""
    return num_heads * head_dim if head_dim else dim
