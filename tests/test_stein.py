"""The statistics of adaptive sweeps held to a test (torch-free, ~1 s): Stein's two-stage procedure,
as the sweep plans it and the report states it (attnexp.sweep.compare.stein_seeds and
stein_half_width, the production functions), applied to 10,000 simulated comparisons per cell over
precision/σ × max_seeds, σ the standard deviation of the paired differences.

Its interval must cover the true difference in ≥ 94 % of the comparisons of every cell (95 % exactly in
theory, under normal noise, averaged over the pilot's outcomes), and ≥ 91 % under heavy tails. The bar
is shown to catch wrong intervals, and the simpler stopping rules a user might reach for are shown to
fall short of it: those are written here, as what the production code must not do.

The coverage table prints even under capture:  .venv/bin/python -m pytest tests/test_stein.py
and so do the family-wise figures.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnexp.sweep.compare import paired_interval, stein_half_width, stein_interval, stein_seeds, t_quantile

PILOT = 5  # sweep.pilot's default
SIMS = 10_000  # comparisons per cell
RATIOS = (0.25, 0.5, 1, 2, 3)  # sweep.precision / σ
MAX_SEEDS = (10, 20)
DELTA = 0.7  # the true difference (in units of σ): any value, Stein's interval is translation-invariant
SEED = 20240

COLUMNS = {  # key: (header, what it is)
    "mean_n": ("mean N", "Stein: the mean number of seeds a variant ran"),
    "gauss": ("Stein", "Stein's interval, Gaussian differences (the production functions)"),
    "t3": ("Stein t3", "Stein's interval, differences t with 3 df scaled to unit sd"),
    "wrong_a": ("(a) N−1 df", "wrong: Stein's s₀ and N, but t with N − 1 degrees of freedom"),
    "wrong_b": ("(b) paired t", "wrong: the ordinary paired t-interval over all N seeds"),
    "rule_c": ("(c) +2 until narrow", "rule: from the pilot, two seeds at a time until the t-interval ≤ precision"),
    "rule_d": ("(d) until ≠ 0", "rule: from the pilot, two seeds at a time until the t-interval excludes 0 (δ = 0)"),
    "at_pilot": ("N = pilot", "share of Gaussian comparisons that stopped at the pilot"),
    "at_pilot_cov": ("Stein if N = pilot", "Stein's coverage among those alone (— under 200 of them)"),
}


def prefix_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation of each row's first n values, for n = 1 … M (column n − 1)."""
    n = np.arange(1, x.shape[1] + 1)
    s1, s2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
    mean = s1 / n
    var = (s2 - s1 * mean) / np.maximum(n - 1, 1)
    return mean, np.sqrt(np.maximum(var, 0.0))


def looks(max_seeds: int) -> np.ndarray:
    """The seed counts a sequential rule looks at: the pilot, then two more each time, capped."""
    return np.unique(np.minimum(np.arange(PILOT, max_seeds + 2, 2), max_seeds))


def sequential(mean: np.ndarray, sd: np.ndarray, max_seeds: int, stop) -> tuple[np.ndarray, np.ndarray]:
    """Centre and half-width of the ordinary t-interval (n − 1 df) where each row first meets
    `stop(centre, half)` among the looks, or at the last look (max_seeds)."""
    n = looks(max_seeds)
    centre, half = mean[:, n - 1], t_quantile(n - 1) * sd[:, n - 1] / np.sqrt(n)
    met = stop(centre, half)
    at = np.where(met.any(axis=1), met.argmax(axis=1), len(n) - 1)
    rows = np.arange(len(at))
    return centre[rows, at], half[rows, at]


def stein(x: np.ndarray, precision: float, max_seeds: int):
    """The production procedure on simulated differences x (rows: comparisons; columns: seeds 0, 1, …):
    s₀ from the pilot, N from stein_seeds, mean of the N differences ± stein_half_width."""
    mean, sd = prefix_stats(x)
    s0 = sd[:, PILOT - 1]
    n = stein_seeds(s0, PILOT, precision, PILOT, max_seeds)
    centre = mean[np.arange(len(n)), n - 1]
    return centre, stein_half_width(s0, PILOT, n), n, s0, mean, sd


def cell(rng: np.random.Generator, precision: float, max_seeds: int) -> dict:
    """Coverage (%) of each interval in one cell (σ = 1)."""
    z = rng.standard_normal((SIMS, max_seeds))
    t3 = rng.standard_t(3, (SIMS, max_seeds)) / math.sqrt(3)  # unit standard deviation
    rows = np.arange(SIMS)

    x = DELTA + z
    centre, half, n, s0, mean, sd = stein(x, precision, max_seeds)
    covered = np.abs(centre - DELTA) <= half
    row = {"mean_n": n.mean(), "gauss": covered.mean()}

    tc, th, *_ = stein(DELTA + t3, precision, max_seeds)
    row["t3"] = (np.abs(tc - DELTA) <= th).mean()

    half_a = t_quantile(n - 1) * s0 / np.sqrt(n)  # (a) the degrees of freedom of N, not of the pilot
    row["wrong_a"] = (np.abs(centre - DELTA) <= half_a).mean()
    half_b = t_quantile(n - 1) * sd[rows, n - 1] / np.sqrt(n)  # (b) as if N had been fixed in advance
    row["wrong_b"] = (np.abs(centre - DELTA) <= half_b).mean()

    c, h = sequential(mean, sd, max_seeds, lambda c, h: h <= precision)
    row["rule_c"] = (np.abs(c - DELTA) <= h).mean()
    mean0, sd0 = prefix_stats(z)  # a true difference of 0
    c, h = sequential(mean0, sd0, max_seeds, lambda c, h: np.abs(c) > h)
    row["rule_d"] = (np.abs(c) <= h).mean()

    # as many seeds as it takes, and no more: within precision unless capped, and one seed fewer would not be
    where = f"precision/σ {precision:g}, max_seeds {max_seeds}"
    assert ((half <= precision * (1 + 1e-12)) | (n == max_seeds)).all(), f"{where}: wider than precision, not capped"
    fewer = stein_half_width(s0, PILOT, np.maximum(n - 1, 1))[n > PILOT]
    assert (fewer > precision).all(), f"{where}: N − 1 seeds would have met the precision"
    assert ((n >= PILOT) & (n <= max_seeds)).all(), f"{where}: N outside [pilot, max_seeds]"

    stopped = n == PILOT
    row["at_pilot"] = stopped.mean()
    row["at_pilot_cov"] = covered[stopped].mean() if stopped.sum() >= 200 else math.nan
    row = {k: 100 * v if k != "mean_n" else v for k, v in row.items()}
    row["stopped_n"] = int(stopped.sum())

    # the report states the interval with stein_interval (lists, one comparison): the same numbers
    for i in range(20):
        d, low, high = stein_interval(x[i, : n[i]].tolist(), float(s0[i]), PILOT)
        assert (d, high - d) == pytest.approx((centre[i], half[i]), rel=1e-9, abs=1e-12)
        assert low == pytest.approx(d - (high - d))
    return row


@pytest.fixture(scope="module")
def table() -> dict[tuple[float, int], dict]:
    rng = np.random.default_rng(SEED)
    return {(r, m): cell(rng, r, m) for m in MAX_SEEDS for r in RATIOS}


def render(table: dict) -> str:
    keys = list(COLUMNS)
    heads = ["precision/σ", "max_seeds"] + [COLUMNS[k][0] for k in keys]
    lines = [
        f"coverage (%) of the true difference, {SIMS:,} simulated comparisons per cell, pilot {PILOT}, rng seed {SEED}",
        " | ".join(heads),
    ]
    for (r, m), row in table.items():
        cells = [f"{r:g}", str(m), f"{row['mean_n']:.1f}"] + [
            "—" if math.isnan(row[k]) else f"{row[k]:.1f}" for k in keys[1:]
        ]
        lines.append(" | ".join(c.rjust(len(h)) for c, h in zip(cells, heads)))
    lines += [f"  {COLUMNS[k][0]}: {COLUMNS[k][1]}" for k in keys]
    return "\n".join(lines)


def test_stein_covers_95_percent_under_normal_noise(table, capsys):
    with capsys.disabled():
        print("\n" + render(table))
    low = {cell: row["gauss"] for cell, row in table.items() if row["gauss"] < 94.0}
    assert not low, f"Stein's interval covers < 94 % in {low}"


def test_heavy_tails_cost_a_few_points(table):
    low = {cell: row["t3"] for cell, row in table.items() if row["t3"] < 91.0}
    assert not low, f"under t3 noise Stein's interval covers < 91 % in {low}"
    assert min(row["t3"] for row in table.values()) < 94.0  # a real cost: docs say so


@pytest.mark.parametrize("wrong", ["wrong_a", "wrong_b"])
def test_the_bar_catches_wrong_intervals(table, wrong):
    worst = min(table, key=lambda c: table[c][wrong])
    assert table[worst][wrong] < 94.0, f"{COLUMNS[wrong][1]}: {table[worst][wrong]:.1f} % at worst, passes the bar"


def test_simpler_rules_fall_short(table):
    worst_c = min(row["rule_c"] for row in table.values())
    assert worst_c < 94.0, f"adding seeds until the t-interval is narrow: {worst_c:.1f} % at worst"
    d = {cell: row["rule_d"] for cell, row in table.items()}
    assert max(d.values()) < 90.0, f"stopping once the interval excludes 0 covers a zero difference in {d}"
    assert min(d.values()) < 85.0  # the more looks (max_seeds 20), the worse


def test_a_variant_that_stopped_at_the_pilot_alone_covers_less(table):
    """95 % is averaged over the pilot's outcomes: a pilot that looked quiet (small s₀) stops early and
    its interval, taken alone, is too narrow more often."""
    rates = {cell: row["at_pilot_cov"] for cell, row in table.items() if not math.isnan(row["at_pilot_cov"])}
    assert min(rates.values()) < 90.0, rates


FAMILY_K = 5  # seed 000: five lines against the baseline x


def joint_coverage(rng: np.random.Generator, k: int, family: bool, precision: float = 1.0, max_seeds: int = 20):
    """Share (%) of SIMS simulated sweeps in which all k variants' intervals cover their true
    differences together: k variants and one shared baseline, normal noise per run (so the k paired
    differences at a seed share the baseline's draw), σ of a difference = 1. (Stein's interval as the
    sweep sizes it, the paired t on the pilot's 5 seeds), Bonferroni over k when `family`."""
    kk = k if family else 1
    base = rng.standard_normal((SIMS, 1, max_seeds)) / math.sqrt(2)
    runs = rng.standard_normal((SIMS, k, max_seeds)) / math.sqrt(2)
    delta = np.linspace(-1, 1, k)[None, :, None]
    x = (delta + runs - base).reshape(SIMS * k, max_seeds)
    mean, sd = prefix_stats(x)
    s0 = sd[:, PILOT - 1]
    n = stein_seeds(s0, PILOT, precision, PILOT, max_seeds, kk)
    centre = mean[np.arange(len(n)), n - 1]
    truth = np.repeat(delta.ravel()[None], SIMS, axis=0).ravel()
    stein_ok = np.abs(centre - truth) <= stein_half_width(s0, PILOT, n, kk)
    t_ok = np.abs(mean[:, PILOT - 1] - truth) <= t_quantile(PILOT - 1, kk) * s0 / math.sqrt(PILOT)
    for i in range(5):  # the report's paired_interval gives the same interval on the pilot's differences
        d, low, high = paired_interval(x[i, :PILOT].tolist(), kk)
        assert high - d == pytest.approx(t_quantile(PILOT - 1, kk) * s0[i] / math.sqrt(PILOT), rel=1e-9)
    return {
        "stein": 100 * stein_ok.reshape(SIMS, k).all(axis=1).mean(),
        "paired t": 100 * t_ok.reshape(SIMS, k).all(axis=1).mean(),
        "mean N": n.mean(),
    }


def test_family_wise_intervals_cover_all_five_together(capsys):
    """With --family / sweep.family=true (Bonferroni over k = 5), all five intervals against a shared
    baseline cover together in ≥ 94 % of 10,000 simulated sweeps (95 % − 4.5 binomial standard
    errors); without it, far less. Both figures print."""
    rng = np.random.default_rng(SEED + 29)
    per, fam = joint_coverage(rng, FAMILY_K, family=False), joint_coverage(rng, FAMILY_K, family=True)
    with capsys.disabled():
        print(
            f"\nall {FAMILY_K} intervals cover together, {SIMS:,} simulated sweeps (shared baseline, normal noise, "
            f"pilot {PILOT}, precision = σ, max_seeds 20, rng seed {SEED + 29}):\n"
            f"  per comparison: Stein {per['stein']:.1f} % (mean N {per['mean N']:.1f}), paired t on the pilot "
            f"{per['paired t']:.1f} %\n"
            f"  --family:       Stein {fam['stein']:.1f} % (mean N {fam['mean N']:.1f}), paired t on the pilot "
            f"{fam['paired t']:.1f} %"
        )
    assert fam["stein"] >= 94.0 and fam["paired t"] >= 94.0, fam
    assert per["stein"] < 90.0 and per["paired t"] < 90.0, per  # what --family is for
