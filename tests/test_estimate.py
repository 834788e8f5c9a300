"""The dry run's estimate times the step a run trains: the module (or a pack's PackedModule) built by
the run's factories (attnexp.train.module, attnexp.pack.module), stepped by its own training_step inside
a Trainer that make_trainer built, under that Trainer's precision. (attnexp-bench's side: tests/test_speed_paths.py.)"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, attnexp_main, compose
from formulas import cct_forward_gflops

from attnexp.assemble import objects
from attnexp.pack import module as pack_module
from attnexp.pack.module import PackedModule
from attnexp.sweep.estimate import TIMED_STEPS
from attnexp.train import module as run_module
from attnexp.train.module import ClassifierModule

FACTORIES = {"build_module": run_module, "build_pack": pack_module, "make_trainer": objects}


class FactorySpy:
    """What the factories built (wrapped where the consumers look them up: their modules),
    and every training step of a module: which module, inside which Trainer, with CPU autocast
    on or off, on what input shape."""

    def __init__(self, monkeypatch):
        self.built: dict[str, list] = {name: [] for name in FACTORIES}
        self.steps: list[dict] = []
        for name, where in FACTORIES.items():
            monkeypatch.setattr(where, name, self._recording(name, getattr(where, name)))
        for cls in (ClassifierModule, PackedModule):
            monkeypatch.setattr(cls, "training_step", self._stepping(cls.training_step))

    def _recording(self, name, real):
        def factory(*args, **kwargs):
            out = real(*args, **kwargs)
            self.built[name].append((args, out))
            return out

        return factory

    def _stepping(self, real):
        def training_step(module, batch, batch_idx):
            autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            self.steps.append({"module": module, "trainer": module.trainer, "bf16": autocast, "shape": batch[0].shape})
            return real(module, batch, batch_idx)

        return training_step

    def made(self, name: str) -> list:
        return [out for _, out in self.built[name]]

    def steps_of(self, module) -> list[dict]:
        return [s for s in self.steps if s["module"] is module]

    def in_factory_trainers(self, module) -> bool:
        trainers = self.made("make_trainer")
        return all(any(s["trainer"] is t for t in trainers) for s in self.steps_of(module))


def dry_run(tmp_path, *overrides: str):
    # bf16-mixed on the CPU: the Trainer's precision is visible in every step it runs
    result = attnexp_main("-m", *TINY, "trainer.precision=bf16-mixed", *overrides, "sweep.dry_run=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "multirun").exists()  # nothing written
    return result


def test_the_dry_run_times_each_models_own_module(tmp_path, monkeypatch):
    spy = FactorySpy(monkeypatch)
    dry_run(tmp_path, "seqpool=x,softmax", "seed=0,1")
    modules = spy.made("build_module")
    # the seeds of one model cost the same per step: one module per SeqPool choice, each timed
    assert len(modules) == 2 and not spy.made("build_pack")
    assert [len(spy.steps_of(m)) for m in modules] == [1 + TIMED_STEPS] * 2  # a warm-up step, then the timed ones
    assert len(spy.steps) == 2 * (1 + TIMED_STEPS)  # no step of anything else
    assert all(spy.in_factory_trainers(m) for m in modules)
    assert all(s["bf16"] for s in spy.steps)  # the Trainer's precision, not a hand-made float32 step
    first, second = (args[0] for args, _ in spy.built["build_module"])
    assert first.seqpool != second.seqpool  # each model measured with its own config


def test_a_packed_dry_run_times_the_packed_modules_step(tmp_path, monkeypatch):
    spy = FactorySpy(monkeypatch)
    result = dry_run(tmp_path, "seed=0,1,2", "sweep.pack=seed")
    assert "pack 0: jobs 0, 1, 2 together" in result.stdout
    (pack,) = spy.made("build_pack")
    (cfgs, models), _ = spy.built["build_pack"][0]
    assert isinstance(pack, PackedModule) and pack.size == len(cfgs) == len(models) == 3
    steps = spy.steps_of(pack)
    assert len(steps) == 1 + TIMED_STEPS and spy.in_factory_trainers(pack)
    assert all(s["bf16"] and s["shape"][0] == 3 for s in steps)  # each member its own batch: (K, B, ...)
    (single,) = spy.made("build_module")  # the jobs' own rows: one unpacked module
    assert len(spy.steps_of(single)) == 1 + TIMED_STEPS


def test_the_dry_run_counts_the_forward_flops_of_explicit_attention():
    """On the CPU attention runs fused, whose kernels the FLOP counter cannot see inside: the dry run
    and mode=summary count through objects.forward_gflops, which switches to the explicit path for
    the count (and back)."""
    from attnexp.layers.attention import Attention
    from attnexp.sweep.estimate import measure

    cfg = compose("model=cct2", "data=fake")
    # FLOPs are counted, not computed by kernels; the formula counts the matmuls and convolutions and
    # leaves out norms, softmax and activations, < 0.1 % of a CCT's forward
    assert measure(cfg)["gflops_per_image"] == pytest.approx(cct_forward_gflops(128, 2, 2, 1.0, [64, 128]), rel=1e-3)
    model = objects.build_model(cfg)
    fused = [m.fused for m in model.modules() if isinstance(m, Attention)]
    assert fused and all(fused)
    objects.forward_gflops(cfg, model)
    assert [m.fused for m in model.modules() if isinstance(m, Attention)] == fused
