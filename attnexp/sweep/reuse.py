"""Never train the same run twice: a sweep's job whose identical run already finished reuses it.

Decided inside the job (attnexp.sweep.launch), where its device, precision and threads are known:
the job's key (attnexp/train/identity.py) is looked up among the metrics.json files at run-folder
depth under ./outputs, ./multirun and `paths.reuse_roots`. A candidate is a run that trained and
finished (`done`, no `reused_from`: records of reuse are never reused, so there are no chains);
among several the earliest `finished_at` wins. The reused job's folder keeps this sweep's .hydra/,
gets a copy of the run's tb/ events and a metrics.json with its own `run_dir` and `reused_from`,
and no checkpoints: `attnexp.load_run` and `ckpt_path=` follow `reused_from` (`train.rundir.source`). A pack
reuses member by member and trains the rest. `sweep.reuse=verify` trains anyway and compares.
No locking: two sweeps started together may both train a job.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from attnexp.sweep.manifest import read_manifest
from attnexp.train.rundir import atomic_write_text, read_metrics

SEARCHED = ("outputs", "multirun")  # below the current folder
RUN_DEPTH = 4  # multirun/<date>/<time>_<sweep>/<job>/seed_<n>: a run folder lies at most this deep below a root
NOT_RUNS = ("tb", "checkpoints", ".hydra")  # a run's own sub-folders, never searched
NOT_COMPARED = ("callbacks",)  # parts of last.ckpt that name the run's folder or time it, not its result


def roots(cfg: DictConfig) -> list[Path]:
    extra = OmegaConf.select(cfg, "paths.reuse_roots", default=None) or []
    return [Path(r) for r in SEARCHED] + [Path(os.path.expanduser(str(r))) for r in extra]


def run_folders(root: Path, depth: int = RUN_DEPTH):
    """The folders holding a metrics.json below `root`, at most `depth` deep, not entered further."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    if any(e.name == "metrics.json" for e in entries):
        yield root
        return
    if depth == 0:
        return
    for e in entries:
        if e.name not in NOT_RUNS and e.is_dir(follow_symlinks=False):
            yield from run_folders(Path(e.path), depth - 1)


def candidates(key: str, search: list[Path], part: str | None = None) -> list[tuple[Path, dict]]:
    """Runs that trained and finished with this key (or, with `part`, this digest of that part),
    earliest `finished_at` first."""
    found, seen = [], set()
    for root in search:
        for folder in run_folders(root):
            real = folder.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                text = (folder / "metrics.json").read_text()
            except OSError:
                continue
            if key not in text:  # most runs: no need to parse
                continue
            try:
                metrics = json.loads(text)
            except ValueError:
                continue
            found_identity = metrics.get("identity") or {}
            if (
                (found_identity.get("parts", {}).get(part) if part else found_identity.get("key")) == key
                and metrics.get("status") == "done"
                and not metrics.get("reused_from")
                and metrics.get("finished_at")
            ):
                found.append((real, metrics))
    return sorted(found, key=lambda c: c[1]["finished_at"])


def within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def lookup(cfg: DictConfig, key: str, sweep_dir: str) -> tuple[Path | None, list[Path]]:
    """(the run to reuse or None, this sweep's own runs with the key: jobs that differ only in
    bookkeeping keys train each, not one the other's record)."""
    here = Path(sweep_dir).resolve()
    found = candidates(key, roots(cfg))
    if OmegaConf.select(cfg, "timing.inference", default=False):  # only a run that timed itself on this device
        found = [(p, m) for p, m in found if m.get("inference_ms_per_batch") is not None]
    own = [p for p, _ in found if within(p, here)]
    others = [p for p, _ in found if not within(p, here)]
    return (others[0] if others else None), own


def record_reuse(run_dir: str, source: Path) -> dict:
    """The job's folder as a record of `source`: its tb/ events copied, metrics.json naming it."""
    tb = source / "tb"
    if tb.is_dir():
        shutil.copytree(tb, Path(run_dir) / "tb", dirs_exist_ok=True)
    metrics = read_metrics(source) | {
        "run_dir": str(run_dir),
        "reused_from": str(source),
        "reused_at": datetime.now(timezone.utc).isoformat(),
    }
    atomic_write_text(Path(run_dir) / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    return metrics


def in_job(cfg: DictConfig, run_dir: str) -> tuple[dict | None, Path | None]:
    """In a sweep's job: (the metrics of the run it reused, or None to train; with sweep.reuse=verify,
    the run to compare the training with). A job begun before (resumed, or retrained after a failure)
    trains its own; a pack (`sweep.members`) reuses member by member (`pack_left`)."""
    mode = cfg.sweep.reuse
    if mode is False or cfg.mode != "train" or cfg.ckpt_path:
        return None, None
    if cfg.sweep.members:
        return (pack_left(cfg, run_dir) if mode is True else None), None
    if (Path(run_dir) / "metrics.json").exists():
        if read_metrics(run_dir).get("status") == "done":  # not skipped by sweep.resume: another job of this sweep
            print(f"[train] {run_dir}: holds a finished job of this sweep (jobs that differ only in bookkeeping "
                  f"keys share a folder): trained again")  # fmt: skip
        return None, None
    from hydra.core.hydra_config import HydraConfig

    from attnexp.assemble.objects import on_gpu, seed_and_threads
    from attnexp.train.identity import identity

    if mode == "verify" and on_gpu(cfg) and not cfg.trainer.deterministic:
        refuse(run_dir, "sweep.reuse=verify: on a GPU only with trainer.deterministic=true (else no rerun is exact)")
    seed_and_threads(cfg)  # the threads it would train with are part of the key
    key = identity(cfg)["key"]
    source, own = lookup(cfg, key, HydraConfig.get().sweep.dir)
    if source is None:
        if own:
            print(f"[train] {run_dir}: the same key as {own[0]} of this sweep (they differ only in "
                  f"bookkeeping keys): trained again")  # fmt: skip
        return None, None
    if mode == "verify":
        print(f"[verify] {run_dir}: trains, then compares with {source}")
        return None, source
    metrics = record_reuse(run_dir, source)
    saved = metrics.get("wall_time_s") or 0
    print(f"[reuse] {run_dir}: the same run finished in {source} ({saved:.0f} s of training saved)")
    return metrics, None


def dry_run(jobs: list[DictConfig]) -> str:
    """The dry run's word on each job (numbered as its table): the run it would reuse, or why it trains: the
    parts in which the earliest finished run of its config differs."""
    from attnexp.assemble.objects import seed_and_threads
    from attnexp.train.identity import identity

    lines = ["  sweep.reuse (looked up here; each job looks again where it runs):"]
    for i, cfg in enumerate(jobs):
        seed_and_threads(cfg)
        ident = identity(cfg)
        same = candidates(ident["parts"]["config"], roots(cfg), part="config")
        reused = [p for p, m in same if m["identity"]["key"] == ident["key"]]
        if reused:
            word = f"reuses {reused[0]}"
        elif same:
            path, metrics = same[0]
            parts = [p for p, d in ident["parts"].items() if metrics["identity"]["parts"].get(p) != d]
            word = f"trains: {path} has its config but another {', '.join(parts)}"
        else:
            word = "trains: no finished run of its config"
        lines.append(f"  {i:>3}  {word}")
    return "\n".join(lines)


def pack_left(lead: DictConfig, run_dir: str) -> dict | None:
    """A packed job: each member with an identical finished packed run is recorded as its reuse and
    leaves `sweep.members`; the rest train as the pack. The last record when no member is left."""
    from hydra.core.hydra_config import HydraConfig

    from attnexp.assemble.objects import seed_and_threads
    from attnexp.pack.run import Member
    from attnexp.sweep.plan import compose_members
    from attnexp.train.identity import identity

    sweep_dir, left, metrics = HydraConfig.get().sweep.dir, [], None
    for index, (cfg, job, overrides) in zip(list(lead.sweep.members), compose_members(lead)):
        folder, source = str(cfg.paths.output_dir), None
        if not (Path(folder) / "metrics.json").exists():  # begun before: it resumes or retrains
            seed_and_threads(cfg)
            source, _ = lookup(cfg, identity(cfg, packed=True)["key"], sweep_dir)
        if source is None:
            left.append((index, cfg, job, overrides))
            continue
        member = Member(index, cfg, job, overrides, False)
        if Path(folder).resolve() != Path(run_dir).resolve():  # Hydra saved the launched job's own
            member.write_hydra_files()
        metrics = record_reuse(folder, source)
        print(f"[reuse] {folder}: the same packed run finished in {source}")
    if left and Path(str(left[0][1].paths.output_dir)).resolve() != Path(run_dir).resolve():
        Member(*left[0], False).write_hydra_files()  # the pack's first member now: its .hydra is its own to write
    lead.sweep.members = [index for index, *_ in left]
    return None if left else metrics


def refuse(run_dir: str, message: str):
    """The job ends `failed` with this line (the sweep's summary reports it)."""
    from attnexp.train.lifecycle import RunFailed
    from attnexp.train.rundir import RunRecord

    RunRecord(run_dir).update(status="failed", reason=message)
    raise RunFailed("failed", message)


def tensors(obj, path: str = "") -> dict:
    """Every tensor of a checkpoint by its path (state_dict, optimizer state...)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return {path: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in tensors(value, f"{path}/{key}").items()}


def compared_tensors(path: Path) -> dict:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return tensors({k: v for k, v in ckpt.items() if k not in NOT_COMPARED})


def verify(run_dir: str, source: Path) -> None:
    """sweep.reuse=verify: the job's training against the run it would have reused: histories exactly,
    every tensor of last.ckpt with torch.equal (weights, optimizer and schedule states; the callbacks'
    records hold folders and times). RunFailed when they differ."""
    import torch

    differences = []
    if read_metrics(run_dir).get("history") != read_metrics(source).get("history"):
        differences.append("history")
    mine, theirs = (compared_tensors(Path(d) / "checkpoints" / "last.ckpt") for d in (run_dir, source))
    unequal = sorted(k for k in mine.keys() | theirs.keys() if k not in mine or k not in theirs or not torch.equal(mine[k], theirs[k]))  # fmt: skip
    if unequal:
        differences.append(f"{len(unequal)} of {len(mine)} tensors of last.ckpt (first: {unequal[0]})")
    if differences:
        refuse(
            run_dir, f"sweep.reuse=verify: differs from {source}: {'; '.join(differences)} (its key missed a change)"
        )
    print(f"[verify] {run_dir}: identical to {source} (history and {len(mine)} tensors of last.ckpt)")


def seeds_reused(sweep_dir: str) -> dict[str, int]:
    """Per configuration of a sweep (its overrides but the seed): how many of its seeds were reused."""
    counts: dict[str, int] = {}
    for job in read_manifest(sweep_dir):
        configuration = ",".join(o for o in job.overrides if not o.startswith("seed="))
        reused = bool(read_metrics(Path(sweep_dir) / job.dir).get("reused_from"))
        counts[configuration] = counts.get(configuration, 0) + reused
    return counts


def seeds_line(counts: dict[str, int]) -> str:
    if not any(counts.values()):
        return ""
    return "\n  reused seeds: " + "; ".join(f"{c or 'the defaults'}: {n}" for c, n in counts.items())
