"""A callback for tests: makes the model diverge at a chosen step (plugged in through callbacks=)."""

import pytorch_lightning as pl
import torch


class PoisonAtStep(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))
