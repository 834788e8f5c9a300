"""attention=sigmoid: sigmoid(c·QKᵀ + b)·V with b = −log N, N the (real) keys; explicit path only."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import check

from attnexp.errors import ConfigError
from attnexp.layers.sigmoid import SigmoidAttention


def reference(x: torch.Tensor, layer: SigmoidAttention, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The formula per example and head, written out (no attnexp code)."""
    B, N, D = x.shape
    h, d = layer.num_heads, layer.head_dim
    q, k, v = (x @ layer.qkv.weight.T).split(h * d, dim=-1)
    out = torch.zeros(B, N, h * d, dtype=x.dtype)
    for b in range(B):
        real = torch.arange(N) if mask is None else mask[b].nonzero().squeeze(1)
        bias = -math.log(len(real))
        for i in range(h):
            cols = slice(i * d, (i + 1) * d)
            weights = torch.sigmoid(q[b, :, cols] @ k[b, real, cols].T * d**-0.5 + bias)  # (N, real keys)
            out[b, :, cols] = weights @ v[b, real, cols]
    return out @ layer.proj.weight.T + layer.proj.bias


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return SigmoidAttention(dim=12, num_heads=3).double().eval()


@pytest.mark.numeric
def test_matches_the_formula(layer):
    x = torch.randn(2, 7, 12, dtype=torch.double)
    # float64, width 12 and 7 tokens: dot products of ≤ 12 terms and a sigmoid on values ≤ 10 keep two
    # kernels within 1e-14
    torch.testing.assert_close(layer(x), reference(x, layer), rtol=1e-10, atol=1e-12)


@pytest.mark.numeric
def test_a_mask_counts_only_real_keys_and_padding_has_no_influence(layer):
    x = torch.randn(2, 7, 12, dtype=torch.double)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    out = layer(x, attn_mask=mask)
    # float64, as above: within 1e-14 on any CPU
    torch.testing.assert_close(out, reference(x, layer, mask), rtol=1e-10, atol=1e-12)
    x2 = x.clone()
    x2[1, 4:] = torch.randn(3, 12, dtype=torch.double)  # new values at the padded positions
    # the same kernels on the same real tokens; masked scores weigh exactly 0, so only a reordered sum of
    # exact zeros could differ: within 1e-14
    torch.testing.assert_close(layer(x2, attn_mask=mask)[1, :4], out[1, :4], rtol=1e-12, atol=1e-12)


@pytest.mark.numeric
def test_equal_scores_weigh_every_key_about_one_over_n(layer):
    q = k = torch.zeros(1, 3, 9, 4, dtype=torch.double)
    weights = layer.attention_maps(q, k)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / (1 + 9)))  # sigmoid(−log 9) = 1/10


def test_runs_on_the_explicit_path_and_refuses_sdpa_at_start_up():
    assert not SigmoidAttention(dim=8, num_heads=2).fused
    with pytest.raises(ConfigError) as err:
        check("model=cct2", "data=fake", "attention=sigmoid", "attention.impl=sdpa")
    assert err.value.key == "attention.impl" and "no fused kernel" in str(err.value)
