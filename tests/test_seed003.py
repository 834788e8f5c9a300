"""Seed 003's backbones (CNN, ViT, DeepViT, Hybrid), its recipe, and the attention core.

Parameter counts are the seed's printed table (the *_seed003 presets) and the
issue's corrected defaults; the attention core is checked against torch's own
MultiheadAttention and scaled_dot_product_attention with copied weights; two
short real trainings on MNIST images check that the models learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import attnexp_main, check, compose, run_dirs
from torch import nn

from attnexp import build_model
from attnexp.assemble.objects import build_backbone
from attnexp.errors import ConfigError
from attnexp.layers.attention import Attention
from attnexp.layers.value_maps import Identity, Remix, TokenSoftmax
from attnexp.models.vit import PatchEmbedding

DATASETS = ("mnist", "cifar10", "cifar100")

# (MNIST, CIFAR-10, CIFAR-100) trainable parameters
SEED_TABLE = {  # printed by seed 003
    "cnn": (1_199_882, 1_626_442, 1_638_052),
    "vit_seed003": (1_614_866, 1_812_106, 1_823_716),
    "deepvit_seed003": (1_615_010, 1_812_250, 1_823_860),
    "hybrid_seed003": (1_591_652, 1_727_012, 1_727_012),
}
CORRECTED = {  # positional embedding for the real patches + 1, head sized to the data
    "vit": (1_213_970, 1_288_330, 1_299_940),
    "deepvit": (1_214_114, 1_288_474, 1_300_084),
    "hybrid": (1_506_826, 1_615_562, 1_627_172),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # 2 cores shared by several test processes: a second torch thread makes small ops 20× slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    "model,data,expected",
    [
        (model, data, counts[i])
        for table in (SEED_TABLE, CORRECTED)
        for model, counts in table.items()
        for i, data in enumerate(DATASETS)
    ],
)
def test_parameter_counts(model, data, expected):
    assert trainable(build_model([f"model={model}", f"data={data}"])) == expected


def test_experiment_two_vit_count_follows_the_vit_formula():
    """experiment=seed003_vit: dim 1024, depth 6, 16 heads × 64, MLP 2048, patch 7, told 784 px."""
    from omegaconf import OmegaConf

    cfg = compose("experiment=seed003_vit")
    assert OmegaConf.to_container(cfg.optimizer)["lr"] == 1e-4 and cfg.trainer.max_epochs == 14
    d, depth, inner, mlp, patch = 1024, 6, 16 * 64, 2048, 7
    embed = 2 * 49 + (49 * d + d) + 2 * d  # LayerNorm(49), Linear(49 → d), LayerNorm(d)
    table = ((784 // patch) ** 2 + 1) * d  # the positional table of the declared 784-pixel side
    block = 2 * d + d * 3 * inner + (inner * d + d) + 2 * d + (d * mlp + mlp) + (mlp * d + d)
    head = 2 * d + d * 10 + 10
    with torch.device("meta"):
        model = build_backbone(cfg)
    assert trainable(model) == embed + table + d + depth * block + head == 63_293_548


def test_hybrid_seed_count_is_the_100_class_head_on_every_dataset():
    # the preset holds the quirk; saying it on the command line changes nothing
    for data, expected in zip(DATASETS, SEED_TABLE["hybrid_seed003"]):
        model = build_model(["model=hybrid_seed003", f"data={data}", "model.num_classes=100"])
        assert model.vit.head.out_features == 100
        assert trainable(model) == expected


def test_pixel_count_quirk_only_lengthens_the_positional_table():
    seed = build_model(["model=vit_seed003", "data=mnist"])
    # the seed's literal number
    explicit = build_model(["model=vit", "data=mnist", "model.declared_image_size=784"])
    fixed = build_model(["model=vit", "data=mnist"])
    dim, patch = 128, 14
    assert seed.pos_embedding.shape == (1, (784 // patch) ** 2 + 1, dim)
    assert explicit.pos_embedding.shape == seed.pos_embedding.shape
    assert fixed.pos_embedding.shape == (1, (28 // patch) ** 2 + 1, dim)

    def shapes(m):
        return {k: v.shape for k, v in m.state_dict().items() if k != "pos_embedding"}

    assert shapes(seed) == shapes(fixed)
    hybrid = build_model(["model=hybrid_seed003", "data=cifar10"])  # 14×14 map, patch 7, told 196
    assert hybrid.vit.pos_embedding.shape == (1, (196 // 7) ** 2 + 1, dim)


@pytest.mark.numeric
def test_oversized_positional_table_beyond_the_used_rows_has_no_effect():
    model = build_model(["model=vit_seed003", "data=mnist"]).eval()
    x = torch.randn(2, 1, 28, 28)
    before = model(x)
    with torch.no_grad():
        model.pos_embedding[:, 5:] = 1e3  # 4 patches + class token are used
    torch.testing.assert_close(model(x), before)
    with torch.no_grad():
        # not a constant shift: every sublayer sees the stream through a LayerNorm
        model.pos_embedding[:, 4] += torch.randn(128)
    assert not torch.allclose(model(x), before)


@pytest.mark.numeric
def test_patch_embedding_cuts_row_major_patches_in_p1_p2_c_order():
    embed = PatchEmbedding(in_channels=3, patch_size=4, dim=8)
    embed.norm_in, embed.proj, embed.norm_out = nn.Identity(), nn.Identity(), nn.Identity()
    x = torch.randn(2, 3, 8, 12)
    tokens = embed(x)
    assert tokens.shape == (2, 2 * 3, 4 * 4 * 3)
    for r in range(2):
        for c in range(3):
            patch = x[:, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]  # (B, C, p1, p2)
            expected = patch.permute(0, 2, 3, 1).reshape(2, -1)  # (p1 p2 c)
            torch.testing.assert_close(tokens[:, 3 * r + c], expected)


# ---------------------------------------------------------------- the attention core


def _copy_into_mha(ours: Attention, dim: int, heads: int) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(dim, heads, bias=True, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)  # rows: q | k | v, each heads × head_dim
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    return ref.eval()


# In float64 (the formula is under test, not float32's rounding): each output is three dot products
# of ≤ 256 terms (qkv, scores·v, proj; γ₂₅₆ = 2.8e-14 relative to Σ|terms| ≤ 1e2 here) around a
# softmax (relative error ≤ (N + 3)·U64), so both sides are within 1e-11 of the exact value on any
# CPU's kernels; 1e-10 + 1e-9 relative leaves ten times that.
F64_ATTENTION = dict(atol=1e-10, rtol=1e-9)


@pytest.mark.numeric
@pytest.mark.parametrize("impl", ["explicit", "sdpa"])
def test_attention_matches_torch_multihead_attention(impl):
    torch.manual_seed(0)
    dim, heads, tokens = 48, 4, 7
    ours = Attention(dim, heads, qkv_bias=True, impl=impl).double().eval()
    ref = _copy_into_mha(ours, dim, heads).double()
    x = torch.randn(3, tokens, dim, dtype=torch.float64)
    expected, maps = ref(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(ours(x), expected, **F64_ATTENTION)
    q, k, _ = ours.qkv(x).reshape(3, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(ours.attention_maps(q, k), maps, **F64_ATTENTION)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    B, N, _ = t.shape
    return t.reshape(B, N, heads, -1).transpose(1, 2)  # (B, h, N, hd)


@pytest.mark.numeric
@pytest.mark.parametrize("impl", ["explicit", "sdpa"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_attention_matches_sdpa_with_the_seed_head_geometry(impl, scale):
    # the seed's ViT: 4 heads × 64 on a 128-wide stream, qkv without bias, out projection with bias
    torch.manual_seed(1)
    dim, heads, head_dim = 128, 4, 64
    ours = Attention(dim, heads, head_dim=head_dim, scale=scale, impl=impl).double().eval()
    assert ours.qkv.bias is None and ours.qkv.weight.shape == (3 * heads * head_dim, dim)
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    q, k, v = (_heads(t, heads) for t in (x @ ours.qkv.weight.T).split(heads * head_dim, dim=-1))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # None: 1/√head_dim
    merged = out.transpose(1, 2).reshape(2, 5, heads * head_dim)
    expected = merged @ ours.proj.weight.T + ours.proj.bias
    torch.testing.assert_close(ours(x), expected, **F64_ATTENTION)


@pytest.mark.numeric
def test_reattention_mixes_heads_then_normalises_over_heads():
    torch.manual_seed(2)
    dim, heads, head_dim, eps = 32, 4, 16, 1e-5
    ours = Attention(dim, heads, head_dim=head_dim, reattention=True).eval()
    with torch.no_grad():
        ours.reattn.reattn_norm.weight.uniform_(0.5, 1.5)
        ours.reattn.reattn_norm.bias.uniform_(-0.5, 0.5)
    ours.double()
    x = torch.randn(2, 6, dim, dtype=torch.float64)
    q, k, v = (_heads(t, heads) for t in (x @ ours.qkv.weight.T).split(heads * head_dim, dim=-1))
    maps = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5, dim=-1)  # (B, h, N, N)
    W = ours.reattn.reattn_weights
    mixed = torch.stack([sum(maps[:, h] * W[h, g] for h in range(heads)) for g in range(heads)], dim=1)
    mean, var = mixed.mean(1, keepdim=True), mixed.var(1, unbiased=False, keepdim=True)
    gamma, beta = ours.reattn.reattn_norm.weight, ours.reattn.reattn_norm.bias
    per_head = (slice(None), None, None)  # (h,) → (h, 1, 1)
    normed = (mixed - mean) / torch.sqrt(var + eps) * gamma[per_head] + beta[per_head]
    out = (normed @ v).transpose(1, 2).reshape(2, 6, heads * head_dim)
    torch.testing.assert_close(ours(x), ours.proj(out), **F64_ATTENTION)


# ---------------------------------------------------------------- attention choices on the backbones


def _blocks(model: nn.Module):
    return (model.vit if hasattr(model, "vit") else model).blocks


@pytest.mark.parametrize("model", ["vit", "deepvit", "hybrid"])
@pytest.mark.parametrize(
    "attention,value_map",
    [("softmax_v", TokenSoftmax), (("remix", "alpha=constant", "alpha.value=0.5"), Remix)],
)
def test_attention_choices_reach_every_block(model, attention, value_map):
    extra = attention if isinstance(attention, tuple) else (attention,)
    overrides = [f"model={model}", "data=mnist", f"attention={extra[0]}", *extra[1:]]
    torch.manual_seed(0)
    variant = build_model(overrides).eval()
    torch.manual_seed(0)
    plain = build_model([f"model={model}", "data=mnist"]).eval()
    blocks = _blocks(variant)
    assert len(blocks) == 6
    for block in blocks:
        assert isinstance(block.self_attn.value_map, value_map)
        assert (block.self_attn.reattn is not None) == (model == "deepvit")
        assert block.self_attn.head_dim == 64
    assert all(isinstance(b.self_attn.value_map, Identity) for b in _blocks(plain))
    x = torch.randn(3, 1, 28, 28)
    out = variant(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert not torch.allclose(out, plain(x))  # same weights, different attention


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model=cnn", "attention=softmax_v"], "attention"),
        (["model=deepvit", "attention.impl=sdpa"], "attention.impl"),
        (["model=vit_seed003", "model.declared_image_size=16"], "model.declared_image_size"),
        (["model=vit", "model.patches_per_side=3"], "model.patches_per_side"),
        (["model=hybrid", "model.declared_image_size=banana"], "model.declared_image_size"),
        (["model=cnn", "model.hidden_dropout=1.0"], "model.hidden_dropout"),
        (["model=vit", "model.emb_dropout=1.5"], "model.emb_dropout"),
    ],
)
def test_bad_seed003_settings_are_config_errors(overrides, key):
    with pytest.raises(ConfigError) as err:
        check(*overrides, "data=fake")
    assert err.value.key == key


def test_cnn_takes_the_default_attention_silently():
    assert compose("model=cnn", "data=mnist").model._target_ == "attnexp.models.cnn.CNN"


def test_anchor_file_holds_the_seed_table():
    import yaml

    path = Path(__file__).parent.parent / "conf" / "anchors" / "seed003.yaml"
    anchors = yaml.safe_load(path.read_text())
    rows = anchors["rows"]
    assert len(rows) == 12
    for row in rows:
        assert row["params"] == SEED_TABLE[row["seed_preset"]][DATASETS.index(row["data"])]
        for model in (row["model"], row["seed_preset"]):
            assert row["best_acc1"] in [e["best"] for e in anchors["published"][model]]


# ---------------------------------------------------------------- the recipe


@pytest.mark.parametrize("data", DATASETS)
def test_deep_dive_is_the_seed_recipe_on_every_dataset(data):
    cfg = compose("experiment=deep_dive", f"data={data}", "model=cnn")
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-4
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    assert (cfg.scheduler.step_size, cfg.scheduler.gamma) == (1, 0.7)
    assert (cfg.data.batch_size, cfg.data.eval_batch_size) == (64, 1000)
    assert cfg.trainer.max_epochs == 14 and cfg.label_smoothing == 0.0 and cfg.data.augment is None
    assert cfg.data.name == data
    if data == "mnist":
        assert (list(cfg.data.mean), list(cfg.data.std)) == ([0.1307], [0.3081])


# ---------------------------------------------------------------- real MNIST images


def _train_briefly(mnist_root, run_dir, model: str, steps: int) -> dict:
    from attnexp.train.modes import run_mode

    cfg = compose(
        f"paths.output_dir={run_dir}",
        "experiment=deep_dive",
        f"model={model}",
        "data=mnist",
        f"data.root={mnist_root}",
        "trainer=cpu",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={steps}",
        "trainer.limit_val_batches=2",
        "data.eval_batch_size=250",
        "optimizer.lr=1e-3",  # the recipe's 1e-4 needs epochs; a few dozen steps need more
        "compute.num_threads=1",  # 2 shared cores: one thread avoids oversubscription stalls
        "trainer.enable_progress_bar=false",
    )
    threads = torch.get_num_threads()
    try:
        return run_mode(cfg)
    finally:
        torch.set_num_threads(threads)  # run_mode applied compute.num_threads to the whole process


@pytest.mark.numeric
@pytest.mark.parametrize("model,steps", [("cnn", 30), ("vit", 60)])
def test_short_training_on_real_mnist_learns(mnist_root, tmp_path, model, steps):
    metrics = _train_briefly(mnist_root, tmp_path / model, model, steps)
    on_disk = json.loads((tmp_path / model / "metrics.json").read_text())
    assert on_disk["status"] == "done"
    assert on_disk["best_acc1"] == pytest.approx(metrics["best_acc1"])
    assert on_disk["best_acc1"] > 70, on_disk["history"]  # chance is 10 %
    assert on_disk["params"] == {"cnn": SEED_TABLE["cnn"][0], "vit": CORRECTED["vit"][0]}[model]
    assert on_disk["inference_ms_per_batch"] > 0 and on_disk["inference_batch_size"] == 250


def test_cli_runs_the_deep_dive_hybrid(mnist_root, workdir):
    result = attnexp_main(
        "experiment=deep_dive",
        "data=mnist",
        "model=hybrid",
        f"data.root={mnist_root}",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "data.eval_batch_size=100",
        "compute.num_threads=1",
        "trainer.enable_progress_bar=false",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = run_dirs(workdir / "outputs")
    assert "hybrid" in run_dir.name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["params"] == CORRECTED["hybrid"][0]
    assert metrics["choices"]["experiment"] == "deep_dive"
    assert metrics["inference_ms_per_batch"] > 0
