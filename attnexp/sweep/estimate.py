"""The dry run: every job, its folder and an estimated time, from a few timed training steps of
its own model on this machine (and each pack's, from a timed packed step). Runs and writes nothing."""

from __future__ import annotations

import json
import time

from omegaconf import DictConfig, OmegaConf

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
    """Parameters, forward GFLOPs per image, and seconds per training image from a few timed train
    steps (after a warm-up step) on this machine: PROBE_BATCH images on a CPU, the full batch on a GPU.
    pack=K: one packed step of K members (s_per_image is then per image of every member: the pack's
    step time over one member's batch)."""
    import torch
    from hydra.utils import instantiate
    from torch.utils.flop_counter import FlopCounterMode

    from attnexp.build.objects import build_model
    from attnexp.build.preflight import example_input

    if cfg.compute.num_threads:
        torch.set_num_threads(cfg.compute.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example_input(cfg, model, 1, device))  # one image, or one text's word ids
    batch = probe_batch or (cfg.data.batch_size if device.type == "cuda" else min(cfg.data.batch_size, PROBE_BATCH))
    x = example_input(cfg, model, batch, device)
    x = torch.stack([x] * pack) if pack > 1 else x
    y = torch.randint(0, cfg.data.num_classes, x.shape[: 2 if pack > 1 else 1], device=device)
    if pack > 1:  # K members, each its own data: one vectorised step (attnexp.pack.module)
        from attnexp.pack.module import PackedModule

        models = [model.train()] + [build_model(cfg).to(device).train() for _ in range(pack - 1)]
        packed = PackedModule(models, seeds=list(range(pack)), optimizer=instantiate(cfg.optimizer)).to(device)
        optimizer = instantiate(cfg.optimizer)(packed.stacked.values())

        def loss() -> torch.Tensor:
            masks = packed.member_masks(tuple(x.shape[1:]), 0)
            return packed._losses(packed.forward_members(x, False, masks), y, 0.0)[0].sum()
    else:
        optimizer = instantiate(cfg.optimizer)(model.parameters())

        def loss() -> torch.Tensor:
            return torch.nn.functional.cross_entropy(model(x), y)

    model.train()

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step()  # warm-up: allocator, kernel selection
    timed = sorted(step() for _ in range(TIMED_STEPS))
    return {
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "gflops_per_image": counter.get_total_flops() / 1e9,
        "s_per_image": timed[len(timed) // 2] / batch,  # the median: one busy moment must not decide
        "device": device.type,
    }


def job_seconds(measured: dict, cfg: DictConfig) -> float:
    """Training images × epochs at the measured rate, plus the evaluations: Lightning validates after
    every check_val_every_n_epoch-th epoch, and a forward pass is about a third of a train step."""
    t = cfg.trainer
    evaluations = t.max_epochs // (t.check_val_every_n_epoch or 1)
    return measured["s_per_image"] * (t.max_epochs * _images(cfg, True) + evaluations * _images(cfg, False) / 3)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = seconds / 60
    return f"{minutes:.0f}min" if minutes < 60 else f"{int(minutes // 60)}h{int(minutes % 60):02d}"


def dry_run(sweep_dir: str, jobs: list[tuple[Job, DictConfig]], packs: list[list[int]] | None = None) -> None:
    """List the jobs, their folders and an estimated time each (and the packs: which jobs train
    together, each pack's time from a timed packed step); run and create nothing."""
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
            f"{1 / est['s_per_image']:>8.0f}  {_duration(est['seconds'])}"
        )
    device = rows[0][2]["device"] if rows else "cpu"
    batch = f"{PROBE_BATCH}-image" if device == "cpu" else "full"
    total = sum(r[2]["seconds"] for r in rows)
    print(
        f"  total ≈ {_duration(total)} one job at a time; rate: median of {TIMED_STEPS} timed {batch} train steps"
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
            print(f"  pack {n}: jobs {', '.join(map(str, members))} together, est. {_duration(seconds)}")
        print(f"  total ≈ {_duration(pack_total)} one pack at a time (a timed packed step of each pack's size)")
