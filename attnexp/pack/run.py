"""A packed job of a sweep (`sweep.pack=seed|alpha`): its members as ordinary runs.

attnexp.sweep.plan groups the sweep's jobs into packs and launches one Hydra job per
pack, in its first member's folder, naming the members (`sweep.members`: their
places in sweep.json), each composed there exactly as the unpacked sweep composes
it (compose_members). Here each member gets its folder where the unpacked sweep puts it (`.hydra`,
metrics.json with `packed_with`, TensorBoard events, best/last checkpoints that
`mode=eval` and `attnexp.load_run` read like any other), and the pack trains.
Each member's records are its own Lifecycle's and it logs through its own Lightning
logger, as its unpacked run does.
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn

from attnexp.assemble.objects import (
    build_backbone,
    build_data,
    build_model,
    make_logger,
    make_trainer,
    seed_and_threads,
)
from attnexp.layers.randomness import untaped_randomness
from attnexp.pack.module import PackedData, build_pack
from attnexp.train.callbacks import Checkpoints, GracefulStop, StopRequested
from attnexp.train.lifecycle import Lifecycle, RunFailed, failure_message, inference_timing
from attnexp.train.module import param_groups

# ---------------------------------------------------------------- what cannot be packed


def refusal(cfg: DictConfig) -> str | None:
    """Why this job cannot train packed, or None (checked at start-up for each pack)."""
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
    return model_refusal(model)


def model_refusal(model: nn.Module) -> str | None:
    """Why this model's members could not train as their unpacked runs do, or None."""
    kinds = {type(m).__name__ for m in model.modules()}
    if "ConvNNAttention" in kinds:
        return "attention=convnn: its sampling and branches draw outside the members' own masks"
    loose = untaped_randomness(model)
    if loose:
        return f"{loose[0]} draws outside the members' own masks"
    scales = sorted({group.get("lr_scale", 1.0) for group in param_groups(model)})
    if scales != [1.0]:  # the pack's optimizer has one group: the scaled ones would train at the full rate
        rates = ", ".join(f"{s:g}" for s in scales)
        return f"parameter groups at lr_scale {rates} (model.backbone_lr_scale): a pack trains all at one rate"
    tracked = [name for name, m in model.named_modules() if getattr(m, "track_running_stats", False)]
    if tracked:  # vmap would update one set of running statistics for all members, or fail
        kind = type(model.get_submodule(tracked[0])).__name__
        return f"{tracked[0]} ({kind}) keeps running statistics: the members would share one set"
    return None


# ---------------------------------------------------------------- the members


class Member:
    """One run of the pack: its config, Hydra node, folder, logger and lifecycle."""

    def __init__(self, k: int, cfg: DictConfig, job: DictConfig, overrides: list[str], resuming: bool):
        self.cfg, self.job, self.overrides = cfg, job, overrides
        self.run_dir = str(cfg.paths.output_dir)
        self.logger = make_logger(cfg)
        self.life = Lifecycle(cfg, self.logger, job, resuming, label=f"member {k} ({Path(self.run_dir).name}) ")
        self.diverged_reported = False

    def log(self, values: dict, step: int, epoch: int | None = None) -> None:
        """Scalars at `step`, with the epoch beside them as Lightning's self.log writes it (not for
        what callbacks log straight to the logger: the learning rate)."""
        if self.logger:
            self.logger.log_metrics(values | ({} if epoch is None else {"epoch": epoch}), step)

    def write_hydra_files(self) -> None:
        """What Hydra's run_job saves for a job (.hydra/config.yaml, hydra.yaml, overrides.yaml)."""
        folder = Path(self.run_dir) / ".hydra"
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.cfg, folder / "config.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": self.job}), folder / "hydra.yaml")
        OmegaConf.save(OmegaConf.create(self.overrides), folder / "overrides.yaml")


# ---------------------------------------------------------------- recording each member


class PackRecorder(pl.Callback):
    """Per epoch and member what its unpacked run's module and callbacks log and record: its scalars
    (through its logger), its epoch record (its Lifecycle). The members' histories ride in the pack's
    checkpoint (this callback's state); `checkpoints` writes each member's (attnexp.train.callbacks)."""

    def __init__(self, members: list[Member], checkpoints: Checkpoints):
        self.members, self.checkpoints = members, checkpoints
        self.epoch_start = 0.0

    def state_dict(self) -> dict:
        return {"histories": [m.life.history for m in self.members]}

    def load_state_dict(self, state: dict) -> None:
        for member, history in zip(self.members, state["histories"]):
            member.life.history = history

    def on_train_epoch_start(self, trainer, module) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.alpha_keys and (trainer.global_step % trainer.log_every_n_steps == 0):
            for k in module.alive():
                self.members[k].log({"alpha": module.alpha_values[k]}, batch_step(trainer), trainer.current_epoch)

    def on_train_epoch_end(self, trainer, module) -> None:
        seconds = time.perf_counter() - self.epoch_start
        for k, values in enumerate(module.epoch_metrics("train")):
            if values is not None and module.members[k].diverged_step is None:
                scalars = {f"train/{n}": v for n, v in values.items()} | {"time/epoch_s": seconds}
                self.members[k].log(scalars, batch_step(trainer), trainer.current_epoch)

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        epoch, step = trainer.current_epoch + 1, trainer.global_step
        seconds = time.perf_counter() - self.epoch_start
        for k, values in enumerate(module.epoch_metrics("val")):
            member, state = self.members[k], module.members[k]
            if state.diverged_step is not None:
                self.diverged(trainer, module, k)
            elif values is not None:
                member.log({f"val/{n}": v for n, v in values.items()}, batch_step(trainer), trainer.current_epoch)
                best = max((h["val_acc1"] for h in member.life.history), default=None)
                member.life.epoch_end(epoch, step, values["acc1"], values["loss"], seconds)
                if best is None or values["acc1"] > best:
                    state.best_state = module.member_state_dict(k)

    def diverged(self, trainer, module, k: int) -> None:
        """A member whose loss turned non-finite: frozen at its last good step, recorded once, and its
        logger leaves the trainer's (the learning-rate monitor writes to every member's)."""
        member, state = self.members[k], module.members[k]
        if member.diverged_reported:
            return
        member.diverged_reported = True
        self.checkpoints.save(trainer, module, k, ("last",), final=True)  # its frozen weights: its last good step's
        kept = sorted(p.name for p in (Path(member.run_dir) / "checkpoints").glob("*.ckpt"))
        reason = f"non-finite loss at step {state.diverged_step}"
        member.life.finish("diverged", reason=reason, diverged_step=state.diverged_step)
        trainer.loggers = [logger for logger in trainer.loggers if logger is not member.logger]
        where = f"last good checkpoints kept: {', '.join(kept)}" if kept else "no checkpoint had been saved yet"
        print(f"attnexp: {_short(member.run_dir)}: {reason}: frozen; the pack goes on ({where})", file=sys.stderr)


def batch_step(trainer: pl.Trainer) -> int:
    """The step of the batch just trained, where Lightning logs it (and an epoch's scalars: at its last batch)."""
    return trainer.global_step - 1


def _short(run_dir: str) -> str:
    return "/".join(Path(run_dir).parts[-2:])


# ---------------------------------------------------------------- the pack


def same_pack(checkpoint: Path, member_dirs: list[str]) -> bool:
    """An interrupted pack's checkpoint, written for exactly these members."""
    if not checkpoint.is_file():
        return False
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False).get("pack") or {}
    return saved.get("member_dirs") == member_dirs


def train_pack(composed: list[tuple[DictConfig, DictConfig, list[str]]]) -> dict:
    """Train the pack of these members ((job config, its hydra node, overrides) each: attnexp.sweep.plan's
    compose_members); each member's metrics.json ends done, diverged, interrupted or failed (with its
    one-line reason; the traceback in the first member's error.txt)."""
    dirs = [str(cfg.paths.output_dir) for cfg, _, _ in composed]
    pack_ckpt = Path(dirs[0]) / "checkpoints" / "pack_last.ckpt"
    resume = str(pack_ckpt) if same_pack(pack_ckpt, dirs) else None
    members = [Member(k, cfg, job, overrides, resume is not None) for k, (cfg, job, overrides) in enumerate(composed)]
    try:
        return _train(members, pack_ckpt, resume)
    except RunFailed:
        raise
    except Exception as e:
        message = failure_message(e, dirs[0])
    for m in members:
        m.life.record.update(status="failed", reason=message)
    raise RunFailed("failed", message)


def _train(members: list[Member], pack_ckpt: Path, resume: str | None) -> dict:
    from pytorch_lightning.callbacks import LearningRateMonitor

    cfgs = [m.cfg for m in members]
    models = []
    for cfg in cfgs:  # as each unpacked run builds it: seeded, the data module first, then the model
        seed_and_threads(cfg)
        build_data(cfg)
        models.append(build_model(cfg))
    datamodule = build_data(cfgs[0])
    module = build_pack(cfgs, models)
    module.member_dirs = [m.run_dir for m in members]
    # enums as their strings: a resume's torch.load (weights_only) refuses any other class
    module.run_configs = [OmegaConf.to_container(c, resolve=True, enum_to_str=True) for c in cfgs]
    folders = [Path(m.run_dir) / "checkpoints" for m in members]
    checkpoints = Checkpoints(folders, [m.life for m in members], resumable=pack_ckpt)
    recorder = PackRecorder(members, checkpoints)
    # one logger per member: the learning-rate monitor writes the (shared) rate to each, under its run's tag
    loggers = [m.logger for m in members if m.logger]
    rates = [LearningRateMonitor(logging_interval="epoch")] if loggers else []
    callbacks = [recorder, GracefulStop(checkpoints), checkpoints, *rates]
    trainer = make_trainer(cfgs[0], callbacks, loggers or False, members[0].run_dir)
    for m, model in zip(members, models):
        if m is not members[0]:
            m.write_hydra_files()
        m.life.start(model, trainer, packed_with=[o.run_dir for o in members if o is not m])
    del models
    data = PackedData(datamodule, [c.seed for c in cfgs])
    if resume:
        print(f"[resume] pack of {len(members)} from {pack_ckpt}")
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume)
    except StopRequested as e:
        for k in module.alive():
            members[k].life.finish("interrupted", reason=f"signal {e.signum}", resume_with="sweep.resume=true")
        message = (
            f"pack interrupted at step {trainer.global_step} ({pack_ckpt}); resume the sweep with sweep.resume=true"
        )
        raise RunFailed("interrupted", message, 128 + e.signum) from None
    pack_ckpt.unlink(missing_ok=True)  # finished: nothing to resume
    for k, state in enumerate(module.members):
        if state.diverged_step is not None:  # after the last validation
            recorder.diverged(trainer, module, k)
    # each member scored on the test split with its best weights
    module.load_member_states([s.best_state or module.member_state_dict(k) for k, s in enumerate(module.members)])
    trainer.test(module, datamodule=data, verbose=False)
    results = {}
    for k, (m, scores) in enumerate(zip(members, module.epoch_metrics("test"))):
        if module.members[k].diverged_step is not None:
            continue
        if scores:
            m.log({f"test/{n}": v for n, v in scores.items()}, trainer.global_step, trainer.current_epoch)
        timing = inference_timing(m.cfg, lambda: member_model(m.cfg, module, k), datamodule, module.device)
        results[m.run_dir] = m.life.done(scores["acc1"] if scores else None, **timing)
    wall = time.perf_counter() - members[0].life.started
    print(f"pack of {len(members)}: {len(results)} done in {wall:.1f}s ({_short(members[0].run_dir)} and its members)")
    return results


def member_model(cfg: DictConfig, module, k: int) -> torch.nn.Module:
    """Member k as an ordinary model, with the weights the pack holds for it."""
    model = build_model(cfg)
    model.load_state_dict(module.member_state_dict(k))
    return model
