"""Comparing a variant with its baseline (torch-free): which group is whose baseline, the statistics
of a run's curve, the paired and Welch intervals the report shows, Stein's two-stage rule that sizes
an adaptive sweep, and the simultaneous band of diff.png.

Runs that differ only in the variant and share a seed share their initial weights (when the variant
adds no parameters), their batches, augmentation draws and dropout seeds: their difference is a
paired measurement, and its interval is built from the per-seed differences.

Stein's procedure (sweep.seeds=auto): the pilot's usable paired differences give s₀ (usable pairs − 1
degrees of freedom); N = min(max_seeds, max(pilot, ⌈(t · s₀ / precision)²⌉)) usable pairs; the
interval on the first N usable differences in seed order is mean ± t · s₀ / √N, t the 97.5 % quantile
with the pilot's degrees of freedom. Its half-width is ≤ precision when N usable pairs were reached
and N was not capped, and it covers 95 % averaged over the pilot's outcomes: N depends on s₀.

Every interval takes `k`, the size of a family of comparisons: Bonferroni's t at 1 − 0.05 / (2k)
(k = 1: the ordinary 95 % interval). Differences whose range is below NO_SPREAD have no interval.
The planning and interval functions take numpy arrays too (tests/test_stein.py simulates them)."""

from __future__ import annotations

import math
from statistics import mean, stdev

import numpy as np

CONFIDENCE = 0.95
NO_SPREAD = 1e-4  # points: float32 accuracies that are "equal" differ by less (a 3-image lead on 10,000 images: 8e-6)
SIMULTANEOUS_MIN_PAIRS = 6  # fewer: at most 32 distinct sign flips, too few for a 95 % quantile
ALL_FLIPS_UP_TO, RANDOM_FLIPS = 12, 4096


def t_quantile(df, k=1):
    """The two-sided CONFIDENCE quantile of Student's t with `df` degrees of freedom, Bonferroni over
    a family of k comparisons (k = 1: none)."""
    from scipy.stats import t

    return t.ppf(1 - (1 - CONFIDENCE) / (2 * np.asarray(k)), df)


def no_spread(diffs) -> bool:
    """Differences whose range is below NO_SPREAD points: equal but for float32 rounding."""
    return len(diffs) > 0 and max(diffs) - min(diffs) < NO_SPREAD


def paired_interval(diffs: list[float], k: int = 1) -> tuple[float, float, float]:
    """mean of the per-seed differences and its t-interval (n − 1 degrees of freedom); NaN bounds
    for fewer than two pairs or no spread."""
    d = mean(diffs)
    if len(diffs) < 2 or no_spread(diffs):
        return d, math.nan, math.nan
    half = float(t_quantile(len(diffs) - 1, k)) * stdev(diffs) / math.sqrt(len(diffs))
    return d, d - half, d + half


def welch_interval(a: list[float], b: list[float], k: int = 1) -> tuple[float, float, float]:
    """mean(a) − mean(b) and its Welch-t interval (unequal variances); NaN bounds when either side
    has fewer than two runs or neither has any spread."""
    diff = mean(a) - mean(b)
    if len(a) < 2 or len(b) < 2 or (no_spread(a) and no_spread(b)):
        return diff, math.nan, math.nan
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # near-identical samples: scipy warns, the interval is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = ttest_ind(a, b, equal_var=False).confidence_interval(1 - (1 - CONFIDENCE) / k)
    return diff, float(ci.low), float(ci.high)


def stein_seeds(s0, pairs, precision: float, pilot: int, max_seeds: int, k=1):
    """Stein's second-stage size in usable pairs: N = min(max_seeds, max(pilot, ⌈(t · s₀ / precision)²⌉)),
    t with `pairs` − 1 degrees of freedom (`pairs`: the pilot's usable pairs), Bonferroni over k."""
    s0 = np.asarray(s0, dtype=float)
    if not np.isfinite(s0).all() or (s0 < 0).any():
        raise ValueError(f"s₀ = {s0}: a sample standard deviation is finite and ≥ 0")
    wanted = np.ceil((t_quantile(np.asarray(pairs) - 1, k) * s0 / precision) ** 2)
    return np.minimum(max_seeds, np.maximum(pilot, wanted)).astype(int)


def stein_half_width(s0, pairs, n, k=1):
    """The half-width of Stein's interval on n differences: t_{pairs−1} · s₀ / √n."""
    return t_quantile(np.asarray(pairs) - 1, k) * np.asarray(s0) / np.sqrt(n)


def stein_interval(diffs: list[float], s0: float, pairs: int, k: int = 1) -> tuple[float, float, float]:
    """Stein's interval around the mean of the differences; NaN bounds when they have no spread."""
    d = mean(diffs)
    if no_spread(diffs):
        return d, math.nan, math.nan
    half = float(stein_half_width(s0, pairs, len(diffs), k))
    return d, d - half, d + half


def simultaneous_band(diffs, rng_seed: int = 0) -> np.ndarray | None:
    """The critical value c of a 95 % band over all columns (epochs) of `diffs` (pairs × epochs) at
    once: mean ± c · sd / √n, c the 95 % quantile of max over epochs of |t| under sign flips of the
    centred differences (all 2ⁿ flips up to n = 12, else 4,096 random ones). None for fewer than
    SIMULTANEOUS_MIN_PAIRS pairs."""
    x = np.asarray(diffs, dtype=float)
    n = x.shape[0]
    if n < SIMULTANEOUS_MIN_PAIRS:
        return None
    if n <= ALL_FLIPS_UP_TO:
        flips = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    else:
        flips = np.random.default_rng(rng_seed).choice([-1, 1], size=(RANDOM_FLIPS, n))
    centred = x - x.mean(axis=0)
    flipped = flips[:, :, None] * centred[None]  # flips × pairs × epochs
    m, sd = flipped.mean(axis=1), flipped.std(axis=1, ddof=1)
    t = np.divide(np.abs(m) * math.sqrt(n), sd, out=np.zeros_like(m), where=sd > 0)
    return float(np.quantile(t.max(axis=1), CONFIDENCE, method="higher"))


def pick_baselines(items: list[dict], spec: dict, varying: list[str]) -> list[int | None]:
    """For each item (a group's values of the spec's keys and the varying keys), the index of its
    own baseline: the one matching every KEY=VALUE of the spec and agreeing with it on the other
    varying keys (a grid's own row); None when there is none. A key every baseline leaves unset
    (None: e.g. alpha.value beside seqpool=x) does not separate rows."""
    matching = [i for i, d in enumerate(items) if all(same_value(d.get(k), v) for k, v in spec.items())]
    others = [k for k in varying if k not in spec and any(not unset(items[b].get(k)) for b in matching)]
    return [
        next((b for b in matching if all(same_value(items[b].get(k), d.get(k)) for k in others)), None) for d in items
    ]


def baseline_choices(item: dict, spec: dict, varying: list[str], baselines: list[dict]) -> dict:
    """The choices an item's own baseline has (the spec, and the item's values of the other varying
    keys some baseline sets): what to name when it is missing."""
    keys = [k for k in varying if k not in spec and any(not unset(b.get(k)) for b in baselines)]
    return {k: str(v) for k, v in spec.items()} | {k: item.get(k) for k in keys}


def unset(value) -> bool:
    return value is None or same_value(value, None)


def same_value(a, b) -> bool:
    """Two spellings of one config value, as an override, a choice or a parsed YAML value give it:
    1e-3 and 0.001, true and True, null and None."""
    a, b = (str(x).lower().replace("none", "null") for x in (a, b))
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b
