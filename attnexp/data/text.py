"""Text classification data: the four datasets' readers, the tokenizer, the vocabulary, GloVe, and a
generated word-order task (text_demo) that needs no download.

Each reader returns the texts and 0-based labels of one split, read straight from
the files of the dataset's usual distribution under `data.root` (torch-free):

    agnews  ag_news_csv/{train,test}.csv   CSV rows: label 1–4, title, description
    sst2    SST-2/{train,dev}.tsv          TSV with a header holding `sentence` and `label`;
                                           GLUE's test.tsv has no labels, so dev.tsv is the test split
    imdb    aclImdb/{train,test}/{pos,neg}/*.txt   one review per file; neg 0, pos 1
    trec    trec/{train_5500,TREC_10}.label        lines `COARSE:fine question`; the 6 coarse
                                           labels, or with fine_labels the 50 fine ones

Missing files are one line at start-up (`check_text_dataset`); a malformed row found
while loading is one line naming the file and line (`TextFormatError`).
"""

from __future__ import annotations

import csv
import os
import random
import re
from collections import Counter
from dataclasses import dataclass

from attnexp.data.files import DataCorruptError, DataMissingError

# ---------------------------------------------------------------- tokenizer and vocabulary

# lower-cased runs of letters and digits, keeping inner apostrophes (don't, it's): a plain,
# stated rule with no library behind it, so every dataset and the demo split words alike
WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)  # IMDB reviews carry <br /> line breaks


def tokenize(text: str) -> list[str]:
    return WORD.findall(text.lower())


UNK, PAD = "<unk>", "<pad>"  # ids 0 and 1 (the official Embedder's padding index is 1)


class Vocabulary:
    """Words of the training split by falling count (ties alphabetical), at least `min_freq` times,
    at most `max_size` entries with <unk> (0) and <pad> (1) included. Other words map to <unk>."""

    def __init__(self, texts: list[list[str]], min_freq: int = 1, max_size: int = 20_000):
        counts = Counter(word for words in texts for word in words)
        kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        self.words = [UNK, PAD] + kept[: max(0, max_size - 2)]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, words: list[str], seq_len: int) -> list[int]:
        """The first seq_len words' ids, padded with <pad> to seq_len."""
        ids = [self.index.get(w, 0) for w in words[:seq_len]]
        return ids + [1] * (seq_len - len(ids))


# ---------------------------------------------------------------- files


class TextFormatError(DataCorruptError):
    """A row of a dataset file that does not have the dataset's format: one line, file and line."""


@dataclass(frozen=True)
class TextLayout:
    folder: str  # under data.root
    train: tuple[str, ...]  # files or folders of the training split, relative to folder
    test: tuple[str, ...]
    how: str  # where to get them


TEXT_LAYOUTS = {
    "agnews": TextLayout(
        "ag_news_csv", ("train.csv",), ("test.csv",), "unpack ag_news_csv.tar.gz (Zhang et al., 2015) there"
    ),
    "sst2": TextLayout("SST-2", ("train.tsv",), ("dev.tsv",), "unpack GLUE's SST-2.zip there"),
    "imdb": TextLayout(
        "aclImdb",
        ("train/pos", "train/neg"),
        ("test/pos", "test/neg"),
        "unpack aclImdb_v1.tar.gz from https://ai.stanford.edu/~amaas/data/sentiment/ there",
    ),
    "trec": TextLayout(
        "trec",
        ("train_5500.label",),
        ("TREC_10.label",),
        "put train_5500.label and TREC_10.label from https://cogcomp.seas.upenn.edu/Data/QA/QC/ there",
    ),
}


def check_text_dataset(name: str, root: str) -> None:
    """DataMissingError naming the folder and every expected file when one is absent."""
    layout = TEXT_LAYOUTS[name]
    folder = os.path.join(root, layout.folder)
    parts = layout.train + layout.test
    missing = [p for p in parts if not os.path.exists(os.path.join(folder, p))]
    if missing:
        raise DataMissingError(
            f"data.root={root}: {name} needs {folder}/ with {', '.join(parts)} "
            f"(missing: {', '.join(missing)}); {layout.how}"
        )


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _review_files(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".txt"))


def count_examples(name: str, root: str) -> tuple[int, int]:
    """(train, test) example counts from line or file counts; nothing is parsed."""
    layout = TEXT_LAYOUTS[name]
    header = 1 if name == "sst2" else 0

    def count(parts: tuple[str, ...]) -> int:
        paths = [os.path.join(root, layout.folder, p) for p in parts]
        if name == "imdb":
            return sum(len(_review_files(p)) for p in paths)
        return sum(_lines(p) - header for p in paths)

    return count(layout.train), count(layout.test)


# ---------------------------------------------------------------- readers: path → (texts, labels)


def read_agnews(path: str, **_) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), 1):
            if len(row) != 3 or row[0].strip() not in ("1", "2", "3", "4"):
                raise TextFormatError(
                    f"{path}:{line}: expected a label 1–4, a title and a description, got {row!r:.80}"
                )
            texts.append(f"{row[1]} {row[2]}")
            labels.append(int(row[0]) - 1)
    return texts, labels


def read_sst2(path: str, **_) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, [])
        if "sentence" not in header or "label" not in header:
            raise TextFormatError(
                f"{path}:1: expected a header with the columns sentence and label, got {header!r:.80}"
            )
        at_text, at_label = header.index("sentence"), header.index("label")
        for line, row in enumerate(rows, 2):
            if len(row) != len(header) or row[at_label] not in ("0", "1"):
                raise TextFormatError(f"{path}:{line}: expected {len(header)} tab-separated columns, label 0 or 1")
            texts.append(row[at_text])
            labels.append(int(row[at_label]))
    return texts, labels


def read_imdb_folder(path: str, **_) -> tuple[list[str], list[int]]:
    label = {"neg": 0, "pos": 1}[os.path.basename(path)]
    texts = []
    for name in _review_files(path):
        with open(os.path.join(path, name), encoding="utf-8", errors="replace") as f:
            texts.append(HTML_BREAK.sub(" ", f.read()))
    return texts, [label] * len(texts)


TREC_COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


def read_trec_lines(path: str) -> list[tuple[str, str]]:
    """(fine label `COARSE:fine`, question) per line. The files hold a few non-UTF-8 bytes: latin-1."""
    out = []
    with open(path, encoding="latin-1") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            label, _, question = text.strip().partition(" ")
            if label.partition(":")[0] not in TREC_COARSE or ":" not in label or not question:
                raise TextFormatError(
                    f"{path}:{line}: expected `COARSE:fine question`, COARSE one of {'/'.join(TREC_COARSE)}"
                )
            out.append((label, question))
    return out


# ---------------------------------------------------------------- the generated word-order task

POSITIVE = ("good", "great", "fine", "nice", "lovely", "superb", "pleasant", "brilliant")
NEGATIVE = ("bad", "awful", "poor", "dull", "boring", "terrible", "weak", "nasty")
NEGATORS = ("not", "never")
FILLERS = tuple(
    "the a this that film movie story plot cast acting music scene ending script it was is felt seemed "
    "quite rather very really and but also then so overall i we they found thought its".split()
)


def text_demo(size: int, seed: int) -> tuple[list[str], list[int]]:
    """Reviews holding one positive word, one negative word and one negator right before one of them,
    among 6–40 filler words. The label is the polarity left un-negated: `not bad … good` is positive (1),
    `bad … not good` negative (0). Every review holds the same kinds of words in the same numbers
    whatever its label, so the words' counts carry no information about it: only their order does."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(size):
        label = rng.randrange(2)
        words = [rng.choice(FILLERS) for _ in range(rng.randint(6, 40))]
        good, bad = rng.choice(POSITIVE), rng.choice(NEGATIVE)
        negated = [rng.choice(NEGATORS), bad if label == 1 else good]
        plain = good if label == 1 else bad
        first, second = (negated, [plain]) if rng.random() < 0.5 else ([plain], negated)
        i = rng.randint(0, len(words))
        j = rng.randint(i, len(words))
        words = words[:i] + first + words[i:j] + second + words[j:]
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


# ---------------------------------------------------------------- the splits of each dataset


def load_texts(
    name: str, root: str, fine_labels: bool = False, train_size: int = 4000, test_size: int = 1000
) -> tuple[tuple[list[str], list[int]], tuple[list[str], list[int]]]:
    """((train texts, labels), (test texts, labels))."""
    if name == "text_demo":  # fixed data for every run seed (like digits' split); train and test drawn apart
        return text_demo(train_size, seed=1), text_demo(test_size, seed=2)
    check_text_dataset(name, root)
    layout = TEXT_LAYOUTS[name]
    if name == "trec":
        return trec_splits(os.path.join(root, layout.folder), layout, fine_labels)
    reader = {"agnews": read_agnews, "sst2": read_sst2, "imdb": read_imdb_folder}[name]
    splits = []
    for parts in (layout.train, layout.test):
        texts, labels = [], []
        for part in parts:
            t, y = reader(os.path.join(root, layout.folder, part))
            texts += t
            labels += y
        splits.append((texts, labels))
    return splits[0], splits[1]


def trec_splits(folder: str, layout: TextLayout, fine_labels: bool):
    train, test = (read_trec_lines(os.path.join(folder, p[0])) for p in (layout.train, layout.test))
    if fine_labels:
        names = sorted({label for label, _ in train})  # the fine labels the training file holds
    else:
        names = list(TREC_COARSE)
        train, test = ([(label.partition(":")[0], q) for label, q in split] for split in (train, test))
    index = {n: i for i, n in enumerate(names)}
    unseen = sorted({label for label, _ in test} - index.keys())
    if unseen:
        raise TextFormatError(f"{folder}/{layout.test[0]}: labels the training file lacks: {', '.join(unseen)}")
    return tuple(([q for _, q in split], [index[label] for label, _ in split]) for split in (train, test))


# ---------------------------------------------------------------- GloVe


def read_glove(path: str, words: list[str], dim: int) -> dict:
    """{word: vector} for the given words found in a GloVe text file (`word v1 … v_dim` per line)."""
    import torch

    wanted, found = set(words), {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line, text in enumerate(f, 1):
            parts = text.rstrip().split(" ")
            word = " ".join(parts[:-dim])  # a few GloVe releases hold words with spaces
            if len(parts) <= dim:
                raise TextFormatError(f"{path}:{line}: expected a word and {dim} numbers, got {len(parts)} fields")
            if word in wanted:
                try:
                    found[word] = torch.tensor([float(v) for v in parts[-dim:]])
                except ValueError:
                    raise TextFormatError(f"{path}:{line}: {word}'s vector holds a non-number") from None
    return found
