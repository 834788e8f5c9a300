"""Train-time augmentation of uint8 batches (B, C, H, W), deterministic given a torch.Generator.

Two implementations of the same recipe:
- `TorchvisionAugment`: torchvision's own transforms, one image at a time — the
  reference, exactly the official pipeline (AutoAugment CIFAR-10 policy with gray
  fill 128, RandomCrop with padding, horizontal flip).
- `BatchAugment`: the same steps as batched tensor ops on whatever device the
  batch lives on (the GPU fast path; no per-image Python): AutoAugment through
  `attnexp.data.autoaugment.BatchAutoAugment`, which gives torchvision's output
  image for image given the same random draws.

`autoaugment: official` picks the official CCT script's own PIL policy instead of
torchvision's (same table, other ops): batched by
`attnexp.data.official_policy.OfficialCIFAR10Policy`, per image through PIL by
`attnexp.data.official_pil.PILOfficialPolicy`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnexp.data.autoaugment import POLICIES, BatchAutoAugment
from attnexp.data.official_policy import OfficialCIFAR10Policy

OFFICIAL = "official"  # the official CCT script's PIL CIFAR10Policy (not torchvision's AutoAugment)
AUTOAUGMENT_CHOICES = (*POLICIES, OFFICIAL)


def random_crop(images: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding) for a whole batch: zero-pad once, gather one window per image."""
    if padding == 0:
        return images
    B, C, H, W = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (B,), generator=g, device=g.device).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (B,), generator=g, device=g.device).to(images.device)
    rows = dy[:, None] + torch.arange(H, device=images.device)[None, :]  # (B, H)
    cols = dx[:, None] + torch.arange(W, device=images.device)[None, :]  # (B, W)
    batch = torch.arange(B, device=images.device)[:, None, None]
    # advanced indexing over (B, H, W) with channels kept: → (B, H, W, C)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=g, device=g.device).to(images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class BatchAugment:
    """[AutoAugment] → RandomCrop(pad) → RandomHorizontalFlip, each as batched tensor ops."""

    def __init__(self, autoaugment: str | None = None, padding: int = 0, flip: bool = False):
        self.padding, self.flip = padding, flip
        self.policy = _batched_autoaugment(autoaugment) if autoaugment else None

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.policy is not None:
            images = self.policy(images, g)
        images = random_crop(images, self.padding, g)
        return random_flip(images, g) if self.flip else images


def _batched_autoaugment(name: str):
    _check_autoaugment(name)
    # fill 128: the official CIFAR10Policy fills with gray (128, 128, 128)
    return OfficialCIFAR10Policy(fill=128) if name == OFFICIAL else BatchAutoAugment(name, fill=128)


def _check_autoaugment(name: str) -> None:
    if name not in AUTOAUGMENT_CHOICES:
        raise ValueError(f"data.augment.autoaugment={name}: one of {', '.join(AUTOAUGMENT_CHOICES)}")


class TorchvisionAugment:
    """The official per-image pipeline: [AutoAugment] → RandomCrop(pad) → RandomHorizontalFlip."""

    def __init__(self, autoaugment: str | None = None, padding: int = 0, flip: bool = False):
        from torchvision.transforms import v2

        steps = [p for p in [_autoaugment(autoaugment)] if p is not None]
        if padding:
            steps.append(_Crop(padding))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        self.transform = v2.Compose(steps) if steps else None

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return images if self.transform is None else _per_image(self.transform, images, g)


class _Crop:
    """torchvision RandomCrop at the image's own size (which is only known per call)."""

    def __init__(self, padding: int):
        self.padding = padding

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        return v2.RandomCrop(img.shape[-1], padding=self.padding)(img)


def _autoaugment(name: str | None):
    if not name:
        return None
    _check_autoaugment(name)
    if name == OFFICIAL:
        from attnexp.data.official_pil import PILOfficialPolicy

        return PILOfficialPolicy()
    from torchvision.transforms import v2

    policies = {
        "cifar10": v2.AutoAugmentPolicy.CIFAR10,
        "imagenet": v2.AutoAugmentPolicy.IMAGENET,
        "svhn": v2.AutoAugmentPolicy.SVHN,
    }
    # fill 128: the official CIFAR10Policy fills with gray (128, 128, 128)
    return v2.AutoAugment(policies[name], fill=128)


def _per_image(transform, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Apply a torchvision transform image by image; its global-RNG draws are seeded from g."""
    seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cpu = images.cpu()
        out = torch.stack([transform(img) for img in cpu])
    return out.to(images.device)


def build_augment(spec: dict | None, impl: str):
    if not spec:
        return None
    cls = TorchvisionAugment if impl == "torchvision" else BatchAugment
    return cls(spec.get("autoaugment"), int(spec.get("padding", 0)), bool(spec.get("flip", False)))
