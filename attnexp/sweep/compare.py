"""Comparing a variant with its baseline (torch-free): which group is whose baseline, the paired
and Welch intervals the report shows, and Stein's two-stage rule that sizes an adaptive sweep.

Runs that differ only in the variant and share a seed share their initial weights (when the variant
adds no parameters), their batches, augmentation draws and dropout seeds: their difference is a
paired measurement, and its interval is built from the per-seed differences.

Stein's procedure (sweep.seeds=auto): the pilot's paired differences give s₀ (pairs − 1 degrees of
freedom); N = min(max_seeds, max(pilot, ⌈(t · s₀ / precision)²⌉)); the interval on the N differences
is mean ± t · s₀ / √N, t the 97.5 % quantile with the pilot's degrees of freedom. Its half-width is
≤ precision unless capped, and it covers 95 % averaged over the pilot's outcomes: N depends on s₀.
The planning and interval functions take numpy arrays too (tests/test_stein.py simulates them)."""

from __future__ import annotations

import math
from statistics import mean, stdev

import numpy as np

CONFIDENCE = 0.95


def t_quantile(df):
    """The two-sided CONFIDENCE quantile of Student's t with `df` degrees of freedom."""
    from scipy.stats import t

    return t.ppf((1 + CONFIDENCE) / 2, df)


def summarize(curve: dict[int, float], statistic: str, metric: str) -> float:
    """A run's `best` (max; min for a loss) or `final` (last epoch's) value of a metric's curve."""
    if statistic == "final":
        return curve[max(curve)]
    return (min if "loss" in metric else max)(curve.values())


def paired_interval(diffs: list[float]) -> tuple[float, float, float]:
    """mean of the per-seed differences and its t-interval (n − 1 degrees of freedom); NaN bounds
    for fewer than two pairs."""
    d = mean(diffs)
    if len(diffs) < 2:
        return d, math.nan, math.nan
    half = float(t_quantile(len(diffs) - 1)) * stdev(diffs) / math.sqrt(len(diffs))
    return d, d - half, d + half


def welch_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) − mean(b) and its Welch-t interval (unequal variances); NaN bounds when either side
    has fewer than two runs or neither has any spread."""
    diff = mean(a) - mean(b)
    if len(a) < 2 or len(b) < 2 or (stdev(a) == 0 and stdev(b) == 0):
        return diff, math.nan, math.nan
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # near-identical samples: scipy warns, the interval is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = ttest_ind(a, b, equal_var=False).confidence_interval(CONFIDENCE)
    return diff, float(ci.low), float(ci.high)


def stein_seeds(s0, pairs, precision: float, pilot: int, max_seeds: int):
    """Stein's second-stage size: N = min(max_seeds, max(pilot, ⌈(t_{pairs−1} · s₀ / precision)²⌉)),
    `pairs` the pilot's usable pairs (a failed run drops its pair; its seed is not replaced)."""
    wanted = np.ceil((t_quantile(np.asarray(pairs) - 1) * np.asarray(s0) / precision) ** 2)
    return np.minimum(max_seeds, np.maximum(pilot, wanted)).astype(int)


def stein_half_width(s0, pairs, n):
    """The half-width of Stein's interval on n differences: t_{pairs−1} · s₀ / √n."""
    return t_quantile(np.asarray(pairs) - 1) * np.asarray(s0) / np.sqrt(n)


def stein_interval(diffs: list[float], s0: float, pairs: int) -> tuple[float, float, float]:
    d = mean(diffs)
    half = float(stein_half_width(s0, pairs, len(diffs)))
    return d, d - half, d + half


def pick_baselines(items: list[dict], spec: dict, varying: list[str]) -> list[int | None]:
    """For each item (a group's values of the spec's keys and the varying keys), the index of its
    baseline: one matching every KEY=VALUE of the spec and, among those, the one agreeing with it on
    the other varying keys (a grid's own row); None when nothing matches."""
    matching = [i for i, d in enumerate(items) if all(same_value(d.get(k), v) for k, v in spec.items())]
    others = [k for k in varying if k not in spec]
    return [
        next(
            (b for b in matching if all(same_value(items[b].get(k), d.get(k)) for k in others)),
            matching[0] if matching else None,
        )
        for d in items
    ]


def same_value(a, b) -> bool:
    """Two spellings of one config value, as an override, a choice or a parsed YAML value give it:
    1e-3 and 0.001, true and True, null and None."""
    a, b = (str(x).lower().replace("none", "null") for x in (a, b))
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b
