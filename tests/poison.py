"""Callbacks for tests, plugged in through callbacks=: a model that diverges, a SIGTERM, at a chosen step."""

import os
import signal

import pytorch_lightning as pl
import torch


class PoisonAtStep(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


class SigtermDuringStep(pl.Callback):
    """Sends this process SIGTERM while the step that ends at global step `step` runs (from its
    batch start), so a run stopped by it has finished exactly `step` steps."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)
