"""Inference timing as the seed-003 table reports it: ms per evaluation batch, after warm-up, synchronised."""

from __future__ import annotations

import statistics
import time

import torch


@torch.no_grad()
def inference_ms(model: torch.nn.Module, batch: torch.Tensor, warmup: int = 2, repeats: int = 5) -> float:
    """Median wall time of one forward pass over `batch`, in milliseconds (model in eval mode); each pass
    ends with the device drained, so the first timed one starts after the warm-up's work is done."""
    was_training = model.training
    model.eval()
    times = []
    for _ in range(warmup + repeats):
        start = time.perf_counter()
        model(batch)
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)
        times.append((time.perf_counter() - start) * 1000)
    model.train(was_training)
    return statistics.median(times[warmup:])
