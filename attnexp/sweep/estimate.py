"""The dry run: every job, its folder and an estimated time, from a few timed training steps of
its own module on this machine, built and fitted as its run does (and each pack's, from timed
packed steps). Runs and writes nothing. attnexp-bench times its steps here too."""

from __future__ import annotations

import copy
import itertools
import json
import time
import warnings

from omegaconf import DictConfig, OmegaConf, open_dict

from attnexp.sweep.manifest import Job

# Training images per epoch of the real datasets, for the dry run's estimate (no dataset is read)
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "mnist": 60_000, "digits": 1_438}
TEST_IMAGES = {"cifar10": 10_000, "cifar100": 10_000, "mnist": 10_000, "digits": 359}
PROBE_BATCH = 16  # images per timed step: cheap on a CPU, still a real step
TIMED_STEPS = 3  # after one warm-up step


def _images(cfg: DictConfig, train: bool) -> int:
    """Images one training epoch (or one evaluation) goes through, from the config alone."""
    d, t = cfg.data, cfg.trainer
    n_train = d.get("train_size") or TRAIN_IMAGES.get(d.name, 0)
    n_held = round(n_train * (d.get("val_split") or 0))  # a held-out part of train replaces the test split
    n = n_train - n_held if train else (n_held or d.get("test_size") or TEST_IMAGES.get(d.name, 0))
    limit, batch = (t.limit_train_batches, d.batch_size) if train else (t.limit_val_batches, d.eval_batch_size)
    if limit is None:
        return n
    if isinstance(limit, float):  # Lightning: a fraction of the epoch (an int: a number of batches)
        return int(n * min(limit, 1.0))
    return min(n, limit * batch)


def measure(cfg: DictConfig, pack: int = 1, probe_batch: int | None = None) -> dict:
    """Parameters, forward GFLOPs per image, and seconds per training image: the median of
    TIMED_STEPS training steps (after a warm-up step) of the module the run trains, built by the
    run's factories (fused AdamW, channels-last; not compiled) and fitted by the run's Trainer (its
    precision): PROBE_BATCH images on a CPU, the full batch on a GPU. pack=K: the PackedModule of K
    members (s_per_image is then per image of every member: the pack's step time over one member's batch)."""
    from attnexp.assemble import objects  # through the modules: a test's spy on a factory sees the call
    from attnexp.pack import module as pack_module
    from attnexp.train import module as run_module

    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.compute.compile = False  # compiling takes minutes on a CPU, a dry run seconds: timed eager
    objects.seed_and_threads(cfg)
    model = objects.build_model(cfg).eval()
    gflops = objects.forward_gflops(cfg, model)
    model.train()
    params = objects.trainable_parameters(model)
    if pack > 1:  # K members, each its own data: one vectorised step (attnexp.pack.module)
        models = [model] + [objects.build_model(cfg) for _ in range(pack - 1)]
        module = pack_module.build_pack([cfg] * pack, models)
    else:
        module = run_module.build_module(cfg, model)
    gpu = objects.on_gpu(cfg)
    batch = probe_batch or (cfg.data.batch_size if gpu else min(cfg.data.batch_size, PROBE_BATCH))
    timed = sorted(step_seconds(cfg, module, example_batch(cfg, model, batch, pack), TIMED_STEPS))
    return {
        "params": params,
        "gflops_per_image": gflops,
        "s_per_image": timed[len(timed) // 2] / batch,  # the median: one busy moment must not decide
        "device": "cuda" if gpu else "cpu",
    }


def example_batch(cfg: DictConfig, model, batch: int, pack: int = 1) -> tuple:
    """Random (inputs, labels) of `batch` items on the run's device; a pack's: (K, batch, ...) per member."""
    import torch

    from attnexp.assemble import objects

    device = "cuda" if objects.on_gpu(cfg) else "cpu"
    x = objects.example_input(cfg, model, batch, device)
    x = torch.stack([x] * pack) if pack > 1 else x
    return x, torch.randint(0, cfg.data.num_classes, x.shape[: 2 if pack > 1 else 1], device=device)


def step_seconds(cfg: DictConfig, module, batch: tuple, steps: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `steps` training steps after `warmup` ones: the run's Trainer (make_trainer:
    accelerator, precision) fits `module` on `batch` over and over; no validation, logger or checkpoint."""
    from attnexp.assemble import objects

    cfg = copy.deepcopy(cfg)  # the job's own limits and callbacks stay as they are
    with open_dict(cfg):
        cfg.callbacks = {}  # e.g. a learning-rate monitor wants a logger
        cfg.trainer.update(
            max_epochs=1, limit_train_batches=warmup + steps, limit_val_batches=0, num_sanity_val_steps=0,
            devices=1, strategy="auto", enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
    clock = step_clock(warmup)
    trainer = objects.make_trainer(cfg, [clock], logger=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*no `val_dataloader`.*")  # none, on purpose
        trainer.fit(module, train_dataloaders=itertools.repeat(batch, warmup + steps))  # a list: many loaders
    return clock.durations()


def step_clock(warmup: int):
    """A Lightning callback: the end of every training step from the last warm-up step on, the device
    drained first; `durations()`: the seconds of each step after the warm-up."""
    import pytorch_lightning as pl
    import torch

    class StepClock(pl.Callback):
        def __init__(self):
            self.marks: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
            if batch_idx >= warmup - 1:
                if pl_module.device.type == "cuda":
                    torch.cuda.synchronize(pl_module.device)
                self.marks.append(time.perf_counter())

        def durations(self) -> list[float]:
            return [b - a for a, b in zip(self.marks, self.marks[1:])]

    return StepClock()


def job_seconds(measured: dict, cfg: DictConfig) -> float:
    """Training images × epochs at the measured rate, plus the evaluations: Lightning validates after
    every check_val_every_n_epoch-th epoch, and a forward pass is about a third of a train step."""
    t = cfg.trainer
    evaluations = t.max_epochs // (t.check_val_every_n_epoch or 1)
    return measured["s_per_image"] * (t.max_epochs * _images(cfg, True) + evaluations * _images(cfg, False) / 3)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = seconds / 60
    return f"{minutes:.0f}min" if minutes < 60 else f"{int(minutes // 60)}h{int(minutes % 60):02d}"


def dry_run(sweep_dir: str, jobs: list[tuple[Job, DictConfig]], packs: list[list[int]] | None = None) -> float:
    """List the jobs, their folders and an estimated time each (and the packs: which jobs train
    together, each pack's time from a timed packed step); run and create nothing. Returns the
    estimated seconds one job at a time."""
    print(f"[dry run] sweep folder: {sweep_dir}  ({len(jobs)} jobs; nothing is run or written)")
    cache: dict = {}  # model shape (and pack size) → its measurement
    rows = []
    for i, (job, cfg) in enumerate(jobs):
        # jobs that differ only in the seed or the recipe cost the same per step: time each model once
        shape = OmegaConf.to_container(cfg.model, resolve=True) | {"batch": cfg.data.batch_size}
        key = json.dumps(shape, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = measure(cfg)
        rows.append((i, job.dir, cache[key] | {"seconds": job_seconds(cache[key], cfg)}))
    width = max((len(r[1]) for r in rows), default=10)
    print(f"  {'#':>3}  {'job folder':<{width}}  {'params':>11}  {'GFLOPs/img':>10}  {'img/s':>8}  est. time")
    for i, d, est in rows:
        print(
            f"  {i:>3}  {d:<{width}}  {est['params']:>11,}  {est['gflops_per_image']:>10.3f}  "
            f"{1 / est['s_per_image']:>8.0f}  {duration(est['seconds'])}"
        )
    device = rows[0][2]["device"] if rows else "cpu"
    batch = f"{PROBE_BATCH}-image" if device == "cpu" else "full"
    total = sum(r[2]["seconds"] for r in rows)
    print(
        f"  total ≈ {duration(total)} one job at a time; rate: median of {TIMED_STEPS} timed {batch} train steps"
        f" per model on this machine ({device}). The machine that trains decides the real time."
    )
    if packs:
        pack_total = 0.0
        print(f"  packed (sweep.pack={jobs[0][1].sweep.pack}): {len(packs)} packed jobs")
        for n, members in enumerate(packs):
            cfg = jobs[members[0]][1]
            key = json.dumps(OmegaConf.to_container(cfg.model, resolve=True), sort_keys=True, default=str)
            if len(members) > 1 and (key, len(members)) not in cache:
                cache[key, len(members)] = measure(cfg, pack=len(members))
            measured = cache[key, len(members)] if len(members) > 1 else rows[members[0]][2]
            seconds = job_seconds(measured, cfg)
            pack_total += seconds
            print(f"  pack {n}: jobs {', '.join(map(str, members))} together, est. {duration(seconds)}")
        print(f"  total ≈ {duration(pack_total)} one pack at a time (a timed packed step of each pack's size)")
    return total
