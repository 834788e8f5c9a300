"""Attention choices, SeqPool lines and α schedules against their formulas (seed 000 / 001)."""

from __future__ import annotations

import math

import pytest
import torch
from formulas import SEQPOOL_FORMULAS, VALUE_FORMULAS, attention_formula, softmax_by_hand

import attnexp
from attnexp.layers.attention import Attention
from attnexp.schedules import ConstantAlpha, CosineAlpha, LinearAlpha, StepAlpha

ALPHA = 0.375  # exact in float32 (the α buffer is float32 until .double())
ATTENTIONS = ["softmax", "softmax_v", "remix", "shift"]


def build(*overrides):
    return attnexp.build_model(["model=cct7", "alpha=constant", f"alpha.value={ALPHA}", *overrides]).double().eval()


@pytest.mark.numeric
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_attention_choice_matches_formula(attention):
    attn = build(f"attention={attention}").classifier.blocks[0].self_attn  # 4 heads
    x = torch.randn(2, 17, 256, dtype=torch.float64)
    expected = attention_formula(
        x,
        attn.qkv.weight,
        attn.proj.weight,
        attn.proj.bias,
        heads=4,
        value=lambda v: VALUE_FORMULAS[attention](v, ALPHA),
    )
    # float64: dot products of ≤ 256 terms (γ₂₅₆ = 2.8e-14) on values ≤ 10 around softmaxes over 17 tokens:
    # within 1e-12 on any CPU's kernels
    torch.testing.assert_close(attn(x), expected, atol=1e-10, rtol=0)


@pytest.mark.numeric
def test_attention_scale_override():
    attn = build("attention=softmax_v", "attention.scale=0.5").classifier.blocks[0].self_attn
    x = torch.randn(1, 9, 256, dtype=torch.float64)
    expected = attention_formula(
        x, attn.qkv.weight, attn.proj.weight, attn.proj.bias, 4, value=lambda v: softmax_by_hand(v, 1), scale=0.5
    )
    # float64, as test_attention_choice_matches_formula: within 1e-12 on any CPU
    torch.testing.assert_close(attn(x), expected, atol=1e-10, rtol=0)


@pytest.mark.numeric
def test_softmax_t_columns_sum_to_one_over_tokens():
    from attnexp.layers.value_maps import TokenSoftmax

    v = torch.randn(2, 4, 33, 16)  # (B, heads, tokens, head_dim)
    out = TokenSoftmax()(v)
    torch.testing.assert_close(out.sum(dim=2), torch.ones(2, 4, 16))
    assert (out > 0).all()


def _outputs(*overrides, x):
    torch.manual_seed(0)
    model = attnexp.build_model(["model=cct2", *overrides]).double().eval()
    return model(x)


# float64: a CCT-2's logits are ≈ 30 roundings deep (2 convs of ≤ 576 terms, 2 blocks of dot products
# of ≤ 128 terms, softmaxes, norms; γ₅₇₆ = 6.4e-14) on values of magnitude ≤ 1e2, so two computations
# of one function agree within 1e-10 on any CPU's kernels; the limits below are exact in the formula.
F64_MODEL = dict(atol=1e-10, rtol=0)


@pytest.mark.numeric
def test_remix_and_shift_limits():
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    softmax = _outputs("attention=softmax", x=x)
    softmax_v = _outputs("attention=softmax_v", x=x)
    remix0 = _outputs("attention=remix", "alpha=constant", "alpha.value=0", x=x)
    remix1 = _outputs("attention=remix", "alpha=constant", "alpha.value=1", x=x)
    shift0 = _outputs("attention=shift", "alpha=constant", "alpha.value=0", x=x)
    torch.testing.assert_close(remix0, softmax, **F64_MODEL)
    torch.testing.assert_close(remix1, softmax_v, **F64_MODEL)
    torch.testing.assert_close(shift0, softmax, **F64_MODEL)


@pytest.mark.numeric
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_sdpa_and_explicit_paths_agree(attention):
    from attnexp.layers import value_maps

    maps = {
        "softmax": value_maps.Identity(),
        "softmax_v": value_maps.TokenSoftmax(),
        "remix": value_maps.Remix(ALPHA),
        "shift": value_maps.Shift(-1.5),
    }
    torch.manual_seed(1)
    fused = Attention(64, num_heads=4, impl="sdpa", value_map=maps[attention]).double().eval()
    explicit = Attention(64, num_heads=4, impl="explicit", value_map=maps[attention]).double().eval()
    explicit.load_state_dict(fused.state_dict())
    assert fused.fused and not explicit.fused
    # float64 (one function, two kernels): dot products of ≤ 64 terms around a softmax of 50, values ≤ 10:
    # both within 1e-12 of the exact output on any CPU
    x = torch.randn(4, 50, 64, dtype=torch.float64)
    torch.testing.assert_close(fused(x), explicit(x), atol=1e-11, rtol=0)


@pytest.mark.numeric
@pytest.mark.parametrize("seqpool", list(SEQPOOL_FORMULAS))
def test_seqpool_choice_matches_formula(seqpool):
    clf = build("model=cct2", f"seqpool={seqpool}").classifier
    x = torch.randn(3, 64, 128, dtype=torch.float64)  # normed encoder output
    scores = x @ clf.attention_pool.weight.T + clf.attention_pool.bias
    w = softmax_by_hand(scores, dim=1)  # (B, N, 1) over tokens
    expected = (w * SEQPOOL_FORMULAS[seqpool](x, ALPHA)).sum(dim=1)  # wᵀ·f(x)
    # float64: a softmax over the tokens and a weighted sum of ≤ 64 terms: within 1e-13
    torch.testing.assert_close(clf.pool(x), expected, atol=1e-10, rtol=0)


def test_attention_layers_limits_the_variant():
    model = build("attention=softmax_v", "attention.layers=[0,2]")
    kinds = [type(b.self_attn.value_map).__name__ for b in model.classifier.blocks]
    assert kinds == ["TokenSoftmax", "Identity", "TokenSoftmax"] + ["Identity"] * 4


# ---------------------------------------------------------------- α schedules


def test_constant_and_step_schedules():
    assert ConstantAlpha(value=-0.25)(step=123, steps_per_epoch=10) == -0.25
    s = StepAlpha(points=[[2, 0.5], [0, 0.1], [5, 1.0]])
    # unit epoch, 10 steps/epoch: before epoch 2 → 0.1, [2, 5) → 0.5, then 1.0
    assert [s(step, 10) for step in (0, 19, 20, 49, 50, 999)] == [0.1, 0.1, 0.5, 0.5, 1.0, 1.0]
    assert StepAlpha(points=[[1, 0.7]])(0, 10) == 0.0


def test_linear_and_cosine_schedules_in_epochs_and_steps():
    lin = LinearAlpha(start=0.0, end=1.0, ramp_begin=2, ramp_end=6, unit="epoch")
    for step, expected in [(0, 0.0), (20, 0.0), (25, 0.125), (40, 0.5), (60, 1.0), (90, 1.0)]:
        assert lin(step, 10) == pytest.approx(expected)
    cos = CosineAlpha(start=1.0, end=-1.0, ramp_begin=100, ramp_end=300, unit="step")
    for step in (0, 100, 150, 200, 250, 300, 400):
        t = min(max((step - 100) / 200, 0), 1)
        assert cos(step, 7) == pytest.approx(1.0 - 2.0 * 0.5 * (1 - math.cos(math.pi * t)))


def test_alpha_reaches_the_maps_each_step_and_is_logged(tmp_path):
    from conftest import run_in

    metrics = run_in(
        tmp_path,
        "debug=tiny",
        "model=cct2",
        "attention=remix",
        "alpha=linear",
        "alpha.unit=step",
        "alpha.ramp_begin=0",
        "alpha.ramp_end=4",
        "trainer.limit_train_batches=3",
    )
    assert metrics["status"] == "done"
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["alpha"] == pytest.approx(2 / 4)  # α at the last step (global step 2 of a 0→4 ramp)
    from tbparse import SummaryReader

    scalars = SummaryReader(str(tmp_path / "tb")).scalars
    alpha = scalars[scalars.tag == "alpha"].sort_values("step")["value"].tolist()
    assert alpha == pytest.approx([0.0, 0.25, 0.5])


def test_alpha_continues_where_it_was_after_resume(tmp_path):
    """Stop after epoch 1, resume to epoch 2: α keeps following the schedule, not restarting."""
    from conftest import run_in
    from tbparse import SummaryReader

    common = (
        "debug=tiny",
        "model=cct2",
        "seqpool=remix",
        "alpha=linear",
        "alpha.unit=step",
        "alpha.ramp_begin=0",
        "alpha.ramp_end=4",
    )
    assert run_in(tmp_path, *common, "trainer.max_epochs=1")["status"] == "done"
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["alpha"] == pytest.approx(0.25)
    metrics = run_in(tmp_path, *common, "trainer.max_epochs=2", f"ckpt_path={last}")
    assert metrics["status"] == "done" and metrics["epochs"] == 2
    scalars = SummaryReader(str(tmp_path / "tb")).scalars
    alpha = scalars[scalars.tag == "alpha"].sort_values("step")
    assert alpha["step"].tolist() == [0, 1, 2, 3]
    assert alpha["value"].tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75])
