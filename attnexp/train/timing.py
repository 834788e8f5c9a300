"""Inference timing as the seed-003 table reports it: ms per evaluation batch, after warm-up, synchronised."""

from __future__ import annotations

import statistics
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def inference_ms(model: torch.nn.Module, batch: torch.Tensor, warmup: int = 2, repeats: int = 5) -> float:
    """Median wall time of one forward pass over `batch`, in milliseconds (model in eval mode)."""
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        model(batch)
    _sync(batch.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(batch)
        _sync(batch.device)
        times.append((time.perf_counter() - start) * 1000)
    model.train(was_training)
    return statistics.median(times)
