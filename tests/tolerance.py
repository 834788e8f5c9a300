"""Float tolerances that hold on any x86-64 CPU, each derived from what is compared.

One computation gives results that differ in their last bits between CPUs: ATen picks AVX-512, AVX2
or plain kernels (`ATEN_CPU_CAPABILITY`), oneDNN its ISA (`ONEDNN_MAX_CPU_ISA`), the BLAS its own
code, and a reduction's order follows the thread count. So a tolerance is never "what passed here":
- exact (`torch.equal`) where both sides are the same computation on the same machine;
- a bound derived from what is compared (the unit roundoffs below, Higham's γ_n for sums and dot
  products), written beside the comparison;
- or measured on the machine the test runs on (a float64 twin of a float32 computation gives each
  side's own rounding error, and two float32 paths may differ by at most the sum of theirs).

`within` asserts a bound and prints how many elements needed it rather than a tight tolerance, and
the margin (largest difference / bound): `pytest -m numeric -s` shows every margin.
"""

from __future__ import annotations

import torch

U32 = 2.0**-24  # float32's unit roundoff: |fl(x) − x| ≤ U32·|x|
U64 = 2.0**-53
U_BF16 = 2.0**-8


def gamma(n: int, u: float = U32) -> float:
    """Higham's γ_n = n·u / (1 − n·u): a sum or dot product of n terms, in any order, is within
    γ_n · Σ|terms| of the exact one (Accuracy and Stability of Numerical Algorithms, §3.1)."""
    assert n * u < 1
    return n * u / (1 - n * u)


def within(actual, expected, bound, tight: float = 0.0, what: str = "") -> float:
    """|actual − expected| ≤ bound elementwise (bound: a number or a tensor broadcast to actual).
    Prints how many elements differ by more than `tight` (the tolerance one machine would have
    accepted) and the margin, max |Δ| / bound; returns the margin."""
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    bound = torch.as_tensor(bound, dtype=torch.float64).expand_as(actual)
    diff = (actual - expected).abs()
    assert torch.isfinite(diff).all(), f"{what}: non-finite values"
    over = diff > bound
    margin = float((diff / bound.clamp_min(torch.finfo(torch.float64).tiny)).max()) if diff.numel() else 0.0
    print(
        f"tolerance {what}: max |Δ| {float(diff.max()) if diff.numel() else 0:.3g}, margin {margin:.3g} of the "
        f"derived bound, {int((diff > tight).sum())} of {diff.numel()} elements beyond the tight {tight:g}"
    )
    assert not over.any(), (
        f"{what}: {int(over.sum())} of {diff.numel()} elements beyond the derived bound "
        f"(max |Δ| {float(diff.max()):.3g}, bound there {float(bound[over].min()):.3g})"
    )
    return margin


def rounding_error(float32_out: torch.Tensor, float64_out: torch.Tensor) -> torch.Tensor:
    """Per-element rounding error of a float32 computation, measured against its float64 twin on
    this machine (the same module and input in double precision)."""
    return (float32_out.double() - float64_out).abs()
