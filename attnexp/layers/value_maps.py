"""The value that attention weights multiply: V itself or a map of it.

The RFP (seed 001) replaces V by softmaxᵀ(V): each feature column of V is
soft-maxed over the token axis. CCT's SeqPool is the same product with one query
per image, so one set of maps serves both. Every map acts on the token axis,
which is -2 in both layouts that use them: (B, heads, tokens, head_dim) inside
attention and (B, tokens, dim) in SeqPool.

Padded text: every map takes `mask`, None or a bool tensor broadcastable to V,
True at real tokens ((B, 1, N, 1) in attention, (B, N, 1) in SeqPool). A softmax
over tokens then runs over the real tokens only and gives padded tokens 0, so
what sits at a padded position cannot reach a real token through the map.

No map owns a trainable or persistent tensor, so a checkpoint of the plain model
loads strictly into any of them (the point of the remix fine-tuning study).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TOKEN_AXIS = -2


def softmax_upcast(v: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax in at least float32 (bf16 exponentials lose too much), returned in v's dtype."""
    wide = v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
    return F.softmax(wide, dim=dim).to(v.dtype)


def token_softmax(v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmaxᵀ(V): softmax over tokens, per feature (over the real ones when a mask is given)."""
    if mask is None:
        return softmax_upcast(v, TOKEN_AXIS)
    wide = v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
    # −max rather than −inf: an example without a real token stays finite (all zeros below)
    wide = wide.masked_fill(~mask, -torch.finfo(wide.dtype).max)
    return F.softmax(wide, dim=TOKEN_AXIS).masked_fill(~mask, 0.0).to(v.dtype)


class ValueMap(nn.Module):
    """Base of every value map: f(V) of the same shape, acting on the token axis (-2)."""


class Identity(ValueMap):
    """f(V) = V: classic attention and the official SeqPool."""

    def forward(self, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return v


class TokenSoftmax(ValueMap):
    """f(V) = scale · softmaxᵀ(V). scale=10 is seed 000's `10*F.softmax(x, dim=1)` line."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = token_softmax(v, mask)
        return out if self.scale == 1.0 else out * self.scale


class BatchSoftmax(ValueMap):
    """f(V) = softmax(V, dim=0): seed 000's accidental softmax over the *batch* axis.

    Kept only to reproduce that number: the output of one image depends on the
    other images of its batch, so eval accuracy depends on batch composition.
    A padding mask is ignored: this softmax runs over examples, not tokens.
    """

    def forward(self, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return softmax_upcast(v, 0)


class AlphaMap(ValueMap):
    """Base of the α-weighted maps.

    alpha=None means "driven by the `alpha` schedule": the training module finds
    every map with `scheduled=True` and writes the current α into its buffer each
    optimizer step. The buffer is non-persistent (no state_dict entry) and is
    updated in place, so compiled graphs see the new value without recompiling.
    `alpha_range` is where the map's formula means what it says (None: any real α);
    a schedule leaving it is refused at start-up unless it allows extrapolation.
    """

    alpha_range: tuple[float, float] | None = None

    def __init__(self, alpha: float | None = None):
        super().__init__()
        self.scheduled = alpha is None
        self.register_buffer("alpha", torch.tensor(0.0 if alpha is None else float(alpha)), persistent=False)

    def set_alpha(self, value: float) -> None:
        self.alpha.fill_(value)

    def extra_repr(self) -> str:
        return "alpha=scheduled" if self.scheduled else f"alpha={self.alpha.item():g}"


class Remix(AlphaMap):
    """f(V) = α · softmaxᵀ(V) + (1 − α) · V (seed 001's remix; α=0 is plain V)."""

    alpha_range = (0.0, 1.0)

    def forward(self, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        alpha = self.alpha.to(v.dtype)
        return torch.lerp(v, token_softmax(v, mask), alpha)


class Shift(AlphaMap):
    """f(V) = V + α · softmaxᵀ(V), any real α (α=1: softmax+x, α=−1: x−softmax)."""

    def forward(self, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return v + self.alpha.to(v.dtype) * token_softmax(v, mask)


def scheduled_maps(model: nn.Module) -> list[AlphaMap]:
    return [m for m in model.modules() if isinstance(m, AlphaMap) and m.scheduled]
