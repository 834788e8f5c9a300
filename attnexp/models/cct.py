"""CCT, CVT and ViT-Lite, as in the official Compact-Transformers code (and plain ViTs: layout=pre).

Same state_dict keys, shapes and function (see tests/reference/): a
tokenizer, then a `classifier` holding positional embedding, blocks, final
norm, the pooling (SeqPool or class token) and the linear head. One class
serves all three families; the presets in conf/model/ pick the numbers.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.errors import require, require_rate
from attnexp.layers.attention import Attention
from attnexp.layers.block import TransformerBlock, attention_per_block, drop_path_rates
from attnexp.layers.randomness import Dropout
from attnexp.layers.tokenizer import ConvTokenizer, conv_stride_padding, make_positional_embedding
from attnexp.layers.value_maps import Identity

POOLINGS = ("seqpool", "cls")
TOKENIZERS = ("conv", "patch")


def init_transformer_weights(module: nn.Module) -> None:
    """Linear: trunc-normal std 0.02, zero bias; LayerNorm: 1 / 0 (the official init)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TransformerClassifier(nn.Module):
    """Tokens (B, N, dim) → logits. Holds everything the official `classifier.*` keys name.

    Padded sequences (the text models) pass `mask`, (B, N) bool, True at real tokens:
    every block's attention gets it, and SeqPool's value map soft-maxes over the real
    tokens only. SeqPool's weights cover every position, padding included, as in the
    official MaskedTransformerClassifier; `seqpool_mask=True` gives padded positions
    none. `padding_row`: the positional table has one extra leading row that no token
    uses (zero in the sine table), as the official text models' table has.
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float,
        num_classes: int,
        attn_layer: Callable[..., nn.Module],
        pooling: str = "seqpool",
        seqpool_value: nn.Module | None = None,
        positional_embedding: str = "learnable",
        dropout: float = 0.0,
        attn_drop: float = 0.1,
        drop_path: float = 0.1,
        layout: str = "cct",
        qkv_bias: bool = False,
        seqpool_mask: bool = False,
        padding_row: bool = False,
    ):
        super().__init__()
        require(pooling in POOLINGS, "pooling", pooling, f"one of {', '.join(POOLINGS)}")
        for name, value in (
            ("dim", dim),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("num_classes", num_classes),
        ):
            require(value >= 1, name, value, "must be ≥ 1")
        require(mlp_ratio > 0, "mlp_ratio", mlp_ratio, "must be > 0")
        for name, rate in (("dropout", dropout), ("attn_drop", attn_drop), ("drop_path", drop_path)):
            require_rate(name, rate)
        self.seq_pool = pooling == "seqpool"
        self.seqpool_mask = seqpool_mask
        self.seqpool_stats: dict | None = None  # a dict while the attention_stats callback collects
        if self.seq_pool:
            self.attention_pool = nn.Linear(dim, 1)
            self.seqpool_value = seqpool_value if seqpool_value is not None else Identity()
        else:
            self.class_emb = nn.Parameter(torch.zeros(1, 1, dim))
            num_tokens += 1
        self.positional_emb = make_positional_embedding(positional_embedding, num_tokens, dim)
        self.padding_row = padding_row and self.positional_emb is not None
        if self.padding_row:
            table = self.positional_emb
            self.positional_emb = nn.Parameter(F.pad(table.data, (0, 0, 1, 0)), requires_grad=table.requires_grad)
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim, num_heads, int(dim * mlp_ratio), attn, dropout, attn_drop, rate, layout, qkv_bias=qkv_bias
            )
            for attn, rate in zip(attention_per_block(attn_layer, num_layers), drop_path_rates(num_layers, drop_path))
        )
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        self.apply(init_transformer_weights)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.seq_pool:
            x = torch.cat((self.class_emb.expand(x.shape[0], -1, -1), x), dim=1)
            if mask is not None:  # the class token is real
                mask = torch.cat((mask.new_ones(mask.shape[0], 1), mask), dim=1)
        if self.positional_emb is not None:
            x = x + (self.positional_emb[:, 1:] if self.padding_row else self.positional_emb)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x) if mask is None else block(x, attn_mask=mask)
        return self.norm(x)  # (B, N, dim)

    def pool(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.seq_pool:
            return x[:, 0]
        # w: (B, N, 1) softmax over tokens; pooled = wᵀ · f(x)
        scores = self.attention_pool(x)
        if mask is not None and self.seqpool_mask:
            scores = scores.masked_fill(~mask[..., None], torch.finfo(scores.dtype).min)
        w = F.softmax(scores, dim=1)
        fx = self.seqpool_value(x) if mask is None else self.seqpool_value(x, mask[..., None])
        if self.seqpool_stats is not None:
            self._record_seqpool(x, fx, w)
        return (w.transpose(-1, -2) @ fx).squeeze(-2)

    @torch.no_grad()
    def _record_seqpool(self, x: torch.Tensor, fx: torch.Tensor, w: torch.Tensor) -> None:
        """What seed 000 printed for its SeqPool lines: the range and mean of x and of f(x), and the
        entropy of SeqPool's weights over the tokens (log N: uniform; 0: one token)."""
        w = w.float().squeeze(-1)
        entropy = -(w * w.clamp_min(1e-12).log()).sum(-1).mean()
        self.seqpool_stats.update(
            x_min=x.min(), x_max=x.max(), x_mean=x.float().mean(),
            fx_min=fx.min(), fx_max=fx.max(), fx_mean=fx.float().mean(), weight_entropy=entropy,
        )  # fmt: skip

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x, mask), mask))


class CompactTransformer(nn.Module):
    """CCT (`tokenizer=conv`), CVT (`patch` + seqpool) and ViT-Lite (`patch` + cls)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        dim: int = 256,
        num_layers: int = 7,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        tokenizer: str = "conv",
        kernel_size: int = 3,
        n_conv_layers: int = 1,
        patch_size: int = 4,
        pooling: str = "seqpool",
        positional_embedding: str = "learnable",
        dropout: float = 0.0,
        attn_drop: float = 0.1,
        drop_path: float = 0.1,
        attn_layer: Callable[..., nn.Module] | None = None,
        seqpool_value: nn.Module | None = None,
        layout: str = "cct",
        qkv_bias: bool = False,
    ):
        super().__init__()
        require(tokenizer in TOKENIZERS, "tokenizer", tokenizer, f"one of {', '.join(TOKENIZERS)}")
        require(image_size >= 1, "image_size", image_size, "must be ≥ 1")
        require(in_channels >= 1, "in_channels", in_channels, "must be ≥ 1")
        if tokenizer == "conv":
            require(kernel_size >= 1, "kernel_size", kernel_size, "must be ≥ 1")
            require(n_conv_layers >= 1, "n_conv_layers", n_conv_layers, "must be ≥ 1")
            stride, padding = conv_stride_padding(kernel_size)
            self.tokenizer = ConvTokenizer(in_channels, dim, kernel_size, stride, padding, n_conv_layers)
        else:
            ok = patch_size >= 1 and image_size % patch_size == 0
            require(ok, "patch_size", patch_size, f"must divide the image size {image_size}")
            self.tokenizer = ConvTokenizer(
                in_channels, dim, patch_size, patch_size, 0, max_pool=False, activation=False, conv_bias=True
            )
        self.classifier = TransformerClassifier(
            num_tokens=self.tokenizer.sequence_length(in_channels, image_size),
            dim=dim,
            num_layers=num_layers,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=num_classes,
            attn_layer=attn_layer or Attention,
            pooling=pooling,
            seqpool_value=seqpool_value,
            positional_embedding=positional_embedding,
            dropout=dropout,
            attn_drop=attn_drop,
            drop_path=drop_path,
            layout=layout,
            qkv_bias=qkv_bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.tokenizer(x))
