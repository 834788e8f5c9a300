"""A packed job of a sweep (`sweep.pack=seed|alpha`): its members as ordinary runs.

attnexp.sweep.plan groups the sweep's jobs into packs and launches one Hydra job per
pack, in its first member's folder, naming the members (`sweep.members`: their
places in sweep.json). Here each member is composed exactly as the unpacked
sweep composes it, gets its folder where the unpacked sweep puts it (`.hydra`,
metrics.json with `packed_with`, TensorBoard events, best/last checkpoints that
`mode=eval` and `attnexp.load_run` read like any other), and the pack trains.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from attnexp.train.callbacks import AtomicCheckpointIO, GracefulStop, StopRequested
from attnexp.train.rundir import RunRecord, provenance

# ---------------------------------------------------------------- what cannot be packed (torch)


def refusal(cfg: DictConfig) -> str | None:
    """Why this job cannot train packed, or None (checked at start-up for each pack)."""
    from attnexp.build.objects import build_backbone
    from attnexp.layers.randomness import untaped_randomness

    if cfg.mode != "train":
        return f"mode={cfg.mode}: only training packs"
    if cfg.trainer.devices not in (1, "1"):
        return f"trainer.devices={cfg.trainer.devices}: a pack trains on one device"
    if cfg.compute.compile:
        return "compute.compile=true: a pack runs eager (vmap)"
    extra = [name for name, c in (cfg.get("callbacks") or {}).items() if c and "_target_" in c]
    if extra:
        return f"callbacks ({', '.join(extra)}) cannot report per member"
    if "seed" not in inspect.signature(get_class(cfg.data._target_).make_loader).parameters:
        return f"data={cfg.data.name}: its loader cannot give each member its own data order"
    with torch.device("meta"):
        model = build_backbone(cfg)
    kinds = {type(m).__name__ for m in model.modules()}
    if "ConvNNAttention" in kinds:
        return "attention=convnn: its sampling and branches draw outside the members' own masks"
    loose = untaped_randomness(model)
    if loose:
        return f"{loose[0]} draws outside the members' own masks"
    return None


# ---------------------------------------------------------------- the members


class Member:
    """One run of the pack: its config, folder, record and TensorBoard writer."""

    def __init__(self, cfg: DictConfig, hydra_cfg: DictConfig, run_dir: str, overrides: list[str]):
        from torch.utils.tensorboard import SummaryWriter

        self.cfg, self.hydra, self.run_dir, self.overrides = cfg, hydra_cfg, run_dir, overrides
        self.record = RunRecord(run_dir)
        self.writer = SummaryWriter(str(Path(run_dir) / "tb")) if cfg.get("logger") else None
        self.reported_divergence = False

    @property
    def choices(self) -> dict:
        return {k: v for k, v in self.hydra.runtime.choices.items() if not k.startswith("hydra")}

    def log(self, values: dict, step: int, epoch: int | None = None) -> None:
        """Scalars at `step`, with the epoch beside them as Lightning's self.log writes it (not
        for what callbacks log straight to the logger: the learning rate)."""
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        if epoch is not None:
            self.writer.add_scalar("epoch", epoch, step)
        self.writer.flush()


def compose_members(lead: DictConfig) -> list[tuple[DictConfig, DictConfig, str, list[str]]]:
    """(job config, its hydra node, folder, overrides) of every member, composed as the sweep composed them."""
    from hydra.core.hydra_config import HydraConfig

    from attnexp.config.compose import compose, hydra_config, set_hydra_key, split_hydra
    from attnexp.sweep.manifest import read_manifest

    sweep_dir = HydraConfig.get().sweep.dir
    master = OmegaConf.load(Path(sweep_dir) / "multirun.yaml")
    jobs = read_manifest(sweep_dir)
    out = []
    for index in lead.sweep.members:
        job = jobs[index]
        cfg = compose(job.overrides, return_hydra_config=True, master=master)
        run_dir = os.path.abspath(os.path.join(sweep_dir, job.dir))
        set_hydra_key(cfg, "hydra.runtime.output_dir", run_dir)
        with hydra_config(cfg):
            body, _ = split_hydra(cfg)
            OmegaConf.resolve(body)
        out.append((body, cfg.hydra, run_dir, list(job.overrides)))
    return out


def write_hydra_files(member: Member) -> None:
    """What Hydra's run_job saves for a job (.hydra/config.yaml, hydra.yaml, overrides.yaml)."""
    folder = Path(member.run_dir) / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(member.cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": member.hydra}), folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(member.overrides), folder / "overrides.yaml")


# ---------------------------------------------------------------- recording each member


class PackRecorder(pl.Callback):
    """Per epoch and member: TensorBoard scalars, metrics.json, the epoch line, best/last checkpoints."""

    def __init__(self, members: list[Member], pack_ckpt: Path):
        self.members, self.pack_ckpt = members, pack_ckpt
        self._improved: list[int] = []  # members whose validation top-1 improved this epoch
        self.io = AtomicCheckpointIO()
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._epoch_start = time.perf_counter()
        rates = {"lr-AdamW": trainer.optimizers[0].param_groups[0]["lr"]}
        for k in module.alive():
            self.members[k].log(rates, trainer.global_step)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.alpha_keys and (trainer.global_step % trainer.log_every_n_steps == 0):
            for k in module.alive():
                self.members[k].log({"alpha": module.alpha_values[k]}, trainer.global_step - 1, trainer.current_epoch)

    def on_train_epoch_end(self, trainer, module) -> None:
        seconds = time.perf_counter() - self._epoch_start
        for k, values in enumerate(module.epoch_metrics("train")):
            if values is not None and module.members[k].diverged_step is None:
                scalars = {f"train/{n}": v for n, v in values.items()} | {"time/epoch_s": seconds}
                self.members[k].log(scalars, trainer.global_step, trainer.current_epoch)
        # at the epoch's end, where an unpacked run's last.ckpt is written (after its validation):
        # the pack's own checkpoint, whose dump is cut into each member's
        trainer.save_checkpoint(self.pack_ckpt)
        for k in module.alive():
            state = module.members[k]
            latest = state.history[-1]["val_acc1"] if state.history else None
            for name in ("best", "last") if k in self._improved else ("last",):
                self._save(module, k, state.best_state if name == "best" else module.member_state_dict(k), name, latest)
        self._improved = []

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        epoch, step = trainer.current_epoch + 1, trainer.global_step
        elapsed = time.perf_counter() - self._epoch_start
        improved = []
        for k, values in enumerate(module.epoch_metrics("val")):
            state, member = module.members[k], self.members[k]
            if state.diverged_step is not None:
                self._diverged(k, module)
                continue
            if values is None:
                continue
            member.log({f"val/{n}": v for n, v in values.items()}, step, trainer.current_epoch)
            state.history.append({"epoch": epoch, "val_acc1": values["acc1"], "val_loss": values["loss"], "step": step})
            if state.best_acc1 is None or values["acc1"] > state.best_acc1:
                state.best_acc1, state.best_state = values["acc1"], module.member_state_dict(k)
                improved.append(k)
            print(
                f"[Epoch {epoch}] member {k} ({Path(member.run_dir).name}) Top-1 {values['acc1']:.2f} "
                f"Time: {elapsed:.2f}s",
                flush=True,
            )
            member.record.update(
                epochs=epoch, best_acc1=state.best_acc1, final_acc1=values["acc1"], history=state.history
            )
        self._improved = improved

    def _diverged(self, k: int, module) -> None:
        member, state = self.members[k], module.members[k]
        if member.reported_divergence:
            return
        member.reported_divergence = True
        # its frozen weights are those of its last good step: they are its last checkpoint
        self._save(module, k, module.member_state_dict(k), "last")
        kept = sorted(p.name for p in (Path(member.run_dir) / "checkpoints").glob("*.ckpt"))
        reason = f"non-finite loss at step {state.diverged_step}"
        member.record.update(status="diverged", reason=reason, diverged_step=state.diverged_step, history=state.history)
        where = f"last good checkpoints kept: {', '.join(kept)}" if kept else "no checkpoint had been saved yet"
        print(f"attnexp: {_short(member.run_dir)}: {reason}: frozen; the pack goes on ({where})", file=sys.stderr)

    def _save(self, module, k: int, weights: dict, name: str, acc1: float | None = None) -> None:
        """Member k's own checkpoint: its weights and config (mode=eval, load_run), and, cut from the
        pack's latest Lightning checkpoint, what its unpacked run's last.ckpt holds to resume
        alone: its AdamW slice, the loops, its ModelCheckpoint and RunRecorder states."""
        from attnexp.build.objects import best_and_last

        member, state = self.members[k], module.members[k]
        folder = Path(member.run_dir) / "checkpoints"
        checkpoint = {
            "state_dict": {f"model.{key}": value for key, value in weights.items()},
            "attnexp_config": OmegaConf.to_container(member.cfg, resolve=True),
            "alpha": module.alpha_values[k],
            "packed_with": [m.run_dir for m in self.members if m is not member],
            "pytorch-lightning_version": pl.__version__,
        }
        dump = module.last_dump
        if dump is not None and state.diverged_step is None:
            tracker, latest = best_and_last(folder)  # in the states its unpacked run's callbacks would have
            best_path, best = (
                str(folder / "best.ckpt"),
                torch.tensor(state.best_acc1 if state.history else -float("inf")),
            )
            tracker.best_model_score, tracker.best_model_path = best, best_path
            tracker.current_score, tracker.best_k_models = torch.tensor(acc1 or 0.0), {best_path: best}
            tracker.kth_best_model_path, tracker.kth_value = best_path, best
            last_path = str(folder / "last.ckpt")
            latest.best_model_path, latest.kth_best_model_path, latest.last_model_path = last_path, last_path, last_path
            checkpoint |= {key: v for key, v in dump.items() if key not in ("state_dict", "optimizer_states", "pack")}
            checkpoint |= {
                "optimizer_states": [module.member_optimizer_state(k, dump["optimizer_states"][0])],
                "callbacks": {
                    tracker.state_key: tracker.state_dict(),
                    latest.state_key: latest.state_dict(),
                    "RunRecorder": {"history": state.history},
                },
            }
        else:  # a diverged member: its frozen weights, nothing to resume
            checkpoint |= {"epoch": len(state.history), "global_step": state.diverged_step}
        self.io.save_checkpoint(checkpoint, folder / f"{name}.ckpt")


def _short(run_dir: str) -> str:
    parts = Path(run_dir).parts
    return "/".join(parts[-2:])


# ---------------------------------------------------------------- the pack


def same_pack(checkpoint: Path, member_dirs: list[str]) -> bool:
    """An interrupted pack's checkpoint, written for exactly these members."""
    if not checkpoint.is_file():
        return False
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False).get("pack") or {}
    return saved.get("member_dirs") == member_dirs


def train_pack(lead: DictConfig) -> dict:
    """Train the pack named by `lead.sweep.members`; each member's metrics.json ends done, diverged,
    interrupted or failed (with its one-line reason; the traceback in the first member's error.txt)."""
    import traceback

    from attnexp.build.objects import CheckpointError
    from attnexp.errors import StartupError
    from attnexp.train.modes import RunFailed

    members = [Member(*m) for m in compose_members(lead)]
    try:
        return _train(members)
    except RunFailed:
        raise
    except (CheckpointError, StartupError, ValueError) as e:
        message = str(e).splitlines()[0]
    except Exception as e:
        error = Path(members[0].run_dir) / "error.txt"
        error.write_text(traceback.format_exc())
        message = f"{type(e).__name__}: {e}".splitlines()[0] + f" (traceback in {error})"
    for m in members:
        m.record.update(status="failed", reason=message)
    raise RunFailed("failed", message)


def _train(members: list[Member]) -> dict:
    from attnexp.build.objects import (
        build_alpha,
        build_data,
        build_model,
        make_optimizer,
        make_trainer,
        on_gpu,
        seed_and_threads,
        weights_source,
    )
    from attnexp.pack.module import PackedData, PackedModule
    from attnexp.train.modes import RunFailed, device_name, numerics

    started = time.perf_counter()
    cfgs = [m.cfg for m in members]
    models = []
    for cfg in cfgs:  # as each unpacked run builds it: seeded, the data module first, then the model
        seed_and_threads(cfg)
        build_data(cfg)
        models.append(build_model(cfg))
    datamodule = build_data(cfgs[0])
    base = cfgs[0]
    module = PackedModule(
        models,
        seeds=[c.seed for c in cfgs],
        optimizer=make_optimizer(base, on_gpu(base)),
        scheduler=instantiate(base.scheduler) if base.get("scheduler") else None,
        label_smoothing=base.label_smoothing,
        eval_label_smoothing=base.label_smoothing if base.recipe.smooth_eval_loss else 0.0,
        alphas=[build_alpha(c) for c in cfgs],
    )
    lead_dir = members[0].run_dir
    module.member_dirs = [m.run_dir for m in members]
    pack_ckpt = Path(lead_dir) / "checkpoints" / "pack_last.ckpt"
    recorder = PackRecorder(members, pack_ckpt)
    stopper = GracefulStop(str(pack_ckpt))
    trainer = make_trainer(base, [recorder, stopper], logger=False, root_dir=lead_dir, checkpointing=False)
    params = sum(p.numel() for p in models[0].parameters() if p.requires_grad)
    for m, model in zip(members, models):
        if m is not members[0]:
            write_hydra_files(m)
        m.record.update(
            status="running",
            run_dir=m.run_dir,
            params=params,
            choices=m.choices,
            device=device_name(on_gpu(base)),
            threads=torch.get_num_threads(),
            recipe=m.cfg.recipe.name,
            numerics=numerics(trainer),
            weights=weights_source(m.cfg, model),
            packed_with=[o.run_dir for o in members if o is not m],
            **provenance(m.run_dir),
        )
    del models
    data = PackedData(datamodule, [c.seed for c in cfgs])
    resume = str(pack_ckpt) if same_pack(pack_ckpt, module.member_dirs) else None
    if resume:
        print(f"[resume] pack of {len(members)} from {pack_ckpt}")
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume)
    except StopRequested as e:
        for k in module.alive():
            members[k].record.update(status="interrupted", reason=f"signal {e.signum}", resume_with="sweep.resume=true")
        message = (
            f"pack interrupted at step {trainer.global_step} ({pack_ckpt}); resume the sweep with sweep.resume=true"
        )
        raise RunFailed("interrupted", message, 128 + e.signum) from None
    pack_ckpt.unlink(missing_ok=True)  # finished: nothing to resume
    # each member scored on the test split with its best weights
    module.load_member_states([s.best_state or module.member_state_dict(k) for k, s in enumerate(module.members)])
    trainer.test(module, datamodule=data, verbose=False)
    tests = module.epoch_metrics("test")
    wall = round(time.perf_counter() - started, 2)
    results = {}
    for k, (m, state) in enumerate(zip(members, module.members)):
        if m.writer is not None:
            m.writer.close()
        if state.diverged_step is not None:
            recorder._diverged(k, module)
            continue
        history = state.history
        results[m.run_dir] = m.record.update(
            status="done",
            best_acc1=max((h["val_acc1"] for h in history), default=None),
            final_acc1=history[-1]["val_acc1"] if history else None,
            epochs=len(history) and history[-1]["epoch"],
            wall_time_s=wall,
            reason=None,
            resume_with=None,
            test_acc1_at_best_val=tests[k]["acc1"] if tests[k] else None,
        )
    print(f"pack of {len(members)}: {len(results)} done in {wall:.1f}s ({_short(lead_dir)} and its members)")
    return results
