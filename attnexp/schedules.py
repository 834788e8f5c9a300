"""Learning-rate and α schedules: plain functions of the epoch or step, so resume is exact by construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from attnexp.errors import require

# ---------------------------------------------------------------- learning rate


def warmup_cosine_factor(epoch: int, warmup_epochs: int, total_epochs: int) -> float:
    """The official CCT main.py rule, as a multiple of the base lr, for 0-based epoch e:
    1. e < warmup: 1 / (warmup − e)   (1/5, 1/4, ... 1/1 for 5 warmup epochs)
    2. then cosine: ½(1 + cos(π(e − warmup)/(total − warmup))), reaching 0 at e = total
    """
    if epoch < warmup_epochs:
        return 1.0 / (warmup_epochs - epoch)
    if total_epochs <= warmup_epochs:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (total_epochs - warmup_epochs)))


class WarmupCosine:
    """Builds a per-epoch LambdaLR for an optimizer (the scheduler group's factory interface)."""

    def __init__(self, warmup_epochs: int = 5, total_epochs: int = 200):
        require(warmup_epochs >= 0, "warmup_epochs", warmup_epochs, "must be ≥ 0")
        require(total_epochs >= 1, "total_epochs", total_epochs, "must be ≥ 1")
        self.warmup_epochs, self.total_epochs = warmup_epochs, total_epochs

    def factor(self, epoch: int) -> float:
        return warmup_cosine_factor(epoch, self.warmup_epochs, self.total_epochs)

    def __call__(self, optimizer):
        from torch.optim.lr_scheduler import LambdaLR

        return LambdaLR(optimizer, self.factor)


# ---------------------------------------------------------------- alpha


@dataclass
class AlphaSchedule:
    """α as a function of training progress. `unit` says what ramp_* and points count."""

    unit: str = "epoch"
    allow_extrapolation: bool = False  # may α leave the value map's alpha_range (checked at start-up)

    UNITS = ("epoch", "step")

    def __post_init__(self) -> None:
        require(self.unit in self.UNITS, "unit", self.unit, f"one of {', '.join(self.UNITS)}")

    def extent(self) -> tuple[float, float]:
        """The smallest and largest α the schedule ever gives."""
        raise NotImplementedError

    def position(self, step: int, steps_per_epoch: int) -> float:
        return step / max(steps_per_epoch, 1) if self.unit == "epoch" else float(step)

    def __call__(self, step: int, steps_per_epoch: int) -> float:
        return self.at(self.position(step, steps_per_epoch))

    def at(self, t: float) -> float:
        raise NotImplementedError


@dataclass
class ConstantAlpha(AlphaSchedule):
    value: float = 0.0

    def at(self, t: float) -> float:
        return self.value

    def extent(self) -> tuple[float, float]:
        return self.value, self.value


@dataclass
class LinearAlpha(AlphaSchedule):
    start: float = 0.0
    end: float = 1.0
    ramp_begin: float = 0.0
    ramp_end: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.ramp_begin >= 0, "ramp_begin", self.ramp_begin, "must be ≥ 0")
        require(
            self.ramp_end >= self.ramp_begin, "ramp_end", self.ramp_end, f"must be ≥ ramp_begin={self.ramp_begin:g}"
        )

    def extent(self) -> tuple[float, float]:
        return min(self.start, self.end), max(self.start, self.end)

    def progress(self, t: float) -> float:
        """0 before ramp_begin, 1 after ramp_end, linear between."""
        if self.ramp_end <= self.ramp_begin:
            return 1.0 if t >= self.ramp_begin else 0.0
        return min(max((t - self.ramp_begin) / (self.ramp_end - self.ramp_begin), 0.0), 1.0)

    def at(self, t: float) -> float:
        return self.start + (self.end - self.start) * self.progress(t)


@dataclass
class CosineAlpha(LinearAlpha):
    def at(self, t: float) -> float:
        # half-cosine ease from start to end: slow at both ends of the ramp
        return self.start + (self.end - self.start) * 0.5 * (1.0 - math.cos(math.pi * self.progress(t)))


@dataclass
class StepAlpha(AlphaSchedule):
    points: list = field(default_factory=list)  # [[position, value], ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        pairs = len(self.points) > 0 and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in self.points)
        require(pairs, "points", self.points, "a non-empty list of [position, value] pairs")

    def extent(self) -> tuple[float, float]:
        values = [0.0] + [float(v) for _, v in self.points]  # α is 0 before the first point
        return min(values), max(values)

    def at(self, t: float) -> float:
        value = 0.0
        for position, point_value in sorted(self.points, key=lambda p: p[0]):
            if t >= position:
                value = point_value
        return float(value)
