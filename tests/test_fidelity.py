"""The official recipe, element by element (docs/fidelity.md names these tests row by row).

Official values are written here as the official script states them
(SHI-Labs/Compact-Transformers examples/main.py and src/); nothing here calls
the official code.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY, compose, run_in
from tolerance import U32, gamma, within

import attnexp

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def test_official_recipe_is_one_switch():
    """recipe=official: no autocast, matmuls at "highest", the official policy, eval batch 128,
    best on test, the evaluation loss smoothed too. recipe=fast differs only in those."""
    fast, official = compose("model=cct2"), compose("model=cct2", "recipe=official")
    assert (official.trainer.precision, official.compute.matmul_precision) == ("32-true", "highest")
    assert (fast.trainer.precision, fast.compute.matmul_precision) == ("auto", "high")
    assert (official.data.augment.autoaugment, fast.data.augment.autoaugment) == ("official", "cifar10")
    assert official.data.eval_batch_size == fast.data.eval_batch_size == 128 == official.data.batch_size
    assert official.data.val_split == 0.0  # "best" = best test top-1 over the epochs, as the script prints
    assert (official.recipe.smooth_eval_loss, fast.recipe.smooth_eval_loss) == (True, False)
    changed = {k for k in ("trainer", "compute", "recipe", "data") if official[k] != fast[k]}
    assert changed == {"trainer", "compute", "recipe", "data"}
    for key in ("optimizer", "scheduler", "model", "label_smoothing", "seed"):
        assert official[key] == fast[key], key


def test_optimizer_is_adamw_with_torch_defaults_on_every_parameter():
    from hydra.utils import instantiate

    from attnexp.train.module import ClassifierModule

    cfg = compose("model=cct2")
    module = ClassifierModule(attnexp.build_model(["model=cct2"]), optimizer=instantiate(cfg.optimizer))
    optimizer = module.configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW
    (group,) = optimizer.param_groups  # weight decay on all parameters (norms and biases too)
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (5e-4, 3e-2, (0.9, 0.999), 1e-8)
    assert sum(p.numel() for p in group["params"]) == sum(p.numel() for p in module.model.parameters())


@pytest.mark.numeric
@pytest.mark.parametrize("recipe,eval_smoothing", [("fast", 0.0), ("official", 0.1)])
def test_label_smoothing_on_the_train_loss_and_on_the_eval_loss_by_recipe(recipe, eval_smoothing):
    from attnexp.train.module import build_module

    cfg = compose("model=cct2", "data=fake", f"recipe={recipe}")
    module = build_module(cfg, attnexp.build_model(["model=cct2", "data=fake"]))
    logits, labels = torch.randn(6, 10), torch.arange(6)

    class Known(torch.nn.Module):  # the loss alone, on known logits
        def forward(self, x):
            return logits

    module.model = Known()
    for stage, smoothing in (("train", 0.1), ("val", eval_smoothing)):
        loss = module.shared_step((torch.zeros(6, 3, 32, 32), labels), stage)
        log_p = logits.double().log_softmax(-1)  # the formula in float64
        expected = -((1 - smoothing) * log_p[range(6), labels] + smoothing * log_p.mean(-1)).mean()
        # the module's float32 loss: each log-probability x − max − log Σ exp is within (K + 2)·U32·
        # (|x − max| + log K) of exact (K = 10 terms), and the weighted mean of 6·K of them adds γ₆₀·|L|
        spread = (logits.max() - logits.min()).item()
        bound = 12 * U32 * (spread + math.log(10)) + gamma(60) * expected.item()
        within(loss.item(), expected.item(), bound, tight=1e-6 * expected.item(), what=f"{stage} loss")


def test_data_pipeline_constants():
    """Crop 32 with zero padding 4, flip with p 0.5, CIFAR mean/std, batch 128 both ways, 200 epochs, warmup 5."""
    cfg = compose("model=cct2")
    assert (cfg.data.augment.padding, cfg.data.augment.flip) == (4, True)
    assert list(cfg.data.mean) == CIFAR_MEAN and list(cfg.data.std) == CIFAR_STD
    assert (cfg.data.batch_size, cfg.data.eval_batch_size) == (128, 128)
    assert (cfg.trainer.max_epochs, cfg.scheduler.warmup_epochs, cfg.label_smoothing) == (200, 5, 0.1)
    from attnexp.data.augment import random_crop

    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), generator=g, dtype=torch.uint8)  # no 0 inside: unique windows
    cropped = random_crop(images, 4, g)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))  # zero fill
    offsets = []
    for out, source in zip(cropped, padded):  # each crop is one 32×32 window of its zero-padded image
        (hit,) = [(y, x) for y in range(9) for x in range(9) if torch.equal(source[:, y : y + 32, x : x + 32], out)]
        offsets.append(hit)
    assert len(set(offsets)) > 30  # and the windows vary (64 draws over 81 offsets)
    from attnexp.data.augment import BatchAugment

    ramp = torch.arange(32, dtype=torch.uint8).expand(2000, 3, 32, 32).contiguous()  # left ≠ right
    out = BatchAugment(None, padding=0, flip=True)(ramp, torch.Generator().manual_seed(1))
    flipped = (out == ramp.flip(-1)).flatten(1).all(1).double().mean().item()
    assert abs(flipped - 0.5) < 5 * math.sqrt(0.25 / 2000)  # p = 0.5, within 5 standard errors


@pytest.mark.numeric
def test_initialisation_drop_path_and_positional_table_follow_the_official_model():
    """Linear: trunc-normal std 0.02, zero bias; LayerNorm 1/0; tokenizer convs Kaiming-normal;
    the learnable positional table trunc-normal std 0.2; drop-path rates linspace(0, 0.1, depth).

    The stds are sample stds of n seeded draws, and a CPU's kernels choose the normal generator's
    stream (under ATEN_CPU_CAPABILITY=default another): each tolerance is ≥ 11 standard errors of
    a sample std, σ/√(2n) — n = 3.67M linear weights (54), 6,912 conv weights (11.8), 65,536 table
    entries (18) — so any stream passes but for odds below 1e-27."""
    torch.manual_seed(0)
    model = attnexp.build_model(["model=cct7"])
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)  # truncated at ±2 (absolute): no effect at σ 0.02
    assert all(m.bias is None or not m.bias.any() for m in linears)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(m.weight.eq(1).all() and not m.bias.any() for m in norms)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)  # kaiming_normal_
    table = model.classifier.positional_emb
    assert table.requires_grad and table.std().item() == pytest.approx(0.2, rel=0.05)
    rates = [block.drop_path.p for block in model.classifier.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 7).tolist())


def test_a_few_steps_with_the_official_recipe_record_it(tmp_path):
    """recipe=official trains on the CPU; metrics.json records the recipe and its numerics (on the CPU
    recipe=fast's too: what a GPU job is given is test_on_a_gpu_the_recipe_sets_the_precision_...)."""
    metrics = run_in(tmp_path, "recipe=official", *TINY, "model=cct2")
    assert metrics["status"] == "done" and metrics["recipe"] == "official"
    assert metrics["numerics"]["precision"] == "32-true"
    assert metrics["numerics"]["matmul_precision"] == "highest"
    assert json.loads((tmp_path / "metrics.json").read_text())["numerics"] == metrics["numerics"]


@pytest.mark.parametrize(
    "recipe,precision,matmul", [("official", "32-true", "highest"), ("fast", "bf16-mixed", "high")]
)
def test_on_a_gpu_the_recipe_sets_the_precision_and_the_matmul_precision(recipe, precision, matmul, monkeypatch):
    """What a GPU job is given (on the CPU both recipes train in float32 at torch's default "highest"):
    the Trainer's precision and torch's float32 matmul precision, as the job's factories set them."""
    from attnexp.assemble import objects

    cfg = compose("model=cct2", f"recipe={recipe}")
    monkeypatch.setattr(objects, "on_gpu", lambda cfg: True)
    matmul_set = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", matmul_set.append)  # recorded, not applied
    objects.seed_and_threads(cfg)
    trainer_args, real_instantiate = {}, objects.instantiate

    def instantiate(node, **kwargs):  # the Trainer's arguments, without building a GPU Trainer
        if "precision" not in kwargs:
            return real_instantiate(node, **kwargs)
        trainer_args.update(kwargs)
        raise StopIteration

    monkeypatch.setattr(objects, "instantiate", instantiate)
    with pytest.raises(StopIteration):
        objects.make_trainer(cfg, [], logger=False)
    assert (trainer_args["precision"], trainer_args["accelerator"], matmul_set) == (precision, "gpu", [matmul])


def test_cfg_job_shows_the_official_settings(capsys):
    from attnexp.cli import main

    main(["model=cct2", "recipe=official", "--cfg", "job", "--resolve"])
    shown = capsys.readouterr().out
    for line in ("precision: 32-true", "matmul_precision: highest", "autoaugment: official", "eval_batch_size: 128"):
        assert line in shown, line
