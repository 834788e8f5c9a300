"""The text readers on small files in each dataset's real format, the tokenizer and vocabulary rules,
GloVe, and one-line errors for missing and malformed files."""

from __future__ import annotations

import re
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from attnexp.data.files import DataMissingError
from attnexp.data.text import TextFormatError, text_demo
from attnexp.data.text_datamodule import TextDataModule
from attnexp.models.text_cct import TextCCT


def words_of(text: str) -> list[str]:
    """The stated rule, written again: lower case, runs of letters/digits with inner apostrophes."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower())


def expected_ids(train_texts: list[str], text: str, seq_len: int, min_freq: int, max_size: int) -> list[int]:
    counts = Counter(w for t in train_texts for w in words_of(t))
    kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))[: max_size - 2]
    index = {w: i + 2 for i, w in enumerate(kept)}  # 0 <unk>, 1 <pad>
    ids = [index.get(w, 0) for w in words_of(text)][:seq_len]
    return ids + [1] * (seq_len - len(ids))


def loaded(name: str, root, **kwargs) -> TextDataModule:
    dm = TextDataModule(name, root=str(root), **kwargs)
    dm.check()
    dm.setup()
    return dm


def assert_encoded(dm, train_texts, test_texts, labels_train, labels_test, seq_len, min_freq=1, max_size=20000):
    for split, texts, labels in ((dm.train, train_texts, labels_train), (dm.test, test_texts, labels_test)):
        assert split.images.dtype == torch.long and split.images.shape == (len(texts), seq_len)
        assert split.images.tolist() == [expected_ids(train_texts, t, seq_len, min_freq, max_size) for t in texts]
        assert split.labels.tolist() == labels


AGNEWS_TRAIN = [
    ("3", "Wall St. Bears Claw Back", "Reuters - Short-sellers, Wall Street's dwindling band"),
    ("4", 'Google "IPO" delayed', "The search company's offering, again"),
    ("1", "Talks resume", "Diplomats meet in Geneva, talks go on"),
]


def write_agnews(root, train=AGNEWS_TRAIN, test=(("2", "Cup final", "Talks of a Wall St. final"),)):
    folder = root / "ag_news_csv"
    folder.mkdir(parents=True)
    for name, rows in (("train.csv", train), ("test.csv", test)):
        lines = ['"' + '","'.join(c.replace('"', '""') for c in row) + '"' for row in rows]
        (folder / name).write_text("\n".join(lines) + "\n")


def test_agnews_csv(tmp_path):
    write_agnews(tmp_path)
    dm = loaded("agnews", tmp_path, num_classes=4, seq_len=8, min_freq=1, max_size=10)
    train = [f"{r[1]} {r[2]}" for r in AGNEWS_TRAIN]
    assert_encoded(dm, train, ["Cup final Talks of a Wall St. final"], [2, 3, 0], [1], 8, max_size=10)
    assert dm.vocabulary.words[:2] == ["<unk>", "<pad>"] and len(dm.vocabulary) == 10
    assert dm.split_sizes() == (3, 1)


def test_sst2_tsv_with_header_and_dev_as_test(tmp_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").write_text("sentence\tlabel\nit 's a charming journey \t1\nbad , bad movie \t0\nbad \t0\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\na charming , unknown film \t1\n")
    dm = loaded("sst2", tmp_path, seq_len=5, min_freq=2)
    train = ["it 's a charming journey ", "bad , bad movie ", "bad "]
    assert_encoded(dm, train, ["a charming , unknown film "], [1, 0, 0], [1], 5, min_freq=2)
    assert dm.vocabulary.words == ["<unk>", "<pad>", "bad"]


def test_imdb_folders(tmp_path):
    texts = {
        ("train", "pos"): ["A great film.<br /><br />Loved it", "great"],
        ("train", "neg"): ["Dull.<br/>Very dull"],
        ("test", "pos"): ["great fun"],
        ("test", "neg"): ["dull and long"],
    }
    for (split, label), reviews in texts.items():
        (tmp_path / "aclImdb" / split / label).mkdir(parents=True)
        for i, review in enumerate(reviews):
            (tmp_path / "aclImdb" / split / label / f"{i}_7.txt").write_text(review)
    dm = loaded("imdb", tmp_path, seq_len=6)
    train = ["A great film.  Loved it", "great", "Dull. Very dull"]  # pos files first, then neg
    assert_encoded(dm, train, ["great fun", "dull and long"], [1, 1, 0], [1, 0], 6)
    assert "br" not in dm.vocabulary.words


TREC_TRAIN = "DESC:manner How did serfdom develop ?\nNUM:dist How far is it ?\nHUM:ind Who was he ?\nNUM:date When ?\n"
TREC_TEST = "NUM:dist How far ?\nHUM:ind Who ?\n"


def write_trec(root, train=TREC_TRAIN, test=TREC_TEST):
    (root / "trec").mkdir()
    (root / "trec" / "train_5500.label").write_bytes(train.encode("latin-1"))
    (root / "trec" / "TREC_10.label").write_bytes(test.encode("latin-1"))


def test_trec_coarse_and_fine_labels(tmp_path):
    write_trec(tmp_path, train=TREC_TRAIN + "ENTY:other Caf\xe9 names ?\n")
    coarse = loaded("trec", tmp_path, num_classes=6, seq_len=6)
    questions = ["How did serfdom develop ?", "How far is it ?", "Who was he ?", "When ?", "Caf\xe9 names ?"]
    # the six coarse labels in their fixed order ABBR DESC ENTY HUM LOC NUM
    assert_encoded(coarse, questions, ["How far ?", "Who ?"], [1, 5, 3, 5, 2], [5, 3], 6)
    fine = loaded("trec", tmp_path, num_classes=50, seq_len=6, fine_labels=True)
    names = sorted(["DESC:manner", "NUM:dist", "HUM:ind", "NUM:date", "ENTY:other"])
    assert fine.train.labels.tolist() == [
        names.index(n) for n in ["DESC:manner", "NUM:dist", "HUM:ind", "NUM:date", "ENTY:other"]
    ]
    assert fine.test.labels.tolist() == [names.index("NUM:dist"), names.index("HUM:ind")]


def test_missing_files_name_the_folder_and_the_expected_files(tmp_path):
    for name, expected in (
        ("agnews", "ag_news_csv/ with train.csv, test.csv"),
        ("sst2", "SST-2/ with train.tsv, dev.tsv"),
        ("imdb", "aclImdb/ with train/pos, train/neg, test/pos, test/neg"),
        ("trec", "trec/ with train_5500.label, TREC_10.label"),
    ):
        with pytest.raises(DataMissingError) as err:
            TextDataModule(name, root=str(tmp_path)).check()
        assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name,write,where",
    [
        ("agnews", lambda r: write_agnews(r, train=AGNEWS_TRAIN + [("5", "x", "y")]), "train.csv:4"),
        ("agnews", lambda r: write_agnews(r, test=[("1", "only a title")]), "test.csv:1"),
        ("trec", lambda r: write_trec(r, test="What is it ?\n"), "TREC_10.label:1"),
        ("trec", lambda r: write_trec(r, test="LOC:city Where ?\n"), "labels the training file lacks: LOC:city"),
    ],
)
def test_malformed_content_is_one_line_naming_file_and_line(tmp_path, name, write, where):
    write(tmp_path)
    with pytest.raises(TextFormatError) as err:
        TextDataModule(name, root=str(tmp_path), num_classes=50, fine_labels=True).setup()
    assert where in str(err.value) and "\n" not in str(err.value)


def test_sst2_without_its_header_is_one_line(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("a fine film\t1\n")
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    with pytest.raises(TextFormatError, match=r"train.tsv:1: expected a header"):
        TextDataModule("sst2", root=str(tmp_path)).setup()


def test_more_labels_than_num_classes_is_one_line(tmp_path):
    write_agnews(tmp_path)
    with pytest.raises(TextFormatError, match=r"data.num_classes=2: the agnews files hold 4 labels"):
        TextDataModule("agnews", root=str(tmp_path), num_classes=2).setup()


# ---------------------------------------------------------------- GloVe


def test_glove_vectors_fill_the_vocabulary_missing_words_random_and_frozen_on_request(tmp_path, capsys):
    write_agnews(tmp_path)
    glove = tmp_path / "glove.txt"
    vectors = {"wall": [0.5] * 6, "talks": [-1.0, 2, 3, 4, 5, 6], "elsewhere": [9.0] * 6}
    glove.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()))
    model = TextCCT(vocab_size=30, num_classes=4, seq_len=8, word_embedding_dim=6, dim=8, num_heads=2,
                    embeddings="glove", embeddings_path=str(glove), freeze_embeddings=True)  # fmt: skip
    dm = TextDataModule("agnews", root=str(tmp_path), num_classes=4, seq_len=8, max_size=30)
    dm.trainer = SimpleNamespace(
        lightning_module=SimpleNamespace(model=model), strategy=SimpleNamespace(root_device=torch.device("cpu"))
    )
    dm.setup("fit")
    table, words = model.embedder.embeddings.weight, dm.vocabulary.words
    for word in ("wall", "talks"):
        assert table[words.index(word)].tolist() == vectors[word]
    assert (table[1] == 0).all() and not table.requires_grad
    assert f"2 of {len(words)} vocabulary words found" in capsys.readouterr().err
    before = table.clone()
    model.load_state_dict(model.state_dict())
    model.use_vocabulary(words)  # a loaded checkpoint's vectors are never replaced
    assert torch.equal(table, before)


def test_glove_needs_its_file_at_start_up():
    from attnexp.errors import ArgumentError

    with pytest.raises(ArgumentError, match="embeddings_path=null: embeddings=glove needs a GloVe"):
        TextCCT(vocab_size=10, num_classes=2, embeddings="glove")


# ---------------------------------------------------------------- the generated task


def test_text_demo_word_counts_carry_no_label_information():
    """The label is the polarity of the word the negator does not precede: a bag-of-words model
    sees the same kinds of words, one each, whatever the label."""
    texts, labels = text_demo(400, seed=3)
    for text, label in zip(texts, labels):
        words = text.split()
        kinds = Counter("pos" if w in POS else "neg" if w in NEG else "not" if w in ("not", "never") else "filler"
                        for w in words)  # fmt: skip
        assert kinds["pos"] == kinds["neg"] == kinds["not"] == 1
        negated = words[words.index(next(w for w in words if w in ("not", "never"))) + 1]
        assert label == (1 if negated in NEG else 0)
    assert 0.4 < sum(labels) / len(labels) < 0.6


POS = {"good", "great", "fine", "nice", "lovely", "superb", "pleasant", "brilliant"}
NEG = {"bad", "awful", "poor", "dull", "boring", "terrible", "weak", "nasty"}
