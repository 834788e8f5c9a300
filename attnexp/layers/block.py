"""The one transformer encoder block every backbone uses.

Two norm layouts, the only thing the backbones disagree on:
- `cct` (official Compact-Transformers): x += attn(pre_norm(x)); x = norm1(x);
  x += mlp(x). The stream itself is replaced by its normalised version and the
  MLP has no norm of its own.
- `pre` (textbook pre-norm, vit-pytorch, timm): x += attn(pre_norm(x));
  x += mlp(norm1(x)).
Both have the same parameters under the same names, so counts do not depend on
the layout.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from attnexp.errors import require, require_rate
from attnexp.layers.randomness import Dropout, drop

LAYOUTS = ("cct", "pre")


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample, rescale the survivors."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        return drop(x, self.p, (x.shape[0],) + (1,) * (x.ndim - 1))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class TransformerBlock(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        attn_layer: Callable[..., nn.Module],
        dropout: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layout: str = "cct",
        proj_drop: float | None = None,
        head_dim: int | None = None,
        qkv_bias: bool = False,
    ):
        super().__init__()
        require(layout in LAYOUTS, "layout", layout, f"one of {', '.join(LAYOUTS)}")
        for name, rate in (("dropout", dropout), ("attn_drop", attn_drop), ("drop_path", drop_path)):
            require_rate(name, rate)
        self.norm_stream = layout == "cct"
        self.pre_norm = nn.LayerNorm(dim)
        # exactly the contract's keywords (attnexp/layers/contract.py)
        self.self_attn = attn_layer(
            dim=dim,
            num_heads=num_heads,
            head_dim=head_dim,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=dropout if proj_drop is None else proj_drop,
        )
        self.linear1 = nn.Linear(dim, mlp_hidden)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear2 = nn.Linear(mlp_hidden, dim)
        self.dropout2 = Dropout(dropout)
        self.activation = nn.GELU()  # exact erf form, as the official code
        self.drop_path = DropPath(drop_path)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout1(self.activation(self.linear1(x)))))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.self_attn(self.pre_norm(x), attn_mask=attn_mask))
        if self.norm_stream:
            x = self.norm1(x)
            return x + self.drop_path(self.mlp(x))
        return x + self.drop_path(self.mlp(self.norm1(x)))


def drop_path_rates(depth: int, max_rate: float) -> list[float]:
    """Linear 0 → max_rate over the blocks (the official rule: block i of L gets max·i/(L−1))."""
    if depth == 1:
        return [0.0]
    return [max_rate * i / (depth - 1) for i in range(depth)]


def as_partial(fn: Callable[..., nn.Module]) -> functools.partial:
    """A plain functools.partial with its own keywords dict (Hydra's partials are a subclass)."""
    if isinstance(fn, functools.partial):
        return functools.partial(fn.func, *fn.args, **fn.keywords)
    return functools.partial(fn)


def bind_attention(attn_layer: Callable[..., nn.Module], **defaults) -> Callable[..., nn.Module]:
    """Let an attention config win over what a backbone passes.

    A Hydra `_partial_` attention config is a functools.partial; keys it sets to a
    non-None value (e.g. ConvNN's own `num_heads`) take precedence over the
    backbone's arguments, which otherwise would override them at call time.
    """
    bound = {k: v for k, v in getattr(attn_layer, "keywords", {}).items() if v is not None}

    def build(**kwargs):
        return attn_layer(**{**defaults, **kwargs, **bound})

    return build


def attention_per_block(attn_layer: Callable[..., nn.Module], depth: int, **defaults) -> list[Callable[..., nn.Module]]:
    """One attention factory per block. `layers: [i, ...]` in the attention config limits the
    variant to those blocks; the others get the plain softmax attention (same impl)."""
    from attnexp.layers.attention import Attention

    attn_layer = as_partial(attn_layer)
    keywords = attn_layer.keywords
    layers = keywords.pop("layers", None)
    chosen = bind_attention(attn_layer, **defaults)
    if layers is None:
        return [chosen] * depth
    layers = list(layers)
    ok = len(layers) > 0 and all(isinstance(i, int) and 0 <= i < depth for i in layers)
    require(ok, "layers", layers, f"block indices in 0..{depth - 1} (this model has {depth} blocks)", group="attention")
    plain_keywords = {k: keywords[k] for k in ("impl", "qkv_bias") if keywords.get(k) is not None}
    plain = bind_attention(functools.partial(Attention, **plain_keywords), **defaults)
    return [chosen if i in set(layers) else plain for i in range(depth)]
