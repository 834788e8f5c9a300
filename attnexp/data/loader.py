"""A batch loader over in-memory uint8 tensors, on CPU or GPU.

Every random draw of batch i in epoch e comes from a generator seeded by
(seed, e, i), so the data order and augmentation do not depend on how many
batches ran before, on workers, or on a restart: resuming mid-epoch is exact.
Lightning sees a sized iterable with `state_dict` / `load_state_dict` (so it
restores mid-epoch position) and a `sampler.set_epoch` (so it sets the epoch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnexp.data.sources import Split


def _mix(*parts: int) -> int:
    """A 62-bit seed from several integers (splitmix-style), so nearby (epoch, batch) pairs decorrelate."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = ((x ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & ((1 << 62) - 1)


class _EpochSetter:
    """What Lightning calls `sampler.set_epoch` on at each epoch start."""

    def __init__(self, loader: "ResumableLoader"):
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


class ResumableLoader:
    """An epoch-seeded loader as Lightning resumes it: the epoch (set through `sampler`), the batches of
    this epoch already trained on (`consumed`, set by the training module before each step, so any
    checkpoint written after the step resumes after it), and `positions()`: the (epoch, batch indices)
    of an iteration, which after `load_state_dict` starts where the checkpoint left off."""

    def __init__(self):
        self.epoch = 0
        self.consumed = 0
        self._resume_at = 0
        self.sampler = _EpochSetter(self)
        self.batch_sampler = None  # Lightning inspects it; batching is ours

    def __len__(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def positions(self) -> tuple[int, range]:
        start, self._resume_at = self._resume_at, 0
        return self.epoch, range(start, len(self))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(state["epoch"])
        self._resume_at = state["consumed"] if state["consumed"] < len(self) else 0


class _Batches(torch.utils.data.Dataset):
    """Batch i of one epoch as a dataset item, so DataLoader workers can build batches in parallel."""

    def __init__(self, loader: "TensorLoader", epoch: int, start: int):
        self.loader, self.epoch, self.start = loader, epoch, start

    def __len__(self) -> int:
        return len(self.loader) - self.start

    def __getitem__(self, i: int):
        return self.loader.batch(self.epoch, self.start + i)


class TensorLoader(ResumableLoader):
    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean: list[float],
        std: list[float],
        shuffle: bool = False,
        augment=None,
        seed: int = 0,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        image_size: int | None = None,
    ):
        super().__init__()
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.augment, self.seed, self.num_workers = augment, seed, num_workers
        self.rank, self.world_size = rank, world_size
        self.image_size = image_size  # resize per batch (after augmentation), e.g. CIFAR → 224 for ViT-Tiny
        device = split.images.device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self._order: tuple[int | None, torch.Tensor | None] = (None, None)

    def samples_per_rank(self) -> int:
        """Training: every rank the same count (padded); evaluation: this rank's share, unpadded."""
        n = len(self.split)
        return math.ceil(n / self.world_size) if self.shuffle else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return math.ceil(self.samples_per_rank() / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for the epoch: one shared permutation, strided by rank."""
        if self._order[0] != epoch:
            self._order = (epoch, self._draw_order(epoch))
        return self._order[1]

    def _draw_order(self, epoch: int) -> torch.Tensor:
        n = len(self.split)
        if self.shuffle:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))
        else:
            perm = torch.arange(n)
        if self.world_size > 1 and self.shuffle:
            # training: pad by wrapping so every rank takes the same number of steps (DDP syncs
            # gradients each step), like DistributedSampler. Evaluation is not padded: each image
            # counts once, and the metrics sum counts over ranks, so top-1 equals one process's.
            total = self.samples_per_rank() * self.world_size
            perm = torch.cat([perm, perm[: total - n]])
        return perm[self.rank :: self.world_size].to(self.split.images.device)

    def batch(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        images, labels = self.split.images[index], self.split.labels[index]
        if self.augment is not None:
            g = torch.Generator(device=images.device).manual_seed(_mix(self.seed, epoch, i, 1))
            images = self.augment(images, g)
        x = (images.float() - self.mean) / self.std
        if self.image_size and x.shape[-1] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return x, labels

    def __iter__(self):
        # a generator: its body runs on the first next(), after Lightning has set the epoch
        epoch, batches = self.positions()
        if self.num_workers > 0:
            yield from torch.utils.data.DataLoader(
                _Batches(self, epoch, batches.start),
                batch_size=None,
                num_workers=self.num_workers,
                multiprocessing_context="spawn" if self.split.images.is_cuda else None,
            )
            return
        for i in batches:
            yield self.batch(epoch, i)
