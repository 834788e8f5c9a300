"""Which files each real dataset needs on disk (torchvision's layouts), checked without torch.

Start-up reads only each file's header and size: a missing file, a corrupt IDX
header or a truncated file is one line naming the file, the folder and how to
get it, before any run folder exists. The same headers give the split sizes
the preflight needs (e.g. that `data.val_split` leaves training images).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from math import prod

from attnexp.errors import StartupError

IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one MNIST uses
PICKLE_PROTOCOL_MARK = 0x80  # first byte of a pickle of protocol ≥ 2 (CIFAR's python batches)


@dataclass(frozen=True)
class Layout:
    folder: str  # under data.root
    files: dict[str, int]  # file → minimum size in bytes (0: IDX, checked against its own header)
    train: tuple[str, ...]  # the files that hold the training split (for counting)
    how: str  # where to get them
    sizes: tuple[int, int] | None = None  # (train, test) images, when fixed by the format


CIFAR_BATCH = 10_000 * (3072 + 1)  # a CIFAR-10 batch file: 10,000 images of 3,072 bytes and their labels, at least
LAYOUTS: dict[str, Layout] = {
    "cifar10": Layout(
        "cifar-10-batches-py",
        {**{f"data_batch_{i}": CIFAR_BATCH for i in range(1, 6)}, "test_batch": CIFAR_BATCH, "batches.meta": 1},
        (),
        "unpack cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there",
        sizes=(50_000, 10_000),
    ),
    "cifar100": Layout(
        "cifar-100-python",
        {"train": 50_000 * 3072, "test": 10_000 * 3072, "meta": 1},
        (),
        "unpack cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html there",
        sizes=(50_000, 10_000),
    ),
    "mnist": Layout(
        os.path.join("MNIST", "raw"),
        {
            "train-images-idx3-ubyte": 0,
            "train-labels-idx1-ubyte": 0,
            "t10k-images-idx3-ubyte": 0,
            "t10k-labels-idx1-ubyte": 0,
        },
        ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"),
        "put the four gunzipped IDX files from the MNIST site there",
    ),
}


class DataMissingError(StartupError):
    """A dataset file is absent (or unreadable): one line, start-up."""


class DataCorruptError(DataMissingError):
    """A dataset file is there but its header or size is wrong."""


def idx_dims(path: str) -> tuple[int, ...]:
    """The dimensions an IDX file's header declares; DataCorruptError if the header or the size is wrong."""
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[0] or head[1] or head[2] != IDX_UBYTE or not 1 <= head[3] <= 4:
            raise DataCorruptError(
                f"{os.path.basename(path)}: not an IDX file of unsigned bytes (header {head.hex() or 'empty'})"
            )
        raw = f.read(4 * head[3])
    if len(raw) < 4 * head[3]:
        raise DataCorruptError(f"{os.path.basename(path)}: truncated inside its header")
    dims = tuple(int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw), 4))
    expected, size = 4 + len(raw) + prod(dims), os.path.getsize(path)
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise DataCorruptError(
            f"{os.path.basename(path)}: {what} ({size:,} bytes; the header {dims} needs {expected:,})"
        )
    return dims


def file_problem(path: str, minimum: int) -> None:
    """Raise DataCorruptError if a file cannot be what it is named."""
    if minimum == 0:
        idx_dims(path)
        return
    size = os.path.getsize(path)
    if size < minimum:
        raise DataCorruptError(f"{os.path.basename(path)}: truncated ({size:,} bytes, at least {minimum:,} expected)")
    if minimum > 1:
        with open(path, "rb") as f:
            if f.read(1) != bytes([PICKLE_PROTOCOL_MARK]):
                raise DataCorruptError(f"{os.path.basename(path)}: not a python pickle (the CIFAR python version)")


def missing_files(name: str, root: str) -> list[str]:
    if name not in LAYOUTS:
        return []
    layout = LAYOUTS[name]
    return [f for f in layout.files if not os.path.isfile(os.path.join(root, layout.folder, f))]


def check_dataset(name: str, root: str, download: bool) -> None:
    """One line (DataMissingError) if a file is missing and downloading was not asked for,
    or if a file that is there has a wrong header or size."""
    if name not in LAYOUTS:
        return
    layout = LAYOUTS[name]
    path = os.path.abspath(os.path.join(root, layout.folder))
    missing = missing_files(name, root)
    if missing and not download:
        what = "no dataset files" if len(missing) == len(layout.files) else f"missing {', '.join(missing)}"
        raise DataMissingError(
            f"data.root={root}: {name}: {what} in {path} (expects {', '.join(layout.files)}); "
            f"{layout.how}, point data.root at an existing download, or add data.download=true"
        )
    for file, minimum in layout.files.items():
        if file in missing:
            continue
        try:
            file_problem(os.path.join(path, file), minimum)
        except DataCorruptError as e:
            raise DataCorruptError(f"data.root={root}: {name}: {e} in {path}; {layout.how}") from None
        except OSError as e:
            raise DataMissingError(f"data.root={root}: {name}: cannot read {file} in {path} ({e.strerror})") from None


def split_sizes(name: str, root: str) -> tuple[int, int] | None:
    """(train, test) image counts from the files' headers (None: not a file dataset, or not there yet)."""
    layout = LAYOUTS.get(name)
    if layout is None or missing_files(name, root):
        return None
    if layout.sizes is not None:
        return layout.sizes
    train, test = (idx_dims(os.path.join(root, layout.folder, f))[0] for f in layout.train)
    return train, test
