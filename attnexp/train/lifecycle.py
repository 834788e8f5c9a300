"""One run's life, written by one piece of code for a single run and for each member of a pack:
metrics.json's records (running, then done | failed | diverged | interrupted), the epoch line,
the history, the test score, TensorBoard's HParams entry and, when the config asks, inference
timing. Everything a run logs goes through its Lightning logger."""

from __future__ import annotations

import platform
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from attnexp.assemble.objects import CheckpointError, on_gpu, trainable_parameters, weights_source
from attnexp.config.compose import is_bookkeeping, split_override
from attnexp.errors import StartupError
from attnexp.train.identity import identity
from attnexp.train.rundir import RunRecord, provenance
from attnexp.train.timing import inference_ms


class RunFailed(Exception):
    """The job ended without finishing; `status` is what metrics.json now says."""

    def __init__(self, status: str, message: str, exit_code: int = 1):
        self.status, self.exit_code = status, exit_code
        super().__init__(message)


def device_name(gpu: bool) -> str:
    if gpu:
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def numerics(trainer: pl.Trainer) -> dict:
    """What decides the arithmetic of a run (recorded: recipes compare only like with like)."""
    return {
        "precision": str(trainer.precision),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def run_hparams(choices: dict, overrides: list[str], swept: list[str]) -> dict:
    """What tells this run apart, for TensorBoard's HParams table: first what its sweep varies,
    then the rest the command set (group choices and knobs, as typed), then the other group
    choices; no bookkeeping keys (data.root, threads, the seed...), no _target_ / _partial_."""

    def column(key: str) -> str:
        return key if "." in key else f"choice/{key}"

    given = dict(split_override(o) for o in overrides)
    hparams = {column(k): given[k] for k in swept if k in given and not is_bookkeeping(k)}
    for key, value in given.items():
        if not is_bookkeeping(key):
            hparams.setdefault(column(key), value)
    for group, choice in choices.items():
        if not is_bookkeeping(group):
            hparams.setdefault(f"choice/{group}", str(choice))
    return hparams


def failure_message(exc: Exception, run_dir: str | Path) -> str:
    """A failed job's one line: the message of a known kind of error, else its type and message
    with the traceback saved to <run_dir>/error.txt."""
    if isinstance(exc, (CheckpointError, StartupError, ValueError)):
        return str(exc).splitlines()[0]
    error = Path(run_dir) / "error.txt"
    error.write_text(traceback.format_exc())
    return f"{type(exc).__name__}: {exc}".splitlines()[0] + f" (traceback in {error})"


def inference_timing(cfg: DictConfig, model: Callable[[], torch.nn.Module], datamodule, device) -> dict:
    """ms per evaluation batch of `model()` on the device that trained (seed 003's "average inference
    time"), only when the config asks for it (`timing.inference`): seven forwards of a full batch."""
    if not OmegaConf.select(cfg, "timing.inference", default=False):
        return {}
    images, _ = datamodule.test_dataloader().batch(0, 0)
    ms = inference_ms(model().to(device), images.to(device))
    return {"inference_ms_per_batch": round(ms, 3), "inference_batch_size": int(images.shape[0])}


class Lifecycle:
    """The records of one run in its folder. `job`: Hydra's node of the job (its choices and
    overrides name the run in HParams); `resuming`: the run continues what metrics.json holds."""

    def __init__(self, cfg: DictConfig, logger, job: DictConfig | None, resuming: bool, label: str = ""):
        self.cfg, self.logger, self.label = cfg, logger, label
        self.run_dir = str(cfg.paths.output_dir)
        self.record = RunRecord(self.run_dir)
        self.resumed = self.record.read() if resuming else {}
        self.history: list[dict] = list(self.resumed.get("history") or [])  # a checkpoint's wins (RunRecorder)
        choices = {k: v for k, v in job.runtime.choices.items() if not k.startswith("hydra")} if job else {}
        self.choices = choices or self.resumed.get("choices", {})
        self.overrides = list(job.overrides.task) if job else []
        self.started = time.perf_counter()
        self.hparams: dict = {}

    def start(self, model: torch.nn.Module, trainer: pl.Trainer, **fields) -> None:
        params = trainable_parameters(model)
        self.hparams = run_hparams(self.choices, self.overrides, list(self.cfg.sweep.swept))
        self.hparams |= {"params": params, "threads": torch.get_num_threads(), "precision": str(trainer.precision)}
        self.record.update(
            status="running",
            run_dir=self.run_dir,
            params=params,
            choices=self.choices,
            device=device_name(on_gpu(self.cfg)),
            threads=torch.get_num_threads(),  # on the CPU a result depends on it (README)
            recipe=self.cfg.recipe.name,
            numerics=numerics(trainer),
            weights=weights_source(self.cfg, model),  # what the run started from (null: random initialisation)
            identity=identity(self.cfg, packed="packed_with" in fields),
            **provenance(self.run_dir),
            **fields,
        )

    def epoch_end(self, epoch: int, step: int, acc1: float, loss: float | None, seconds: float, write=True) -> None:
        """The official `[Epoch N] Top-1 X Time: Ys` line and the history (`write`: this process
        prints and records; in DDP only rank 0 does)."""
        self.history.append({"epoch": epoch, "val_acc1": acc1, "val_loss": loss, "step": step})
        if write:
            print(f"[Epoch {epoch}] {self.label}Top-1 {acc1:.2f} Time: {seconds:.2f}s", flush=True)
            best = max(h["val_acc1"] for h in self.history)
            self.record.update(epochs=epoch, best_acc1=best, final_acc1=acc1, history=self.history)

    def finish(self, status: str, write: bool = True, **fields) -> dict:
        """The run's last record; with an epoch behind it, its HParams entry."""
        wall = self.resumed.get("wall_time_s", 0.0) + time.perf_counter() - self.started
        best = max((h["val_acc1"] for h in self.history), default=None)
        final = self.history[-1]["val_acc1"] if self.history else None
        if write and best is not None and self.logger:
            self.logger.log_hyperparams(self.hparams, {"hp/best_acc1": best, "hp/final_acc1": final})
            self.logger.finalize(status)
        return self.record.update(
            status=status,
            best_acc1=best,
            final_acc1=final,
            epochs=len(self.history) and self.history[-1]["epoch"],
            wall_time_s=round(wall, 2),
            finished_at=datetime.now(timezone.utc).isoformat(),  # among identical runs the earliest is reused
            **fields,
        )

    def done(self, test_acc1: float | None, write: bool = True, **timing) -> dict:
        return self.finish("done", write, reason=None, resume_with=None, test_acc1_at_best_val=test_acc1, **timing)
