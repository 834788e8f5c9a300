"""The one datamodule: a source (cifar10, mnist, digits, fake, ...) → in-memory tensors → TensorLoaders."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from attnexp.data import sources
from attnexp.data.augment import build_augment
from attnexp.data.files import check_dataset, split_sizes
from attnexp.data.loader import TensorLoader
from attnexp.data.sources import Split
from attnexp.errors import require

LOADERS = ("auto", "device", "torchvision")

SOURCES = {
    "cifar10": sources.cifar10,
    "cifar100": sources.cifar100,
    "mnist": sources.mnist,
    "digits": sources.digits,
    "fake": sources.fake,
}


class SplitDataModule(pl.LightningDataModule):
    """What every attnexp datamodule shares: its train/val/test splits held on the device they are
    batched on, and Lightning's three loaders from its `make_loader(split, train)`."""

    def place_splits(self, train: Split, test: Split) -> None:
        """train/val/test from the loaded splits: `val_split` holds out a fixed part of the training
        set (the same for every run seed), else the test split scores every epoch (the official
        recipe); then each on the device the loaders batch on."""
        if self.val_split > 0:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(12345))
            n_val = int(round(len(train) * self.val_split))
            train, val = train.subset(order[n_val:]), train.subset(order[:n_val])
        else:
            val = test
        device = self._device()
        self.train, self.val, self.test = (Split(s.images.to(device), s.labels.to(device)) for s in (train, val, test))

    def _device(self) -> torch.device:
        resident = self.loader == "device" or (self.loader == "auto" and self._root_device().type == "cuda")
        return self._root_device() if resident else torch.device("cpu")

    def _root_device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _rank(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def train_dataloader(self) -> TensorLoader:
        return self.make_loader(self.train, train=True)

    def val_dataloader(self) -> TensorLoader:
        return self.make_loader(self.val, train=False)

    def test_dataloader(self) -> TensorLoader:
        return self.make_loader(self.test, train=False)


class ImageDataModule(SplitDataModule):
    def __init__(
        self,
        name: str,
        root: str = "data",
        download: bool = False,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        val_split: float = 0.0,
        mean: list | None = None,
        std: list | None = None,
        loader: str = "auto",
        augment: dict | None = None,
        train_size: int | None = None,
        test_size: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        require(name in SOURCES, "name", name, f"one of {', '.join(SOURCES)}")
        require(loader in LOADERS, "loader", loader, f"one of {', '.join(LOADERS)}")
        counts = {"batch_size": batch_size, "eval_batch_size": eval_batch_size, "num_classes": num_classes}
        for arg, value in {**counts, "in_channels": in_channels, "image_size": image_size}.items():
            require(value >= 1, arg, value, "must be ≥ 1")
        require(num_workers >= 0, "num_workers", num_workers, "must be ≥ 0")
        require(0.0 <= val_split < 1.0, "val_split", val_split, "a fraction in [0, 1)")
        for arg, stats in (("mean", mean), ("std", std)):
            require(not stats or len(stats) == in_channels, arg, stats, f"one value per channel ({in_channels})")
        require(not std or all(v > 0 for v in std), "std", std, "every value must be > 0")
        build_augment(augment, "batched")  # an unknown policy or key fails here, not in the first epoch
        self.name, self.root, self.download = name, root, download
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.val_split, self.loader, self.augment_spec, self.seed = val_split, loader, augment, seed
        self.mean = list(mean) if mean else [0.5] * in_channels
        self.std = list(std) if std else [0.5] * in_channels
        self.sizes = {k: v for k, v in (("train_size", train_size), ("test_size", test_size)) if v is not None}
        self.train: Split | None = None

    def split_sizes(self) -> tuple[int, int]:
        """(train, test) image counts, from the files' headers or the source's own size; nothing is loaded."""
        on_disk = split_sizes(self.name, self.root)
        if on_disk is not None:
            return on_disk
        return sources.SIZES[self.name](**self.sizes)

    def check(self) -> None:
        """What start-up can know without loading: the files and the splits they make."""
        check_dataset(self.name, self.root, self.download)
        if self.download and sources.SIZES.get(self.name) is None and split_sizes(self.name, self.root) is None:
            return  # to be downloaded: sizes unknown until then
        train, test = self.split_sizes()
        n_val = int(round(train * self.val_split))
        left = f"leaves {train - n_val} of the {train} training images for training and {n_val} for validation"
        require(0 < n_val < train or self.val_split == 0, "val_split", self.val_split, f"{left}: both need ≥ 1")
        require(test >= 1, "test_size", test, "the test split is empty")

    def load(self) -> tuple[Split, Split]:
        """(train, test) uint8 tensors at the configured image size."""
        train, test = SOURCES[self.name](
            root=self.root,
            download=self.download,
            image_size=self.image_size,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            **self.sizes,
        )
        return train, test  # at their native size; loaders resize each batch to image_size

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        self.place_splits(*self.load())

    def make_loader(self, split: Split, train: bool, seed: int | None = None) -> TensorLoader:
        """`seed`: another run's data order and augmentation (a packed member's); default this run's."""
        impl = "torchvision" if self.loader == "torchvision" else "batched"
        rank, world = self._rank()
        return TensorLoader(
            split,
            self.batch_size if train else self.eval_batch_size,
            self.mean,
            self.std,
            shuffle=train,
            augment=build_augment(self.augment_spec, impl) if train else None,
            seed=self.seed if seed is None else seed,
            num_workers=self.num_workers if train else 0,
            rank=rank,
            world_size=world,
            image_size=self.image_size,
        )
