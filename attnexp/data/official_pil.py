"""The official CCT CIFAR10Policy one image at a time through PIL: the per-image reference path
(`data.loader=torchvision`, `data.augment.autoaugment=official`).

The PIL calls are the official policy's (see attnexp/data/official_policy.py for
what they do to the pixels). Its random draws come from torch's global RNG, which
the per-image pipeline seeds from the batch's generator; the official script draws
from Python's `random` in the same order: the sub-policy, then per slot
`uniform() < p` and, only for an op that runs and takes one, its sign.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from attnexp.data.autoaugment import POLICIES
from attnexp.data.official_policy import LEVELS, OFFICIAL_SIGNED

GREY = 128


def _rotate(img: Image.Image, degrees: float) -> Image.Image:
    # rotate with a transparent outside, then lay it over grey: the corners come out grey
    turned = img.convert("RGBA").rotate(degrees)
    return Image.composite(turned, Image.new("RGBA", turned.size, (GREY,) * 4), turned).convert(img.mode)


def _affine(img: Image.Image, data: tuple, resample=Image.NEAREST) -> Image.Image:
    fill = GREY if img.mode == "L" else (GREY,) * 3
    return img.transform(img.size, Image.AFFINE, data, resample, fillcolor=fill)


def pil_op(img: Image.Image, op: str, level: float, sign: int) -> Image.Image:
    """One op of the official policy: `level` from LEVELS (unused by ops without one), sign ±1."""
    if op == "ShearX":
        return _affine(img, (1, level * sign, 0, 0, 1, 0), Image.BICUBIC)
    if op == "ShearY":
        return _affine(img, (1, 0, 0, level * sign, 1, 0), Image.BICUBIC)
    if op == "TranslateX":
        return _affine(img, (1, 0, level * img.size[0] * sign, 0, 1, 0))
    if op == "TranslateY":
        return _affine(img, (1, 0, 0, 0, 1, level * img.size[1] * sign))
    if op == "Rotate":
        return _rotate(img, level)
    if op in ("Color", "Contrast", "Sharpness", "Brightness"):
        return getattr(ImageEnhance, op)(img).enhance(1 + level * sign)
    if op == "Posterize":
        return ImageOps.posterize(img, level)
    if op == "Solarize":
        return ImageOps.solarize(img, level)
    if op == "AutoContrast":
        return ImageOps.autocontrast(img)
    if op == "Equalize":
        return ImageOps.equalize(img)
    if op == "Invert":
        return ImageOps.invert(img)
    raise ValueError(f"unknown op {op}")


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) tensor, C = 1 or 3 → PIL "L" / "RGB"."""
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if image.shape[0] == 1 else array)


def from_pil(img: Image.Image) -> torch.Tensor:
    array = np.asarray(img)
    return torch.from_numpy(array.reshape(*array.shape[:2], -1).copy()).permute(2, 0, 1)


class PILOfficialPolicy:
    """Per image: uint8 (C, H, W) tensor in, the official policy's PIL output out."""

    def __init__(self):
        self.subpolicies = POLICIES["cifar10"]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        subpolicy = int(torch.randint(len(self.subpolicies), ()))
        applied, negative = [], []
        for op, p, _ in self.subpolicies[subpolicy]:
            applied.append(float(torch.rand(())) < p)
            negative.append(applied[-1] and op in OFFICIAL_SIGNED and float(torch.rand(())) < 0.5)
        return self.apply_one(image, subpolicy, applied, negative)

    def apply_one(self, image: torch.Tensor, subpolicy: int, applied, negative) -> torch.Tensor:
        """The policy with the draws given (applied, negative: one bool per slot), e.g. a batch's Draw replayed."""
        img = to_pil(image)
        for (op, _, level_bin), runs, flip in zip(self.subpolicies[subpolicy], applied, negative):
            if runs:
                img = pil_op(img, op, LEVELS[op][level_bin] if op in LEVELS else 0.0, -1 if flip else 1)
        return from_pil(img)
