"""Which files each real dataset needs on disk (torchvision's layouts), checked without torch.

The CLI calls `missing_files` before anything is written, so a missing download
is one line naming the folder, the files and how to get them.
"""

from __future__ import annotations

import os

# dataset → (folder under data.root, files torchvision reads, where to get them)
LAYOUTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "cifar10": (
        "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"),
        "unpack cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there",
    ),
    "cifar100": (
        "cifar-100-python",
        ("train", "test", "meta"),
        "unpack cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there",
    ),
    "mnist": (
        os.path.join("MNIST", "raw"),
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        "put the four gunzipped IDX files from the MNIST site there",
    ),
}


class DataMissingError(Exception):
    pass


def missing_files(name: str, root: str) -> list[str]:
    if name not in LAYOUTS:
        return []
    folder, files, _ = LAYOUTS[name]
    return [f for f in files if not os.path.isfile(os.path.join(root, folder, f))]


def check_dataset(name: str, root: str, download: bool) -> None:
    """Raise DataMissingError with one line if the files are not there and downloading was not asked for."""
    if download or name not in LAYOUTS:
        return
    missing = missing_files(name, root)
    if missing:
        folder, files, how = LAYOUTS[name]
        path = os.path.abspath(os.path.join(root, folder))
        what = "no dataset files" if len(missing) == len(files) else f"missing {', '.join(missing)}"
        raise DataMissingError(
            f"data.root={root}: {name}: {what} in {path} (expects {', '.join(files)}); "
            f"{how}, point data.root at an existing download, or add data.download=true"
        )
