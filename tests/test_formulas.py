"""The building blocks against formulas written out here, not by calling the same code."""

from __future__ import annotations

import math

import pytest
import torch
from formulas import attention_formula, gelu_erf, layer_norm

import attnexp
from attnexp.schedules import warmup_cosine_factor

torch.manual_seed(0)


@pytest.fixture(scope="module")
def cct2():
    return attnexp.build_model(["model=cct2"]).double().eval()


@pytest.mark.numeric
def test_attention_matches_formula(cct2):
    attn = cct2.classifier.blocks[0].self_attn
    x = torch.randn(3, 64, 128, dtype=torch.float64)
    expected = attention_formula(x, attn.qkv.weight, attn.proj.weight, attn.proj.bias, heads=2)
    # float64: dot products of ≤ 128 terms (γ₁₂₈ = 1.4e-14) on values ≤ 10 around a softmax of 64: within
    # 1e-12 on any CPU's kernels
    torch.testing.assert_close(attn(x), expected, atol=1e-10, rtol=0)


@pytest.mark.numeric
def test_encoder_layer_matches_official_norm_placement(cct2):
    blk = cct2.classifier.blocks[1]
    a = blk.self_attn
    x = torch.randn(2, 64, 128, dtype=torch.float64)
    s = x + attention_formula(
        layer_norm(x, blk.pre_norm.weight, blk.pre_norm.bias), a.qkv.weight, a.proj.weight, a.proj.bias, 2
    )
    s = layer_norm(s, blk.norm1.weight, blk.norm1.bias)  # the stream itself is replaced
    expected = s + (gelu_erf(s @ blk.linear1.weight.T + blk.linear1.bias) @ blk.linear2.weight.T + blk.linear2.bias)
    # float64: attention, two norms and an MLP of dot products of ≤ 256 terms (γ₂₅₆ = 2.8e-14), values ≤ 1e2:
    # within 1e-11 on any CPU
    torch.testing.assert_close(blk(x), expected, atol=1e-10, rtol=0)


@pytest.mark.numeric
def test_seqpool_and_head_match_formula(cct2):
    clf = cct2.classifier
    x = torch.randn(2, 64, 128, dtype=torch.float64)
    normed = layer_norm(x, clf.norm.weight, clf.norm.bias)
    scores = normed @ clf.attention_pool.weight.T + clf.attention_pool.bias  # (B, N, 1)
    w = torch.exp(scores) / torch.exp(scores).sum(1, keepdim=True)
    pooled = (w * normed).sum(1)  # Σ_n w_n x_n
    expected = pooled @ clf.fc.weight.T + clf.fc.bias
    # float64: a norm, a softmax over 64 tokens and two dot products of ≤ 128 terms: within 1e-12
    torch.testing.assert_close(clf.fc(clf.pool(clf.norm(x))), expected, atol=1e-10, rtol=0)


def maxpool3s2p1(x):
    """MaxPool2d(3, stride 2, padding 1) by hand: pad with -inf, take the max of 3×3 windows."""
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-math.inf)
    H = (x.shape[-2] + 2 - 3) // 2 + 1
    W = (x.shape[-1] + 2 - 3) // 2 + 1
    out = torch.full(x.shape[:2] + (H, W), -math.inf, dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            out = torch.maximum(out, padded[..., i : i + 2 * H : 2, j : j + 2 * W : 2])
    return out


def conv2d_by_hand(x, w, stride, pad):
    """Cross-correlation as a sum over kernel offsets."""
    x = torch.nn.functional.pad(x, (pad,) * 4)
    k = w.shape[-1]
    H = (x.shape[-2] - k) // stride + 1
    W = (x.shape[-1] - k) // stride + 1
    out = torch.zeros(x.shape[0], w.shape[0], H, W, dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            patch = x[..., i : i + stride * H : stride, j : j + stride * W : stride]  # (B, Cin, H, W)
            out += torch.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out


@pytest.mark.numeric
@pytest.mark.parametrize("preset,stride,pad", [("cct2", 1, 1), ("cct14", 2, 3)])
def test_conv_tokenizer_matches_formula(preset, stride, pad):
    """k=3 → stride 1, pad 1; k=7 → stride 2, pad 3; conv → ReLU → maxpool, flattened row-major."""
    size = 32 if preset == "cct2" else 64
    model = attnexp.build_model([f"model={preset}", f"model.image_size={size}"]).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    h = x
    for layer in model.tokenizer.conv_layers:
        h = maxpool3s2p1(torch.relu(conv2d_by_hand(h, layer[0].weight, stride, pad)))
    expected = h.flatten(2).transpose(1, 2)
    # float64: two convolutions of ≤ 576 terms (γ₅₇₆ = 6.4e-14) on values ≤ 1e2 by the library's kernel
    # and by hand: within 1e-10 on any CPU
    torch.testing.assert_close(model.tokenizer(x), expected, atol=1e-9, rtol=0)


@pytest.mark.numeric
def test_patch_tokenizer_and_class_token():
    model = attnexp.build_model(["model=vitlite7"]).double().eval()
    conv = model.tokenizer.conv_layers[0][0]
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    tokens = model.tokenizer(x)
    # token (r, c) = W · patch(r, c) + b for 4×4 patches
    for r, c in [(0, 0), (2, 5), (7, 7)]:
        patch = x[0, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
        expected = (conv.weight * patch).sum(dim=(1, 2, 3)) + conv.bias
        torch.testing.assert_close(tokens[0, 8 * r + c], expected)
    assert model.classifier.positional_emb.shape[1] == 65  # 64 patches + the class token


def official_lr(epoch, base=5e-4, warmup=5, total=200):
    """main.py's adjust_learning_rate, written out."""
    if epoch < warmup:
        return base / (warmup - epoch)
    return base * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (total - warmup)))


def test_warmup_cosine_per_epoch_matches_official_rule():
    # through the real optimizer + scheduler the CLI builds, epoch by epoch
    from conftest import compose
    from hydra.utils import instantiate

    cfg = compose("model=cct2")
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = instantiate(cfg.optimizer)(params)
    scheduler = instantiate(cfg.scheduler)(optimizer)
    seen = []
    for epoch in range(200):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for epoch in [0, 1, 2, 3, 4, 5, 6, 7, 100, 150, 199]:
        # Python floats both (the scheduler multiplies the base rate by the factor): a few roundings, ≤ 1e-15
        assert seen[epoch] == pytest.approx(official_lr(epoch), rel=1e-12), epoch
    assert seen[:5] == pytest.approx([1e-4, 1.25e-4, 5e-4 / 3, 2.5e-4, 5e-4])
    # ½(1 + cos π) in float64: cos π = −1 + 1e-16 at worst
    assert warmup_cosine_factor(200, 5, 200) == pytest.approx(0.0, abs=1e-12)
