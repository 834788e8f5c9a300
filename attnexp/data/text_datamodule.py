"""The text datamodule: texts → word ids (N, seq_len) held in memory → batches, like the images.

Batches are (ids (B, seq_len) int64, labels (B,)), sliced from tensors on the
training device (`loader: auto` puts them there on a GPU), in the seeded,
resumable order of attnexp.data.loader.TensorLoader. The vocabulary comes from
the training split alone (attnexp/data/text.py).
"""

from __future__ import annotations

import torch

from attnexp.data.datamodule import SplitDataModule
from attnexp.data.loader import TensorLoader
from attnexp.data.sources import Split
from attnexp.data.text import (
    TEXT_LAYOUTS,
    TextFormatError,
    Vocabulary,
    check_text_dataset,
    count_examples,
    load_texts,
    tokenize,
)
from attnexp.errors import require

NAMES = (*TEXT_LAYOUTS, "text_demo")
LOADERS = ("auto", "device")


class TokenLoader(TensorLoader):
    """TensorLoader's order, resume and DDP sharding over rows of word ids (`Split.images` holds the ids)."""

    def batch(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        return self.split.images[index], self.split.labels[index]


class TextDataModule(SplitDataModule):
    def __init__(
        self,
        name: str,
        root: str = "data",
        num_classes: int = 2,
        seq_len: int = 64,
        min_freq: int = 1,
        max_size: int = 20_000,
        batch_size: int = 128,
        eval_batch_size: int = 128,
        val_split: float = 0.0,
        loader: str = "auto",
        fine_labels: bool = False,
        train_size: int = 4000,
        test_size: int = 1000,
        seed: int = 0,
    ):
        super().__init__()
        require(name in NAMES, "name", name, f"one of {', '.join(NAMES)}")
        require(loader in LOADERS, "loader", loader, f"one of {', '.join(LOADERS)}")
        for arg, value in (
            ("num_classes", num_classes),
            ("seq_len", seq_len),
            ("min_freq", min_freq),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("train_size", train_size),
            ("test_size", test_size),
        ):
            require(value >= 1, arg, value, "must be ≥ 1")
        require(max_size >= 3, "max_size", max_size, "must be ≥ 3 (<unk>, <pad> and a word)")
        require(0.0 <= val_split < 1.0, "val_split", val_split, "a fraction in [0, 1)")
        self.name, self.root, self.num_classes, self.seq_len = name, root, num_classes, seq_len
        self.min_freq, self.max_size, self.fine_labels = min_freq, max_size, fine_labels
        self.batch_size, self.eval_batch_size, self.val_split = batch_size, eval_batch_size, val_split
        self.loader, self.train_size, self.test_size, self.seed = loader, train_size, test_size, seed
        self.train: Split | None = None
        self.vocabulary: Vocabulary | None = None

    def split_sizes(self) -> tuple[int, int]:
        """(train, test) example counts from line and file counts; nothing is parsed."""
        if self.name == "text_demo":
            return self.train_size, self.test_size
        return count_examples(self.name, self.root)

    def check(self) -> None:
        """What start-up can know without loading: the files and the splits they make."""
        if self.name != "text_demo":
            check_text_dataset(self.name, self.root)
        train, test = self.split_sizes()
        n_val = int(round(train * self.val_split))
        left = f"leaves {train - n_val} of the {train} training texts for training and {n_val} for validation"
        require(0 < n_val < train or self.val_split == 0, "val_split", self.val_split, f"{left}: both need ≥ 1")
        require(test >= 1, "test_size", test, "the test split is empty")

    def encode(self, texts: list[str], labels: list[int]) -> Split:
        ids = [self.vocabulary.encode(tokenize(t), self.seq_len) for t in texts]
        return Split(torch.tensor(ids, dtype=torch.long).view(-1, self.seq_len), torch.tensor(labels, dtype=torch.long))

    def load(self) -> tuple[Split, Split]:
        """(train, test) word ids; builds the vocabulary from the training texts."""
        (train_texts, train_labels), (test_texts, test_labels) = load_texts(
            self.name, self.root, self.fine_labels, self.train_size, self.test_size
        )
        classes = max(train_labels + test_labels, default=-1) + 1
        if classes > self.num_classes:
            raise TextFormatError(f"data.num_classes={self.num_classes}: the {self.name} files hold {classes} labels")
        self.vocabulary = Vocabulary([tokenize(t) for t in train_texts], self.min_freq, self.max_size)
        return self.encode(train_texts, train_labels), self.encode(test_texts, test_labels)

    def setup(self, stage: str | None = None) -> None:
        if self.train is None:
            self.place_splits(*self.load())
        if stage == "fit":  # pretrained word vectors are read for these words (model.embeddings=glove)
            backbone = getattr(getattr(self.trainer, "lightning_module", None), "model", None)
            if hasattr(backbone, "use_vocabulary"):
                backbone.use_vocabulary(self.vocabulary.words)

    def make_loader(self, split: Split, train: bool) -> TokenLoader:
        rank, world = self._rank()
        size = self.batch_size if train else self.eval_batch_size
        return TokenLoader(split, size, [0.0], [1.0], shuffle=train, seed=self.seed, rank=rank, world_size=world)
