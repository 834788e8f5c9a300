"""The GPU paths (`make gpu-check` runs these with a GPU visible): bf16 training, the device-resident
loader, fused AdamW, and a pack of 4 whose validation losses are within 3 % (relative) of its unpacked runs. Skipped
without CUDA (the tests hide GPUs unless CUDA_VISIBLE_DEVICES is set)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import attnexp_main
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible (set CUDA_VISIBLE_DEVICES)"),
]

# CIFAR-10's shapes on synthetic pixels, a few steps on the GPU in bf16
GPU_RUN = [
    "model=cct2",
    "data=fake",
    "data.train_size=1024",
    "data.test_size=512",
    "trainer=gpu",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "scheduler.warmup_epochs=1",
]


def test_bf16_training_run(tmp_path):
    proc = attnexp_main(*GPU_RUN, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["numerics"]["precision"] == "bf16-mixed"
    losses = torch.tensor([h["val_loss"] for h in metrics["history"]])
    assert len(losses) == 2 and torch.isfinite(losses).all()  # neither NaN nor ±inf


def test_device_resident_loader_and_fused_adamw():
    from attnexp.api import compose_config
    from attnexp.assemble.objects import build_data, build_model, make_optimizer

    cfg = compose_config(GPU_RUN)
    assert cfg.data.augment is None  # augmentation off: the CUDA generator's stream is not the CPU's
    loaders = {}
    for device in ("cuda", "cpu"):
        datamodule = build_data(cfg)  # loader=auto: resident on the device the trainer trains on
        datamodule.trainer = SimpleNamespace(
            strategy=SimpleNamespace(root_device=torch.device(device)), global_rank=0, world_size=1
        )
        datamodule.setup()
        assert datamodule.train.images.is_cuda == (device == "cuda")
        loaders[device] = datamodule.train_dataloader()
    for epoch, i in ((0, 0), (1, 3)):  # the same (seed, epoch, index): the same batch on either device
        assert torch.equal(loaders["cuda"].order(epoch).cpu(), loaders["cpu"].order(epoch))
        (images, labels), (cpu_images, cpu_labels) = (loaders[d].batch(epoch, i) for d in ("cuda", "cpu"))
        assert images.is_cuda and labels.is_cuda and images.dtype == torch.float32
        assert torch.equal(labels.cpu(), cpu_labels)
        torch.testing.assert_close(images.cpu(), cpu_images, rtol=0, atol=1e-6)
    images, labels = loaders["cuda"].batch(0, 0)
    model = build_model(cfg).cuda()
    optimizer = make_optimizer(cfg, on_gpu=True)(model.parameters())
    assert optimizer.defaults["fused"] is True
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_pack_of_fours_validation_losses_are_within_3_percent_of_its_unpacked_runs(tmp_path):
    # no dropout: an unpacked GPU run draws attention dropout inside the fused kernel
    run = [*GPU_RUN, "model.attn_drop=0", "model.drop_path=0", "seed=0,1,2,3"]
    for name, extra in (("unpacked", []), ("packed", ["sweep.pack=seed"])):
        proc = attnexp_main("-m", *run, *extra, f"hydra.sweep.dir={tmp_path / name}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]

    def val_loss(run_dir: Path) -> list[float]:
        events = EventAccumulator(str(run_dir / "tb"))
        events.Reload()
        return [e.value for e in sorted(events.Scalars("val/loss"), key=lambda e: e.step)]

    for seed in range(4):
        (alone,) = (tmp_path / "unpacked").rglob(f"seed_{seed}")
        (member,) = (tmp_path / "packed").rglob(f"seed_{seed}")
        assert val_loss(member) == pytest.approx(val_loss(alone), rel=3e-2)
