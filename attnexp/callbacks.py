"""Callbacks a config names (`callbacks=attention_stats`): saved run folders name them by this
path (`attnexp.callbacks.AttentionStats`), so it stays here. The runner's own are attnexp.train.callbacks."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class AttentionStats(pl.Callback):
    """On one val batch: per layer, the range of V and of the mapped V and the attention entropy; SeqPool's
    x and f(x) (min/max/mean) and the entropy of its weights; and α."""

    def __init__(self, every_n_epochs: int = 1):
        self.every_n_epochs = every_n_epochs

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        loader = trainer.val_dataloaders
        images, _ = loader.batch(0, 0) if hasattr(loader, "batch") else next(iter(loader))
        layers = [m for m in pl_module.model.modules() if hasattr(m, "stats")]
        pools = [m for m in pl_module.model.modules() if getattr(m, "seq_pool", False)]
        for m in layers:
            m.stats = {}
        for m in pools:
            m.seqpool_stats = {}
        pl_module.model(images[:64].to(pl_module.device))
        for i, m in enumerate(layers):
            for name, value in m.stats.items():
                pl_module.log(f"attention/layer{i}/{name}", value.float())
            m.stats = None
        for m in pools:
            for name, value in m.seqpool_stats.items():
                pl_module.log(f"seqpool/{name}", value.float())
            m.seqpool_stats = None
        if pl_module.alpha_value is not None:
            pl_module.log("attention/alpha", pl_module.alpha_value)
