"""Seed 003's ViT, DeepViT and Hybrid (vit-pytorch style), on the shared block and attention.

ViT: cut the image into p×p patches → LayerNorm(patch_dim) → Linear → LayerNorm(dim),
prepend a class token, add a learnable positional embedding, embedding dropout,
`num_layers` pre-norm blocks (qkv without bias, `num_heads` × `head_dim`, MLP
with GELU), final LayerNorm, linear head on the class token.
DeepViT is the same with `reattention=True` (a learned heads×heads mix of the
attention maps, then LayerNorm over heads), so it combines with any attention
choice. Hybrid: the CNN's conv stem, then this ViT over its 64-channel map.

Two seed quirks are reproducible (docs/seed003.md):
- `declared_image_size`: the seed told the ViT the pixel count as its side
  (784 on MNIST), so the positional table holds (784/14)² + 1 rows while the
  image yields 4 patches; only the first N + 1 rows are ever used, as in
  vit-pytorch. `pixel_count` reproduces it on any input; null is the real side.
- the Hybrid's 100-class head lives in conf/model/hybrid_seed003.yaml.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from attnexp.errors import ArgumentError, require, require_rate
from attnexp.layers.attention import Attention
from attnexp.layers.block import TransformerBlock, as_partial, attention_per_block
from attnexp.layers.randomness import Dropout
from attnexp.models.cnn import ConvStem

PIXEL_COUNT = "pixel_count"


def declared_side(declared: int | str | None, side: int) -> int:
    """The side the positional table is sized for: the real one, the seed's side², or a number."""
    if declared is None:
        return side
    if declared == PIXEL_COUNT:
        return side * side
    if isinstance(declared, str) or isinstance(declared, bool):
        raise ArgumentError("declared_image_size", declared, f"null, an integer or {PIXEL_COUNT}")
    return int(declared)


class PatchEmbedding(nn.Module):
    """(B, C, H, W) → (B, N, dim): p×p patches, row-major, each flattened in (p1 p2 c) order."""

    def __init__(self, in_channels: int, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        patch_dim = in_channels * patch_size * patch_size
        self.norm_in = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.patch_size
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p1, p2, C)
        x = x.reshape(B, (H // p) * (W // p), p * p * C)  # (B, N, patch_dim), patches row-major
        return self.norm_out(self.proj(self.norm_in(x)))


class ViT(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        patches_per_side: int = 2,
        declared_image_size: int | str | None = None,
        dim: int = 128,
        num_layers: int = 6,
        num_heads: int = 4,
        head_dim: int = 64,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        attn_drop: float = 0.1,
        emb_dropout: float = 0.1,
        reattention: bool = False,
        attn_layer: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        ok = patches_per_side >= 1 and image_size % patches_per_side == 0
        require(ok, "patches_per_side", patches_per_side, f"must divide the image side {image_size}")
        for name, value in (("dim", dim), ("num_layers", num_layers), ("num_heads", num_heads), ("head_dim", head_dim)):
            require(value >= 1, name, value, "must be ≥ 1")
        for name, rate in (("dropout", dropout), ("attn_drop", attn_drop), ("emb_dropout", emb_dropout)):
            require_rate(name, rate)
        patch_size = image_size // patches_per_side
        declared = declared_side(declared_image_size, image_size)
        require(
            declared >= image_size and declared % patch_size == 0,
            "declared_image_size",
            declared_image_size,
            f"null, {PIXEL_COUNT}, or an integer ≥ the image side {image_size} and a multiple of the patch {patch_size}",
        )
        attn_layer = attn_layer or Attention
        if reattention:  # DeepViT mixes the attention maps, so the attention module must have them
            cls = as_partial(attn_layer).func
            require(
                getattr(cls, "has_attention_maps", False),
                "reattention",
                reattention,
                f"re-attention mixes attention maps; {cls.__name__} has none (choose another attention or model)",
            )
        self.patch_embed = PatchEmbedding(in_channels, patch_size, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        # sized from the declared side: the seed's table is far longer than the N + 1 rows in use
        self.pos_embedding = nn.Parameter(torch.randn(1, (declared // patch_size) ** 2 + 1, dim))
        self.dropout = Dropout(emb_dropout)
        # reattention is passed only when on: attention classes without that keyword still plug in
        factories = attention_per_block(attn_layer, num_layers, **({"reattention": True} if reattention else {}))
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim, num_heads, int(dim * mlp_ratio), attn, dropout, attn_drop, layout="pre", head_dim=head_dim
            )
            for attn in factories
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, N, dim)
        B, N, _ = x.shape
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)  # (B, N + 1, dim)
        x = self.dropout(x + self.pos_embedding[:, : N + 1])
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[:, 0])


class Hybrid(nn.Module):
    """ConvStem (two convs + max-pool) → ViT over its (B, 64, S', S') map.

    Every keyword besides num_classes, in_channels and image_size goes to the ViT.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 28, **vit_options):
        super().__init__()
        side = ConvStem.output_side(image_size)
        require(side >= 1, "image_size", image_size, "the conv stem needs at least 6 pixels")
        self.features = ConvStem(in_channels)
        channels = self.features.out_channels
        self.vit = ViT(num_classes, in_channels=channels, image_size=side, **vit_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(self.features(x))
