"""Every random draw of a forward pass goes through `keep_mask`, so a packed run can give each
member exactly the masks its unpacked run draws.

An unpacked run seeds torch's generator per step (ClassifierModule) and each dropout, attention
dropout and stochastic-depth site draws `bernoulli(keep)` of its shape, in module order. A
packed run (attnexp.pack.module) records that order once (`recording`), then per step draws each
member's masks from that member's own generator, seeded as its unpacked run seeds the global
one, and replays them through `replaying` inside the vectorised forward.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

_tape: "Tape | None" = None  # set while a packed forward records or replays


class Tape:
    """Masks of one forward: `plan` (shape, keep) in draw order; `masks` to replay, in that order."""

    def __init__(self, masks: list[torch.Tensor] | None = None):
        self.plan: list[tuple[tuple[int, ...], float]] = []
        self.masks = masks
        self.position = 0

    def draw(self, like: torch.Tensor, shape: tuple[int, ...], keep: float) -> torch.Tensor:
        if self.masks is None:  # recording: a real draw, so the forward goes on as usual
            self.plan.append((tuple(shape), keep))
            return fresh_mask(like, shape, keep)
        mask = self.masks[self.position]
        self.position += 1
        return mask


def fresh_mask(like: torch.Tensor, shape: tuple[int, ...], keep: float, generator=None) -> torch.Tensor:
    """1 with probability keep, else 0, in float32 (the same draws whatever the activations' dtype)."""
    return torch.empty(shape, device=like.device, dtype=torch.float32).bernoulli_(keep, generator=generator)


def keep_mask(like: torch.Tensor, shape: tuple[int, ...], keep: float) -> torch.Tensor:
    """A keep-mask of `shape`: from torch's generator, or the packed run's tape."""
    mask = _tape.draw(like, shape, keep) if _tape is not None else fresh_mask(like, shape, keep)
    return mask.to(like.dtype)


def drop(x: torch.Tensor, p: float, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Inverted dropout of rate p; `shape` broadcasts one draw (stochastic depth: one per sample)."""
    keep = 1.0 - p
    return x * keep_mask(x, tuple(shape or x.shape), keep) / keep


class Dropout(nn.Dropout):
    """nn.Dropout whose draws go through keep_mask (same name, no state: checkpoints unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop(x, self.p) if self.training and self.p > 0 else x


def taping() -> bool:
    return _tape is not None


@contextmanager
def recording() -> Iterator[Tape]:
    global _tape
    previous, _tape = _tape, Tape()
    try:
        yield _tape
    finally:
        _tape = previous


@contextmanager
def replaying(masks: list[torch.Tensor]) -> Iterator[Tape]:
    global _tape
    previous, _tape = _tape, Tape(masks)
    try:
        yield _tape
    finally:
        _tape = previous


def untaped_randomness(model: nn.Module) -> list[str]:
    """Modules that would draw outside the tape in training: torch's own dropout (not attnexp's)
    with p > 0, and foreign stochastic-depth layers (timm's DropPath)."""
    found = []
    for name, m in model.named_modules():
        p = getattr(m, "p", None) if isinstance(m, nn.modules.dropout._DropoutNd) else getattr(m, "drop_prob", None)
        if p and not isinstance(m, Dropout):
            found.append(f"{name or 'model'} ({type(m).__name__}, p={p:g})")
    return found
