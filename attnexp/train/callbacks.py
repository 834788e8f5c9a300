"""The runner's own Lightning callbacks: the epoch record, the checkpoints, the signal-safe stop."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint

RECORDER_KEY = "RunRecorder"  # the history's key in every checkpoint's callback states, old run folders' too


def _scalar(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


class RunRecorder(pl.Callback):
    """Per epoch: its time in TensorBoard, and the run's epoch record (line, history, metrics.json)
    through its Lifecycle. The history rides in every checkpoint, so a resume keeps the epochs before it
    (under RECORDER_KEY)."""

    def __init__(self, life):
        self.life = life
        self._epoch_start = 0.0

    @property
    def state_key(self) -> str:
        return RECORDER_KEY

    def state_dict(self) -> dict:
        return {"history": self.life.history}

    def load_state_dict(self, state: dict) -> None:
        self.life.history = state.get("history", [])

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._epoch_start
        pl_module.log("time/epoch_s", seconds)

    def on_validation_end(self, trainer, pl_module) -> None:
        # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the
        # module's, which is where val/acc1 is logged.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        m = trainer.callback_metrics
        acc1 = _scalar(m, "val/acc1")
        if acc1 is not None:
            seconds = time.perf_counter() - self._epoch_start
            epoch, loss = trainer.current_epoch + 1, _scalar(m, "val/loss")
            self.life.epoch_end(epoch, trainer.global_step, acc1, loss, seconds, write=trainer.is_global_zero)


class Checkpoints(Checkpoint):
    """Every best.ckpt and last.ckpt: a run's, or each pack member's (`lives`: their records, `folders`:
    their checkpoint folders). At each training epoch's end (Lightning calls checkpoint callbacks after
    the module's own epoch end, validation done): the module's resumable checkpoint (`resumable`: a run's
    last.ckpt, a pack's own), then each member's last.ckpt, and its best.ckpt where this epoch's
    validation top-1 beat every earlier one. Rank zero writes them through the strategy (its CheckpointIO:
    atomic). No state of its own: the best so far is the history's, which rides in each checkpoint."""

    def __init__(self, folders: list[Path], lives: list, resumable: Path):
        self.folders, self.lives, self.resumable = [Path(f) for f in folders], lives, Path(resumable)
        self.final: set[int] = set()  # members whose last checkpoint is written for good (diverged)

    def save_resumable(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.resumable)  # the module's on_save_checkpoint keeps the dump (member_checkpoint)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save_resumable(trainer)
        for k, life in enumerate(self.lives):
            scores = [h["val_acc1"] for h in life.history]
            improved = bool(scores) and life.history[-1]["epoch"] == trainer.current_epoch + 1
            improved = improved and all(scores[-1] > s for s in scores[:-1])
            if k not in self.final:
                self.save(trainer, pl_module, k, ("best", "last") if improved else ("last",))

    def save(self, trainer, pl_module, k: int, names: tuple[str, ...], final: bool = False) -> None:
        """Member k's checkpoints `names`: the module's own cut for it, with its history."""
        checkpoint = pl_module.member_checkpoint(k)
        checkpoint["callbacks"] = checkpoint.get("callbacks", {}) | {RECORDER_KEY: {"history": self.lives[k].history}}
        for name in names:
            path = self.folders[k] / f"{name}.ckpt"
            if path != self.resumable:  # written already
                trainer.strategy.save_checkpoint(checkpoint, path)
        if final:
            self.final.add(k)


class StopRequested(Exception):
    """Raised after the resumable checkpoint is written, so no epoch-end work (validation, lr step,
    another checkpoint) runs on a half-finished epoch."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"signal {signum}")


class GracefulStop(pl.Callback):
    """SIGINT / SIGTERM: finish the current step, save the resumable checkpoint there, stop.

    Installed at train start, after Lightning's own handlers, and restored at the end.
    Lightning resumes a checkpoint saved in on_train_batch_end at the next batch.
    """

    def __init__(self, checkpoints: Checkpoints):
        self.checkpoints = checkpoints
        self.signal: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signum

    def on_train_start(self, trainer, pl_module) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (some launchers): leave signals alone
                pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signal is not None:
            self.checkpoints.save_resumable(trainer)
            raise StopRequested(self.signal)

    def teardown(self, trainer, pl_module, stage) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
