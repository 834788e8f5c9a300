"""Datasets as in-memory uint8 tensors: images (N, C, H, W), labels (N,) int64.

The real datasets go through torchvision's own classes and on-disk layouts, so an
existing download under `data.root` just works. Everything downstream (batching,
augmentation, normalisation) works on these tensors, on CPU or GPU alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnexp.data.files import DataMissingError, check_dataset


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])


def _torchvision(cls_name: str, root: str, download: bool) -> tuple[Split, Split]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    splits = []
    for train in (True, False):
        try:
            ds = cls(root=root, train=train, download=download)
        except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
            raise DataMissingError(f"data.root={root}: {cls_name}: {str(e).splitlines()[0]}") from None
        data = torch.as_tensor(ds.data)
        images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # → (N, C, H, W)
        splits.append(Split(images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)))
    return splits[0], splits[1]


def cifar10(root: str, download: bool = False, **_) -> tuple[Split, Split]:
    check_dataset("cifar10", root, download)
    return _torchvision("CIFAR10", root, download)


def cifar100(root: str, download: bool = False, **_) -> tuple[Split, Split]:
    check_dataset("cifar100", root, download)
    return _torchvision("CIFAR100", root, download)


def mnist(root: str, download: bool = False, **_) -> tuple[Split, Split]:
    check_dataset("mnist", root, download)
    return _torchvision("MNIST", root, download)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


DIGITS_COUNT = 1797  # images in scikit-learn's digits


def digits(image_size: int = 32, val_fraction: float = 0.2, **_) -> tuple[Split, Split]:
    """scikit-learn's 1,797 real 8×8 handwritten digits (shipped inside the package, no download).

    Split deterministically (a fixed permutation, independent of the run seed) so
    every run is scored on the same held-out images.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1797))
    n_val = int(round(len(labels) * val_fraction))
    full = Split(resize(images, image_size), labels)
    return full.subset(order[n_val:]), full.subset(order[:n_val])


def fake_sizes(train_size: int = 256, test_size: int = 128, **_) -> tuple[int, int]:
    return train_size, test_size


def digits_sizes(val_fraction: float = 0.2, **_) -> tuple[int, int]:
    n_val = int(round(DIGITS_COUNT * val_fraction))
    return DIGITS_COUNT - n_val, n_val


def fake(
    image_size: int = 32,
    in_channels: int = 3,
    num_classes: int = 10,
    train_size: int = 256,
    test_size: int = 128,
    **_,
) -> tuple[Split, Split]:
    """Synthetic but learnable: each class is a fixed random pattern plus noise (tests, smoke sweeps)."""
    g = torch.Generator().manual_seed(0)
    prototypes = torch.rand(num_classes, in_channels, image_size, image_size, generator=g) * 255

    def make(n: int) -> Split:
        labels = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.randn(n, in_channels, image_size, image_size, generator=g) * 40
        images = (prototypes[labels] + noise).round().clamp(0, 255).to(torch.uint8)
        return Split(images, labels)

    return make(train_size), make(test_size)


# (train, test) sizes of the sources that are not files on disk (those come from their headers)
SIZES = {"digits": digits_sizes, "fake": fake_sizes}
