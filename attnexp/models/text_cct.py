"""Text CCT (text_cct_2/4/6), as in the official Compact-Transformers `src/text/`.

Word ids (B, L) → an `embedder` (word vectors, zero at padded words) → a
`tokenizer` (one convolution across whole word vectors, ReLU, max-pool along the
sequence) → the vision models' `classifier` (attnexp.models.cct.TransformerClassifier)
with a padding mask. Same state_dict keys, shapes and trainable counts as the
official models (tests/reference/official_text_cct.json), so an official text
checkpoint loads strictly.

The mask is not an input: a word is real where its id is not `<pad>` (1). It is
carried through the tokenizer as the official code carries it (a ones-kernel
convolution and the same max-pool, then > 0). Two defects of the official code at
its reference commit, whose evident intent is used here:
- its positional table has one extra leading zero row (n+1 rows for n tokens), so
  adding it to the tokens fails; the table is kept at that shape (the key loads)
  and the n rows after the zero row are added;
- its tokenizer returns the mask as a (B, n, 1) float, which its attention's shape
  assert rejects, so its masked forward never runs; here it is the (B, n) bool the
  attention contract (attnexp/layers/contract.py) takes.
Masked attention follows the official MaskedAttention (attnexp/layers/attention.py)
and SeqPool pools over every position, padding included, unless `seqpool_mask`.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.errors import require
from attnexp.layers.attention import Attention
from attnexp.models.cct import TransformerClassifier

UNK, PAD = 0, 1  # the vocabulary's first two entries (attnexp/data/text.py)
EMBEDDINGS = ("learned", "glove")


class Embedder(nn.Module):
    """Ids (B, L) → word vectors (B, L, d), multiplied by the mask (official `embedder.embeddings`)."""

    def __init__(self, vocab_size: int, word_dim: int, freeze: bool = False):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, word_dim, padding_idx=PAD)
        self.embeddings.weight.requires_grad_(not freeze)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.embeddings(ids) * mask[..., None]


class TextTokenizer(nn.Module):
    """Word vectors as a one-channel image (B, 1, L, d) → tokens (B, n, dim), and the mask (B, L) → (B, n).

    Conv2d(1, dim, (k, d), stride (s, 1), padding (p, 0), no bias) spans whole word
    vectors, so it slides along the sequence only; ReLU; MaxPool2d((2, 1), (2, 1), (1, 0)).
    The official code fixes the kernel's width at 300 (it ignores the width it is
    given); here it is `word_dim`, which the official models hold at 300.

    The Conv2d holds the official parameter (its key and shape); it is applied as the
    Conv1d it equals, the vector width as channels: a kernel as wide as the vectors
    slides along the sequence only, and on the CPU conv1d runs that ~3× faster than
    a one-channel Conv2d (~10× faster than a channels-last one).
    """

    def __init__(
        self,
        word_dim: int,
        dim: int,
        kernel_size: int,
        stride: int,
        padding: int,
        pool_kernel: int = 2,
        pool_stride: int = 2,
        pool_padding: int = 1,
    ):
        super().__init__()
        self.conv_layers = nn.Sequential(
            nn.Conv2d(1, dim, (kernel_size, word_dim), (stride, 1), (padding, 0), bias=False),
            nn.ReLU(),
            nn.MaxPool2d((pool_kernel, 1), (pool_stride, 1), (pool_padding, 0)),
        )
        nn.init.kaiming_normal_(self.conv_layers[0].weight)
        self.conv = (kernel_size, stride, padding)
        self.pool = (pool_kernel, pool_stride, pool_padding)

    def propagate_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) bool → (B, n) bool: a token is real when its pooling window covers a conv
        window that covers a real word (the official ones-kernel conv, max-pool, > 0)."""
        k, s, p = self.conv
        count = F.conv1d(mask[:, None].float(), mask.new_ones(1, 1, k, dtype=torch.float), stride=s, padding=p)
        return F.max_pool1d(count, *self.pool)[:, 0] > 0

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conv, relu, pool = self.conv_layers
        k, s, p = self.conv
        weight = conv.weight.squeeze(1).transpose(1, 2)  # (dim, 1, k, d) → (dim, d, k)
        tokens = F.conv1d(x.squeeze(1).transpose(1, 2), weight, stride=s, padding=p)  # (B, d, L) → (B, dim, L')
        tokens = pool(relu(tokens)[..., None]).squeeze(-1).transpose(1, 2)  # (B, dim, n) → (B, n, dim)
        mask = self.propagate_mask(mask)
        return tokens * mask[..., None], mask

    def sequence_length(self, seq_len: int) -> int:
        k, s, p = self.conv
        conv = (seq_len + 2 * p - k) // s + 1
        pk, ps, pp = self.pool
        return (conv + 2 * pp - pk) // ps + 1


class TextCCT(nn.Module):
    """text_cct_2/4/6: `embedder`, `tokenizer`, `classifier` (the official keys)."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        seq_len: int = 64,
        word_embedding_dim: int = 300,
        dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 2,
        mlp_ratio: float = 1.0,
        kernel_size: int = 4,
        positional_embedding: str = "sine",
        dropout: float = 0.0,
        attn_drop: float = 0.1,
        drop_path: float = 0.1,
        attn_layer: Callable[..., nn.Module] | None = None,
        seqpool_value: nn.Module | None = None,
        seqpool_mask: bool = False,
        embeddings: str = "learned",
        embeddings_path: str | None = None,
        freeze_embeddings: bool = False,
    ):
        super().__init__()
        require(vocab_size > PAD, "vocab_size", vocab_size, "must hold <unk> and <pad> (≥ 2)")
        require(kernel_size >= 1, "kernel_size", kernel_size, "must be ≥ 1")
        require(embeddings in EMBEDDINGS, "embeddings", embeddings, f"one of {', '.join(EMBEDDINGS)}")
        if embeddings == "glove":
            ok = bool(embeddings_path) and os.path.isfile(embeddings_path)
            require(ok, "embeddings_path", embeddings_path, "embeddings=glove needs a GloVe .txt file here")
        self.embeddings_kind, self.embeddings_path = embeddings, embeddings_path
        self.vectors_fixed = False  # set once weights are loaded or vectors read: never read them again
        self._register_load_state_dict_pre_hook(self._weights_loaded)
        self.seq_len = seq_len
        self.embedder = Embedder(vocab_size, word_embedding_dim, freeze_embeddings)
        # the official rule of CCT's tokenizer, as for the vision models: stride max(1, k//2 − 1), padding max(1, k//2)
        self.tokenizer = TextTokenizer(
            word_embedding_dim, dim, kernel_size, max(1, kernel_size // 2 - 1), max(1, kernel_size // 2)
        )
        tokens = self.tokenizer.sequence_length(seq_len)
        require(tokens >= 1, "seq_len", seq_len, "too short for the tokenizer's convolution and pooling")
        self.classifier = TransformerClassifier(
            num_tokens=tokens,
            dim=dim,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=num_classes,
            attn_layer=attn_layer or Attention,
            seqpool_value=seqpool_value,
            positional_embedding=positional_embedding,
            dropout=dropout,
            attn_drop=attn_drop,
            drop_path=drop_path,
            seqpool_mask=seqpool_mask,
            padding_row=True,
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != PAD  # (B, L)
        words = self.embedder(ids, mask)  # (B, L, d)
        tokens, mask = self.tokenizer(words[:, None], mask)  # (B, n, dim), (B, n)
        return self.classifier(tokens, mask)

    def example_input(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """Word ids of the data's shape: the first example full, the others padded after a few words."""
        vocab, shape = self.embedder.embeddings.num_embeddings, (batch, self.seq_len)
        if vocab > PAD + 1:
            ids = torch.randint(PAD + 1, vocab, shape, device=device)
        else:
            ids = torch.full(shape, UNK, device=device)
        ids[1:, 3:] = PAD
        return ids

    # ------------------------------------------------------------ pretrained word vectors
    def _weights_loaded(self, *args, **kwargs) -> None:
        self.vectors_fixed = True

    def use_vocabulary(self, words: list[str]) -> None:
        """Called with the vocabulary (id → word) before training: embeddings=glove reads the
        vectors of these words; a loaded checkpoint's vectors are never replaced."""
        if self.embeddings_kind != "glove" or self.vectors_fixed:
            return
        from attnexp.data.text import read_glove

        table = self.embedder.embeddings.weight
        vectors = read_glove(self.embeddings_path, words[: table.shape[0]], table.shape[1])
        with torch.no_grad():
            found = torch.stack(list(vectors.values())) if vectors else table.new_ones(1, table.shape[1])
            # missing words: random vectors at the found vectors' scale, not nn.Embedding's N(0, 1)
            table.normal_(0.0, found.std().item())
            for i, word in enumerate(words[: table.shape[0]]):
                if word in vectors:
                    table[i] = vectors[word]
            table[PAD] = 0.0
        self.vectors_fixed = True
        self.glove_found = len(vectors)
        print(
            f"attnexp: GloVe: {len(vectors):,} of {len(words):,} vocabulary words found in {self.embeddings_path}; "
            "the others start random",
            file=sys.stderr,
        )
