"""Which one number a run contributes to a comparison (torch-free): `final`, `mean` or `best` of a
metric's curve, which split it is scored on, and when a statistic is refused.

With `data.val_split` = 0 the `val/*` tags are scored on the test split: `best` there is the maximum
over epochs of the test score, selected on the test split (optimistic; its bias can differ between
arms), so the default is `final`. With a held-out split (`data.val_split` > 0), `best` is the test
top-1 at the best validation epoch (metrics.json's test_acc1_at_best_val): top-1 only, and only for
runs that finished with a best checkpoint."""

from __future__ import annotations

import math
from statistics import mean

STATISTICS = ("final", "mean", "best")
HELD_OUT_BEST = "test_acc1_at_best_val"
TOP1 = "val/acc1"


def nonfinite_epoch(curve: dict[int, float]) -> int | None:
    """The first epoch whose value is NaN or ±inf; None when every value is finite."""
    return next((e for e in sorted(curve) if not math.isfinite(curve[e])), None)


def summarize(curve: dict[int, float], statistic: str, metric: str) -> float:
    """A finite curve's `final` (last epoch's value), `mean` (over its epochs: the normalised area
    under the learning curve) or `best` (max over its epochs; min for a loss)."""
    if (bad := nonfinite_epoch(curve)) is not None:
        raise ValueError(f"non-finite {metric} at epoch {bad}: out of the statistics")
    if statistic == "final":
        return curve[max(curve)]
    if statistic == "mean":
        return mean(curve.values())
    return (min if "loss" in metric else max)(curve.values())


def out_of_statistics(curve: dict[int, float] | None, metric: str) -> str:
    """Why a finished run's curve cannot enter the statistics of `metric` ('' when it can)."""
    if not curve:
        return f"no `{metric}` logged"
    bad = nonfinite_epoch(curve)
    return "" if bad is None else f"non-finite {metric} at epoch {bad}"


def value(curve: dict[int, float], metrics: dict, statistic: str, metric: str, held_out: bool) -> float | None:
    """A usable run's statistic (its curve finite); None where it has none (`best` of another metric
    than top-1 with a held-out split, or a run without a test score at its best validation epoch)."""
    if statistic == "best" and held_out:
        got = metrics.get(HELD_OUT_BEST) if metric == TOP1 else None
        return float(got) if got is not None and math.isfinite(got) else None
    return summarize(curve, statistic, metric)


def default(metric: str, held_out: bool) -> str:
    """The statistic that selects nothing on the test split: `best` (test at best validation) for
    top-1 with a held-out split, `final` otherwise."""
    return "best" if held_out and metric == TOP1 else "final"


def refusal(statistic: str, metric: str, held_out: bool) -> str | None:
    """Why `statistic` cannot be asked of `metric` (None: it can)."""
    if statistic == "best" and held_out and metric != TOP1:
        return f"with data.val_split > 0, best is {HELD_OUT_BEST}: top-1 ({TOP1}) only; use final or mean"
    return None


def split(metric: str, statistic: str, held_out: bool) -> str:
    """The split a statistic of `metric` is scored on."""
    if metric.startswith("train/"):
        return "train"
    if not metric.startswith("val/"):
        return "?"
    return "test" if not held_out or statistic == "best" else "validation"


def describe(statistic: str, metric: str, held_out: bool) -> str:
    """What the number is, in words (the report, sweep.json and the end-of-sweep summary say it)."""
    where = split(metric, statistic, held_out)
    if statistic == "best" and held_out:
        return f"best: test top-1 at the best validation epoch ({HELD_OUT_BEST})"
    if statistic == "best":
        extreme = "minimum" if "loss" in metric else "maximum"
        selected = "selected on the test split: optimistic" if where == "test" else f"{where} split"
        return f"best: the {extreme} over epochs of {metric} ({selected})"
    if statistic == "mean":
        return f"mean: {metric} averaged over the epochs ({where} split)"
    return f"final: the last epoch's {metric} ({where} split)"
