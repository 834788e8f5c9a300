"""The PyTorch MNIST example network, the CNN of seed 003 (and the stem of its Hybrid).

conv 3×3 → 32, ReLU, conv 3×3 → 64, ReLU, max-pool 2, dropout 0.25, flatten,
linear → 128, ReLU, dropout 0.5, linear → classes. The first linear's width
follows the input (9,216 on MNIST 1×28×28, 12,544 on CIFAR 3×32×32), so the
counts are 1,199,882 / 1,626,442 / 1,638,052 on MNIST / CIFAR-10 / CIFAR-100.
It returns logits: the example's log_softmax lives in the loss here.
"""

from __future__ import annotations

import torch
from torch import nn

from attnexp.errors import require, require_rate
from attnexp.layers.randomness import Dropout


class ConvStem(nn.Module):
    """The example's two unpadded 3×3 convs and 2×2 max-pool: (B, C, S, S) → (B, 64, S', S').

    S' = (S − 4) // 2: 12 on MNIST, 14 on CIFAR.
    """

    def __init__(self, in_channels: int, channels: tuple[int, int] = (32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, 1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.out_channels = channels[1]

    @staticmethod
    def output_side(image_size: int) -> int:
        # two valid 3×3 convs take 2 pixels each, the pool halves (rounding down)
        return (image_size - 4) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv2(self.act(self.conv1(x)))))


class CNN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        image_size: int = 28,
        hidden_dim: int = 128,
        feature_dropout: float = 0.25,
        hidden_dropout: float = 0.5,
    ):
        super().__init__()
        require(
            ConvStem.output_side(image_size) >= 1, "image_size", image_size, "the conv stem needs at least 6 pixels"
        )
        require(hidden_dim >= 1, "hidden_dim", hidden_dim, "must be ≥ 1")
        require_rate("feature_dropout", feature_dropout)
        require_rate("hidden_dropout", hidden_dropout)
        self.features = ConvStem(in_channels)
        side = ConvStem.output_side(image_size)
        self.dropout1 = Dropout(feature_dropout)
        self.fc1 = nn.Linear(self.features.out_channels * side * side, hidden_dim)
        self.act = nn.ReLU()
        self.dropout2 = Dropout(hidden_dropout)
        self.fc2 = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout1(self.features(x)).flatten(1)  # (B, 64·side²)
        return self.fc2(self.dropout2(self.act(self.fc1(x))))
