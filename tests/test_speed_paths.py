"""The fast paths, checked on the CPU: batched AutoAugment against torchvision's, bf16 autocast,
sdpa against explicit attention under autocast, DDP sharding over two gloo processes, the
compile fallback, the fast-path switches and attnexp-bench's report."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import TINY, compose
from formulas import cct_forward_gflops
from torchvision.transforms import v2

import attnexp
from attnexp.data.augment import BatchAugment, TorchvisionAugment
from attnexp.data.autoaugment import POLICIES, SIGNED, BatchAutoAugment, Draw
from attnexp.layers.attention import Attention
from attnexp.layers.value_maps import Identity, Remix, Shift, TokenSoftmax

TV_POLICY = {
    "cifar10": v2.AutoAugmentPolicy.CIFAR10,
    "svhn": v2.AutoAugmentPolicy.SVHN,
    "imagenet": v2.AutoAugmentPolicy.IMAGENET,
}


def smooth_images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Photo-like uint8 images: upsampled low-frequency noise, a random contrast and offset per
    image, a little pixel noise (so autocontrast, equalize and solarize all have work to do)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 6, 6, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    scale = torch.rand(n, 1, 1, 1, generator=g) * 255
    offset = torch.rand(n, 1, 1, 1, generator=g) * (255 - scale)
    x = x * scale + offset + torch.randn(n, channels, size, size, generator=g) * 8
    return x.clamp(0, 255).to(torch.uint8)


def replay_torchvision_draws(policy: str, n: int) -> Draw:
    """The choices torchvision's AutoAugment makes for n images from the global RNG, in its order:
    a sub-policy, then per slot `rand() <= p` and, for a signed op that runs, `rand() <= 0.5`."""
    pairs = POLICIES[policy]
    chosen, applied, negative = [], [], []
    for _ in range(n):
        k = int(torch.randint(len(pairs), ()))
        runs, signs = [], []
        for op, p, _ in pairs[k]:
            run = bool(torch.rand(()) <= p)
            runs.append(run)
            signs.append(bool(run and op in SIGNED and torch.rand(()) <= 0.5))
        chosen.append(k)
        applied.append(runs)
        negative.append(signs)
    return Draw(torch.tensor(chosen), torch.tensor(applied), torch.tensor(negative))


# ------------------------------------------------------------------ batched AutoAugment


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_policy_tables_are_torchvisions(policy):
    reference = v2.AutoAugment(TV_POLICY[policy])._policies
    assert [tuple(tuple(op) for op in pair) for pair in reference] == [tuple(pair) for pair in POLICIES[policy]]


@pytest.mark.parametrize(
    "policy,channels,n", [("cifar10", 3, 300), ("svhn", 3, 200), ("imagenet", 3, 200), ("cifar10", 1, 150)]
)
def test_same_draws_give_torchvisions_images(policy, channels, n):
    """Replaying torchvision's own random choices through the batched policy gives its images, bit for bit."""
    images = smooth_images(n, channels, seed=1)
    reference = v2.AutoAugment(TV_POLICY[policy], fill=128)
    torch.manual_seed(123)
    expected = torch.stack([reference(img) for img in images])
    torch.manual_seed(123)
    draw = replay_torchvision_draws(policy, n)
    # every op of the policy really ran on some image, so each one was compared
    ran = {
        POLICIES[policy][k][s][0]
        for k, row in zip(draw.policy.tolist(), draw.applied.tolist())
        for s in (0, 1)
        if row[s]
    }
    assert ran == {op for pair in POLICIES[policy] for op, p, _ in pair if p > 0}
    for grouping in ("index", "mask"):
        out = BatchAutoAugment(policy, fill=128, grouping=grouping).apply(images, draw)
        differing = (out != expected).flatten(1).any(1)
        assert not differing.any(), (
            f"{grouping}: {int(differing.sum())} of {n} images differ (first: {int(differing.nonzero()[0])})"
        )


def test_draw_frequencies_follow_the_policy():
    """Sub-policies uniform, each slot's op with its probability, signs fair: 5-sigma binomial bounds."""
    n = 100_000
    augment = BatchAutoAugment("cifar10")
    draw = augment.draw(n, torch.Generator().manual_seed(0))
    table = v2.AutoAugment(TV_POLICY["cifar10"])._policies
    counts = torch.bincount(draw.policy, minlength=len(table)).double()
    p_sub = 1 / len(table)
    assert ((counts - n * p_sub).abs() <= 5 * math.sqrt(n * p_sub * (1 - p_sub))).all(), counts
    for k, pair in enumerate(table):
        rows = draw.applied[draw.policy == k].double()
        m = len(rows)
        for slot, (_, p, _) in enumerate(pair):
            bound = 5 * math.sqrt(max(p * (1 - p), 1e-12) / m) + 1e-12
            assert abs(rows[:, slot].mean().item() - p) <= bound, (k, slot, rows[:, slot].mean().item(), p)
    flips = draw.negative.double().mean().item()
    assert abs(flips - 0.5) <= 5 * math.sqrt(0.25 / (2 * n))


def test_recipe_statistics_match_torchvisions():
    """The whole train recipe (AutoAugment, crop with padding 4, flip), batched vs torchvision per
    image, on the same 600 images with independent random streams: per-image mean and spread,
    share of padding-black and of fill-grey pixels agree within 5 standard errors."""
    images = smooth_images(600, seed=2)
    batched = BatchAugment("cifar10", padding=4, flip=True)(images, torch.Generator().manual_seed(5))
    reference = TorchvisionAugment("cifar10", padding=4, flip=True)(images, torch.Generator().manual_seed(6))

    def stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = x.double().flatten(1)
        return {
            "mean": f.mean(1),
            "std": f.std(1),
            "zeros": (x == 0).flatten(1).double().mean(1),
            "grey": (x == 128).flatten(1).double().mean(1),
        }

    a, b = stats(batched), stats(reference)
    for key in a:
        se = math.sqrt(a[key].var().item() / len(images) + b[key].var().item() / len(images))
        assert abs(a[key].mean().item() - b[key].mean().item()) <= 5 * se, (
            key,
            a[key].mean().item(),
            b[key].mean().item(),
            se,
        )
    # and the augmentation did something: most images changed
    assert (batched != images).flatten(1).any(1).double().mean() > 0.9


def test_batched_policy_rejects_bad_input():
    with pytest.raises(ValueError, match="data.augment.autoaugment=cifar11"):
        BatchAutoAugment("cifar11")
    with pytest.raises(TypeError, match="uint8"):
        BatchAutoAugment("cifar10")(torch.zeros(2, 3, 8, 8), torch.Generator())


# ------------------------------------------------------------------ bf16 and attention kernels

ALPHA = 0.375
VALUE_MAPS = {
    "softmax": Identity,
    "softmax_v": TokenSoftmax,
    "remix": lambda: Remix(ALPHA),
    "shift": lambda: Shift(ALPHA),
}


def _attention_pair(attention: str):
    """cct7's attention (dim 256, 4 heads) with this choice's value map, as sdpa and as explicit,
    with the same weights, in eval mode."""
    torch.manual_seed(0)
    fused = Attention(256, 4, impl="sdpa", value_map=VALUE_MAPS[attention]()).eval()
    explicit = Attention(256, 4, impl="explicit", value_map=VALUE_MAPS[attention]()).eval()
    explicit.load_state_dict(fused.state_dict())
    assert fused.fused and not explicit.fused
    return fused, explicit


@pytest.mark.numeric
@pytest.mark.parametrize("attention", ["softmax", "softmax_v", "remix", "shift"])
def test_sdpa_matches_explicit_under_bf16_autocast(attention):
    fused, explicit = _attention_pair(attention)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 256, generator=g)
    probe = torch.randn(4, 64, 256, generator=g)  # loss = <out, probe>: gradients of order one for every map

    def run(attn, x, dtype):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = attn(xi)
        (out.double() * probe.double()).sum().backward()
        return out, xi.grad

    (out_f, grad_f), (out_e, grad_e) = run(fused, x, torch.bfloat16), run(explicit, x, torch.bfloat16)
    assert out_f.dtype == out_e.dtype == torch.bfloat16  # autocast really ran the projections in bf16
    exact, exact_grad = run(explicit.double(), x.double(), torch.float64)
    explicit.float()
    # bf16 keeps 8 significant bits (U = 2⁻⁸ = 3.9e-3): x, the weights and each projection's output are
    # rounded to it, so each side is within a few U·max|exact| of the float64 answer (5U, 8U for the
    # gradient, which passes the roundings twice). A CPU's kernels change only the float32 accumulation
    # beneath it (γ₂₅₆·U32 ≈ 1.5e-5 relative), three hundred times less: the bound holds on any CPU.
    for out, grad in ((out_f, grad_f), (out_e, grad_e)):
        torch.testing.assert_close(out.double(), exact, atol=2e-2 * exact.abs().max().item(), rtol=0)
        torch.testing.assert_close(grad.double(), exact_grad, atol=3e-2 * exact_grad.abs().max().item(), rtol=0)
    torch.testing.assert_close(out_f.float(), out_e.float(), atol=2e-2 * exact.abs().max().item(), rtol=0)
    # and the value map mattered: the two kernels agree far more closely than this choice and plain attention
    if attention != "softmax":
        plain, _ = _attention_pair("softmax")
        plain.load_state_dict(fused.state_dict())
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            choice_gap = (plain(x).float() - out_f.float()).abs().max().item()
        assert choice_gap > 5 * (out_f.float() - out_e.float()).abs().max().item()


def test_bf16_mixed_training_run_on_cpu(tmp_path):
    """trainer.precision=bf16-mixed trains on the CPU: the run finishes and its linears ran in bf16."""
    from conftest import run_in

    dtypes = []

    def record(module, args, output):
        if isinstance(module, torch.nn.Linear) and module.training:
            dtypes.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        metrics = run_in(tmp_path / "run", *TINY, "trainer.precision=bf16-mixed")
    finally:
        handle.remove()
    assert metrics["status"] == "done"
    assert math.isfinite(metrics["best_acc1"])
    assert dtypes and set(dtypes) == {torch.bfloat16}


# ------------------------------------------------------------------ DDP: two gloo processes


class SeenSamples(pl.Callback):
    """Writes a fingerprint of every training image its rank saw to <out_dir>/rank<r>.json
    (a module-level class: the spawned processes unpickle it by name)."""

    def __init__(self, out_dir: str):
        self.out_dir, self.seen = out_dir, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += [fingerprint(img) for img in batch[0]]

    def on_train_end(self, trainer, pl_module):
        with open(f"{self.out_dir}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"world_size": trainer.world_size, "seen": self.seen}, f)


def fingerprint(image: torch.Tensor) -> str:
    return hashlib.sha1(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def test_ddp_ranks_train_on_disjoint_shards(tmp_path):
    """trainer.devices=2 with ddp_spawn and gloo: the two ranks together see every training image
    of the epoch exactly once, as many as a single process sees."""
    from hydra.utils import instantiate

    from attnexp.assemble.objects import build_data, build_model, make_trainer
    from attnexp.train.module import ClassifierModule

    cfg = compose(
        *TINY,
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp_spawn",
        "trainer.limit_train_batches=null",
        "trainer.limit_val_batches=0",
        "compute.num_threads=1",
    )
    module = ClassifierModule(build_model(cfg), optimizer=instantiate(cfg.optimizer))
    trainer = make_trainer(cfg, [SeenSamples(str(tmp_path))], logger=False, root_dir=str(tmp_path))
    trainer.fit(module, datamodule=build_data(cfg))

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen0, seen1 = (r["seen"] for r in ranks)
    assert seen0 and seen1 and not set(seen0) & set(seen1)
    # one process, same data and seed: its epoch is the union of the two shards
    single = build_data(cfg)
    single.setup("fit")
    loader = single.train_dataloader()
    assert loader.world_size == 1
    everything = [fingerprint(img) for images, _ in loader for img in images]
    assert len(seen0) + len(seen1) == len(everything) == cfg.data.train_size
    assert sorted(seen0 + seen1) == sorted(everything)


@pytest.mark.numeric
def test_ddp_ranks_score_the_test_split_as_one_process_does(tmp_path):
    """Two gloo ranks on uneven, unpadded shards (33 images: 17 + 16): torchmetrics sums hits and
    counts over ranks, so top-1, top-5 and the mean loss equal one process's on the same data."""
    from hydra.utils import instantiate

    from attnexp.assemble.objects import build_data, build_model, make_trainer
    from attnexp.train.module import ClassifierModule

    def test_metrics(*overrides: str) -> dict:
        whole = ["data.test_size=33", "trainer.limit_val_batches=null"]  # every test image (TINY scores 1 batch)
        cfg = compose(*TINY, *whole, "data.eval_batch_size=8", "compute.num_threads=1", *overrides)
        torch.manual_seed(0)
        module = ClassifierModule(build_model(cfg), optimizer=instantiate(cfg.optimizer))
        return make_trainer(cfg, [], logger=False).test(module, datamodule=build_data(cfg), verbose=False)[0]

    one = test_metrics()
    two = test_metrics("trainer.devices=2", "trainer.strategy=ddp_spawn")
    # hits and counts are integers: top-1 and top-5 are one float32 division apart (≤ U32 = 6e-8);
    # the mean loss sums 33 positive losses in another order and batching (γ₃₃ = 2e-6 relative) over
    # logits that other batch shapes round differently (≤ 4e-6 relative): 1e-5
    assert two["test/acc1"] == pytest.approx(one["test/acc1"], abs=1e-6)
    assert two["test/acc5"] == pytest.approx(one["test/acc5"], abs=1e-6)
    assert two["test/loss"] == pytest.approx(one["test/loss"], rel=1e-5)


# ------------------------------------------------------------------ compile and the fast-path switches


def test_compile_failure_falls_back_to_eager_with_one_line(monkeypatch, capfd):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    torch.manual_seed(0)
    eager = attnexp.build_model(["model=cct2"]).eval()
    torch.manual_seed(0)
    compiled = attnexp.build_model(["model=cct2"], compile=True).eval()
    try:
        assert type(compiled) is type(eager)
        assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefix
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(compiled(x), eager(x))  # the fallback is the eager model itself
            compiled(x)  # stays eager: no second attempt, no second message
        lines = [line for line in capfd.readouterr().err.splitlines() if "torch.compile failed" in line]
        assert len(lines) == 1 and lines[0].startswith("attnexp: ") and lines[0].endswith("running eager")
    finally:
        torch._dynamo.reset()


@pytest.mark.numeric
def test_fast_path_switches():
    from attnexp.assemble.objects import channels_last_tokenizer, make_optimizer

    cfg = compose("model=cct2")
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert make_optimizer(cfg, on_gpu=True)(params).defaults["fused"] is True
    assert make_optimizer(cfg, on_gpu=False)(params).defaults["fused"] is None
    assert (
        make_optimizer(compose("model=cct2", "optimizer.fused=false"), on_gpu=True)(params).defaults["fused"] is False
    )

    torch.manual_seed(0)
    model = attnexp.build_model(["model=cct2"]).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        channels_last_tokenizer(model)
        got = model(x)
    conv = model.tokenizer.conv_layers[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    # one function in another memory layout, in float64: convolutions of ≤ 576 terms and two blocks
    # (γ₅₇₆ = 6.4e-14, values ≤ 1e2) keep the logits within 1e-10 on any CPU's kernels
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


@pytest.mark.slow
def test_compiled_training_run_from_the_cli(workdir):
    from conftest import run_cli, run_dirs

    result = run_cli(*TINY, "compute.compile=true", cwd=workdir, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.compile failed" not in result.stderr
    (run,) = run_dirs(workdir)
    assert json.loads((run / "metrics.json").read_text())["status"] == "done"


# ------------------------------------------------------------------ attnexp-bench


def test_bench_flop_counts_match_the_formula():
    from attnexp.tools.bench import count_flops

    for model, expected in (
        ("cct7", cct_forward_gflops(256, 7, 4, 2.0, [256])),
        ("cct2", cct_forward_gflops(128, 2, 2, 1.0, [64, 128])),
    ):
        counted = count_flops(model, "softmax", ["data=fake"])
        # FLOPs are counted, not computed by kernels; the formula counts the matmuls and convolutions and
        # leaves out norms, softmax and activations, < 0.1 % of a CCT's forward
        assert counted["forward_gflops"] == pytest.approx(expected, rel=1e-3), model
        # backward ≈ twice the forward, less the first conv's input gradient (the image needs none)
        assert 2.85 < counted["train_gflops"] / counted["forward_gflops"] < 3.0
    assert cct_forward_gflops(256, 7, 4, 2.0, [256]) == pytest.approx(2.36, abs=0.01)  # the "about 2.4"


def test_bench_writes_its_report(tmp_path, monkeypatch):
    from test_estimate import FactorySpy

    from attnexp.tools.bench import run

    spy = FactorySpy(monkeypatch)
    out = tmp_path / "bench.json"
    report = run([
        "--models", "cct2", "--attention", "softmax", "--variants", "eager,fast,bf16", "--batch-size", "4",
        "--repeats", "1", "--path-steps", "2", "--data-batches", "1", "--reference-batches", "1",
        "--compile", "none", "--out", str(out),
    ])  # fmt: skip
    saved = json.loads(out.read_text())
    entry = saved["models"]["cct2/softmax"]
    assert set(entry["steps"]) == {"eager", "fast", "bf16"}
    # each variant's module, then the training path's: built by build_module with the variant's knobs set
    # in its config, stepped by its own training_step inside make_trainer's Trainer, at its precision
    cfgs, modules = zip(*((args[0], module) for args, module in spy.built["build_module"]))
    assert [c.attention.impl for c in cfgs[:3]] == ["explicit", "sdpa", "sdpa"] and cfgs[0].optimizer.fused is False
    assert [str(c.trainer.precision) for c in cfgs] == ["32-true", "32-true", "bf16-mixed", "32-true"]
    assert all(spy.in_factory_trainers(m) for m in modules)
    assert [{s["bf16"] for s in spy.steps_of(m)} for m in modules] == [{False}, {False}, {True}, {False}]
    a = saved["args"]  # steps: warm-up, then per repeat a fresh fit's first step and the timed ones
    assert [len(spy.steps_of(m)) for m in modules[:3]] == [a["warmup"] + a["repeats"] * (1 + a["steps"])] * 3
    assert len(spy.steps_of(modules[3])) == 2 * a["repeats"] * (a["warmup"] + a["path_steps"])  # + the bare loop
    # against this file's own FLOP formula (not the bench's): a train step costs 2.85-3× a forward per image
    forward = cct_forward_gflops(128, 2, 2, 1.0, [64, 128])
    # FLOPs are counted, not computed by kernels; the formula counts the matmuls and convolutions and
    # leaves out norms, softmax and activations, < 0.1 % of a CCT's forward
    assert entry["flops"]["forward_gflops"] == pytest.approx(forward, rel=1e-3)
    for r in entry["steps"].values():
        assert r["img_per_s"] > 0 and 2.85 < r["tflops"] * 1e3 / r["img_per_s"] / forward < 3.0
        expected = 200 * (50_000 / r["img_per_s"] + 10_000 / entry["eval_img_per_s"])
        assert r["projected_200_epochs_s"] == pytest.approx(expected)
    assert entry["path"]["ratio"] > 0 and entry["path"]["steps"] == 2
    assert set(saved["data"]) == {"batched", "torchvision"}
    params = sum(p.numel() for p in attnexp.build_model(["model=cct2"]).parameters())
    assert entry["memory"]["params"] == params and entry["memory"]["weights_grads_adamw_bytes"] == 16 * params
    assert entry["memory"]["activation_bytes"] > 0
    assert report["machine"]["torch"] == torch.__version__


def test_gpu_shared_launcher_preset(monkeypatch):
    from attnexp.config.compose import compose as compose_with_hydra

    cfg = compose_with_hydra(["hydra/launcher=gpu_shared"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 4
    monkeypatch.setenv("ATTNEXP_JOBS_PER_GPU", "3")
    assert cfg.hydra.launcher.n_jobs == 3


@pytest.mark.slow
def test_gpu_shared_launcher_runs_a_sweep(workdir):
    """The preset runs jobs side by side (here 2 CPU jobs, each in its own loky process)."""
    from conftest import run_cli, run_dirs

    result = run_cli("-m", "hydra/launcher=gpu_shared", *TINY, "compute.num_threads=1", "seed=0,1", cwd=workdir,
                     env={"ATTNEXP_JOBS_PER_GPU": "2"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    runs = [r for r in run_dirs(workdir) if (r / "metrics.json").is_file()]
    assert len(runs) == 2
    assert all(json.loads((r / "metrics.json").read_text())["status"] == "done" for r in runs)


def test_bench_rejects_bad_choices_in_one_line(capsys):
    from attnexp.tools.bench import main

    assert main(["--models", "cct3"]) == 2
    assert main(["--variants", "eager,turbo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("attnexp-bench: error: model=cct3: unknown choice")
    assert err[1] == "attnexp-bench: error: --variants turbo: one of eager, sdpa, fast, compiled, bf16"
