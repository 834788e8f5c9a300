"""The runner's own Lightning callbacks: the epoch record, the signal-safe stop."""

from __future__ import annotations

import signal
import time

import pytorch_lightning as pl


def _scalar(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


class RunRecorder(pl.Callback):
    """Per epoch: its time in TensorBoard, and the run's epoch record (line, history, metrics.json)
    through its Lifecycle. The history rides in every checkpoint, so a resume keeps the epochs before it
    (the class name is the state's key in saved checkpoints: keep it)."""

    def __init__(self, life):
        self.life = life
        self._epoch_start = 0.0

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
        # module's, which is where val/acc1 is logged; ModelCheckpoint (always last) saves after this.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        m = trainer.callback_metrics
        acc1 = _scalar(m, "val/acc1")
        if acc1 is not None:
            seconds = time.perf_counter() - self._epoch_start
            epoch, loss = trainer.current_epoch + 1, _scalar(m, "val/loss")
            self.life.epoch_end(epoch, trainer.global_step, acc1, loss, seconds, write=trainer.is_global_zero)


class StopRequested(Exception):
    """Raised after the resumable checkpoint is written, so no epoch-end work (validation, lr step,
    another checkpoint) runs on a half-finished epoch."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"signal {signum}")


class GracefulStop(pl.Callback):
    """SIGINT / SIGTERM: finish the current step, save last.ckpt there, stop.

    Installed at train start, after Lightning's own handlers, and restored at the end.
    Lightning resumes a checkpoint saved in on_train_batch_end at the next batch.
    """

    def __init__(self, ckpt_path: str):
        self.ckpt_path = ckpt_path
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
            trainer.save_checkpoint(self.ckpt_path)
            raise StopRequested(self.signal)

    def teardown(self, trainer, pl_module, stage) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
