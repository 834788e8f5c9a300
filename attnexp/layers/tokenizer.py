"""Image → token sequence (B, C, H, W) → (B, N, dim)."""

from __future__ import annotations

import torch
from torch import nn

from attnexp.errors import ArgumentError


class ConvTokenizer(nn.Module):
    """CCT's convolutional tokenizer (and, with one conv and no pooling, CVT/ViT-Lite's patcher).

    Each layer: Conv2d → activation → MaxPool2d(3, 2, 1). Intermediate layers have
    `mid_channels` channels, the last one `dim`. Key names follow the official
    `tokenizer.conv_layers.{i}.0.weight`.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        kernel_size: int,
        stride: int,
        padding: int,
        n_conv_layers: int = 1,
        mid_channels: int = 64,
        max_pool: bool = True,
        activation: bool = True,
        conv_bias: bool = False,
        pool_kernel: int = 3,
        pool_stride: int = 2,
        pool_padding: int = 1,
    ):
        super().__init__()
        channels = [in_channels] + [mid_channels] * (n_conv_layers - 1) + [dim]
        self.conv_layers = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=conv_bias),
                    nn.ReLU() if activation else nn.Identity(),
                    nn.MaxPool2d(pool_kernel, pool_stride, pool_padding) if max_pool else nn.Identity(),
                )
                for c_in, c_out in zip(channels[:-1], channels[1:])
            ]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_layers(x).flatten(2).transpose(1, 2)  # (B, H'·W', dim), row-major

    @torch.no_grad()
    def sequence_length(self, in_channels: int, image_size: int) -> int:
        # meta tensors give the shape without computing anything
        try:
            tokens = self.forward(torch.empty(1, in_channels, image_size, image_size, device="meta")).shape[1]
        except RuntimeError:  # a conv or pool window larger than what is left of the image
            tokens = 0
        if tokens < 1:
            raise ArgumentError("image_size", image_size, "too small for the tokenizer's convolutions and pooling")
        return tokens


def sinusoidal_table(num_tokens: int, dim: int) -> torch.Tensor:
    """(1, N, dim): sin on even channels, cos on odd; angle p / 10000^(2·(i//2)/dim)."""
    pos = torch.arange(num_tokens, dtype=torch.float64)[:, None]
    i = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / dim)
    table = torch.where(i.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float().unsqueeze(0)


def make_positional_embedding(kind: str, num_tokens: int, dim: int) -> nn.Parameter | None:
    """`learnable` (trunc-normal std 0.2, as the official code), `sine` (fixed), or `none`.

    The sine table is a non-trainable Parameter rather than a buffer so that it
    sits under the same state_dict key as the learnable one.
    """
    if kind == "none":
        return None
    if kind == "learnable":
        param = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(param, std=0.2)
        return param
    if kind == "sine":
        return nn.Parameter(sinusoidal_table(num_tokens, dim), requires_grad=False)
    raise ArgumentError("positional_embedding", kind, "one of learnable, sine, none")


def conv_stride_padding(kernel_size: int) -> tuple[int, int]:
    """The official CCT rule: stride max(1, k//2 − 1), padding max(1, k//2)."""
    return max(1, kernel_size // 2 - 1), max(1, kernel_size // 2)
