"""AutoAugment (Cubuk et al., CVPR 2019) on whole uint8 batches, on the batch's own device.

torchvision's AutoAugment picks a sub-policy per image and runs its two ops
with Python control flow, one image at a time. Here the random draws are
vectors over the batch (`draw`), and `apply` runs each op once per slot on the
images that drew it:
- `index` grouping gathers those images, transforms them and scatters them
  back: the least work, used on the CPU;
- `mask` grouping transforms the whole batch and keeps the result where the
  image drew the op: more arithmetic but no `nonzero()`, so no host sync that
  would stall a GPU's queue (used on CUDA).
Every geometric op (shear, translate, rotate) is an affine map of the pixel
grid, so one `grid_sample` per slot serves all of them.

Each op reproduces torchvision's v2 tensor kernel for uint8 images (nearest
interpolation, the same rounding and truncation), so that given the same draws
the output is the same image; tests/test_speed_paths.py replays torchvision's
own random draws through `apply` to check exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NUM_BINS = 10  # magnitude levels 0..9, as in the paper

# (op, probability, magnitude bin) × 2 per sub-policy; the tables of the paper's appendix
# as torchvision ships them (AutoAugmentPolicy.CIFAR10 / SVHN / IMAGENET).
POLICIES: dict[str, tuple] = {
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
    "svhn": (
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ),
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
}


# ------------------------------------------------------------------ magnitudes


def _levels(top: float) -> torch.Tensor:
    # float32 levels, as torchvision makes them: a magnitude is float(levels[bin])
    return torch.linspace(0.0, top, NUM_BINS)


def magnitude_levels(op: str, height: int, width: int) -> torch.Tensor | None:
    """The NUM_BINS magnitudes of an op for an image of this size (None: the op takes none)."""
    if op in ("ShearX", "ShearY"):
        return _levels(0.3)
    if op == "TranslateX":
        return _levels(150.0 / 331.0 * width)  # the paper's 150 px on 331 px images, scaled
    if op == "TranslateY":
        return _levels(150.0 / 331.0 * height)
    if op == "Rotate":
        return _levels(30.0)  # degrees
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return _levels(0.9)  # factor 1 ± m
    if op == "Posterize":  # bits kept: 8, 8, 7, 7, 6, 6, 5, 5, 4, 4
        return (8 - torch.arange(NUM_BINS) / ((NUM_BINS - 1) / 4)).round()
    if op == "Solarize":  # threshold as a fraction of 255, from 1 down to 0
        return torch.linspace(1.0, 0.0, NUM_BINS)
    return None


# ops whose magnitude gets a random sign (probability 1/2)
SIGNED = frozenset(
    {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
)


# ------------------------------------------------------------------ geometric ops: inverse affine matrices
# Each returns (G, 2, 3) float64: output pixel (x, y), measured from the image centre, → input pixel.


def _inverse_affine(angle, shear_x, shear_y, tx, ty, cx, cy) -> torch.Tensor:
    """Inverse of T·C·R(angle)·ShY·ShX·C⁻¹ (angles in degrees), the map torchvision's affine samples with."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    # forward linear part [[a, b], [c, d]] has determinant 1, so its inverse is [[d, -b], [-c, a]]
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    x0, y0 = cx + tx, cy + ty
    row0 = torch.stack([d, -b, cx - d * x0 + b * y0], dim=-1)
    row1 = torch.stack([-c, a, cy + c * x0 - a * y0], dim=-1)
    return torch.stack([row0, row1], dim=-2)  # (G, 2, 3)


def _zeros(m: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(m)


def _shear_matrix(m: torch.Tensor, height: int, width: int, axis: int) -> torch.Tensor:
    # AutoAugment shears about the top-left corner (torchvision: center=[0, 0]) by angle atan(m)
    z = _zeros(m)
    degrees = torch.rad2deg(torch.atan(m))
    shear = (degrees, z) if axis == 0 else (z, degrees)
    return _inverse_affine(z, *shear, z, z, z - width * 0.5, z - height * 0.5)


def _translate_matrix(m: torch.Tensor, height: int, width: int, axis: int) -> torch.Tensor:
    z = _zeros(m)
    pixels = torch.trunc(m)  # torchvision passes int(magnitude)
    shift = (pixels, z) if axis == 0 else (z, pixels)
    return _inverse_affine(z, z, z, *shift, z, z)


def _rotate_matrix(m: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # torchvision's rotate turns by -(angle mod 360) in affine's convention, about the centre
    z = _zeros(m)
    return _inverse_affine(-torch.remainder(m, 360.0), z, z, z, z, z, z)


AFFINE_OPS = {
    "ShearX": lambda m, h, w: _shear_matrix(m, h, w, 0),
    "ShearY": lambda m, h, w: _shear_matrix(m, h, w, 1),
    "TranslateX": lambda m, h, w: _translate_matrix(m, h, w, 0),
    "TranslateY": lambda m, h, w: _translate_matrix(m, h, w, 1),
    "Rotate": _rotate_matrix,
}


def warp(images: torch.Tensor, theta: torch.Tensor, fill: float) -> torch.Tensor:
    """Nearest-neighbour resampling of uint8 (G, C, H, W) through per-image inverse maps (G, 2, 3).

    Pixels that map outside the image take `fill`. Follows torchvision's grid
    (pixel centres measured from the image centre, normalised by half the size).
    """
    G, C, H, W = images.shape
    device = images.device
    xs = torch.linspace((1.0 - W) * 0.5, (W - 1.0) * 0.5, W, device=device)
    ys = torch.linspace((1.0 - H) * 0.5, (H - 1.0) * 0.5, H, device=device)
    base = torch.stack([xs.expand(H, W), ys[:, None].expand(H, W), torch.ones(H, W, device=device)], dim=-1)
    half = torch.tensor([0.5 * W, 0.5 * H], device=device)
    scaled = theta.float().transpose(1, 2) / half  # (G, 3, 2)
    grid = torch.bmm(base.view(1, H * W, 3).expand(G, -1, -1), scaled).view(G, H, W, 2)
    # a channel of ones rides along: where it comes back 0 the pixel came from outside
    stacked = torch.cat([images.float(), images.new_ones(G, 1, H, W, dtype=torch.float32)], dim=1)
    sampled = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out, inside = sampled[:, :C], sampled[:, C:]
    out = torch.where(inside < 0.5, torch.full_like(out, fill), out)
    return out.round().to(torch.uint8)


# ------------------------------------------------------------------ colour ops: uint8 (G, C, H, W), magnitude (G,)


def per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _grayscale_floor(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, floored (the uint8 grey torchvision blends towards): (G, 1, H, W) float32."""
    if images.shape[1] == 1:
        return images.float()
    r, g, b = images.float().unbind(dim=1)
    # add_ with alpha fuses multiply and add (one rounding), as torchvision's grey does
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor·image + (1 − factor)·other, clamped and truncated to uint8 (torchvision's _blend).

    addcmul rounds once for the second product and the sum, as torchvision's add_(alpha=) does:
    a separate multiply and add lands on the other side of an integer for ~1 % of pixels.
    """
    keep = per_image(factor.float())
    rest = per_image((1.0 - factor).float())
    return torch.addcmul(images.float() * keep, other, rest).clamp(0, 255).to(torch.uint8)


def brightness(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (images.float() * per_image((1.0 + m).float())).clamp(0, 255).to(torch.uint8)


def color(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:  # saturation of a grey image is itself
        return images
    return _blend(images, _grayscale_floor(images), 1.0 + m)


def contrast(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    mean = _grayscale_floor(images).mean(dim=(-3, -2, -1), keepdim=True)  # (G, 1, 1, 1)
    return _blend(images, mean, 1.0 + m)


def sharpness(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Blend with a 3×3 smoothing (centre 5, ring 1, /13) of the interior; the 1-px border is kept."""
    G, C, H, W = images.shape
    if H <= 2 or W <= 2:
        return images
    kernel = torch.ones(3, 3, device=images.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(C, 1, 3, 3)
    x = images.float()
    blurred = F.conv2d(x, kernel, groups=C).round()  # (G, C, H-2, W-2)
    inner = x[..., 1:-1, 1:-1]
    out = x.clone()
    out[..., 1:-1, 1:-1] = torch.addcmul(inner, blurred - inner, per_image((1.0 - (1.0 + m)).float()))
    return out.clamp(0, 255).to(torch.uint8)


def posterize(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    bits = m.round().clamp(0, 8).long()
    keep = ((1 << bits) - 1) << (8 - bits)  # the top `bits` bits
    return images & per_image(keep.to(torch.uint8))


def solarize(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    threshold = per_image((255.0 * m).float())
    return torch.where(images.float() >= threshold, 255 - images, images)


def invert(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return 255 - images


def autocontrast(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to 0..255; a flat channel is left alone."""
    x = images.float()
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    inv_scale = torch.where(flat, torch.ones_like(low), (high - low) * (1.0 / 255.0))
    low = torch.where(flat, torch.zeros_like(low), low)
    return ((x - low) / inv_scale).clamp(0, 255).to(torch.uint8)


def equalize(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation with PIL's lookup table.

    step = (#pixels − #pixels at the channel's top value) // 255;
    lut[v] = (cumhist[v − 1] + step // 2) // step, lut[0] = 0; step 0 leaves the channel alone.
    """
    G, C, H, W = images.shape
    flat = images.reshape(G * C, H * W).long()
    hist = torch.zeros(G * C, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    at_top = hist.gather(1, flat.amax(dim=1, keepdim=True))  # (GC, 1)
    step = (H * W - at_top) // 255
    below = hist.cumsum(1)[:, :-1]  # pixels with value < v, for v = 1..255
    lut = torch.cat([torch.zeros_like(step), (below + step // 2) // step.clamp(min=1)], dim=1).clamp(0, 255)
    out = torch.where(step > 0, lut.gather(1, flat), flat)
    return out.to(torch.uint8).view(G, C, H, W)


COLOR_OPS = {
    "Brightness": brightness,
    "Color": color,
    "Contrast": contrast,
    "Sharpness": sharpness,
    "Posterize": posterize,
    "Solarize": solarize,
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Invert": invert,
}

OP_NAMES = tuple(AFFINE_OPS) + tuple(COLOR_OPS)


# ------------------------------------------------------------------ the policy


@dataclass
class Draw:
    """The random choices for a batch, as torchvision makes them per image."""

    policy: torch.Tensor  # (B,) long: the sub-policy
    applied: torch.Tensor  # (B, 2) bool: slot k's op runs (uniform ≤ its probability)
    negative: torch.Tensor  # (B, 2) bool: a signed op's magnitude is negated (uniform ≤ 1/2)

    def to(self, device) -> "Draw":
        return Draw(self.policy.to(device), self.applied.to(device), self.negative.to(device))


def policy_tables(subpolicies: tuple, op_names: tuple, signed_ops: frozenset) -> tuple:
    """A policy table as tensors: (S, 2) op indices into op_names, (S, 2) float32 probabilities,
    (S, 2) bool "takes a random sign", and per slot the op indices that can occur there (so a slot
    only visits those)."""
    names = [[op for op, _, _ in sub] for sub in subpolicies]
    op_index = torch.tensor([[op_names.index(op) for op in pair] for pair in names])
    probability = torch.tensor([[p for _, p, _ in sub] for sub in subpolicies], dtype=torch.float32)
    signed = torch.tensor([[op in signed_ops for op in pair] for pair in names])
    slot_ops = [sorted({op_names.index(pair[k]) for pair in names}) for k in (0, 1)]
    return op_index, probability, signed, slot_ops


class BatchAutoAugment:
    """AutoAugment for uint8 (B, C, H, W) batches; `__call__(images, generator)`.

    grouping: `index` (gather the images that drew an op), `mask` (run every op
    on the whole batch, keep where drawn; no host sync) or `auto` (mask on CUDA).
    """

    GROUPINGS = ("auto", "index", "mask")

    def __init__(self, policy: str = "cifar10", fill: float = 128.0, grouping: str = "auto"):
        if policy not in POLICIES:
            raise ValueError(f"data.augment.autoaugment={policy}: one of {', '.join(POLICIES)}")
        if grouping not in self.GROUPINGS:
            raise ValueError(f"grouping={grouping}: one of {', '.join(self.GROUPINGS)}")
        self.name, self.fill, self.grouping = policy, float(fill), grouping
        self.subpolicies = POLICIES[policy]
        self.op_index, self.probability, self.signed, self.slot_ops = policy_tables(self.subpolicies, OP_NAMES, SIGNED)
        self._magnitudes: dict = {}
        self._on_device: dict = {}

    def __repr__(self) -> str:
        return f"BatchAutoAugment({self.name!r}, fill={self.fill:g}, grouping={self.grouping!r})"

    def magnitudes(self, height: int, width: int) -> torch.Tensor:
        """(S, 2) float64 unsigned magnitudes of each slot for this image size (0 for ops without one)."""
        key = (height, width)
        if key not in self._magnitudes:
            table = [
                [
                    float(levels[b]) if (levels := magnitude_levels(op, height, width)) is not None else 0.0
                    for op, _, b in sub
                ]
                for sub in self.subpolicies
            ]
            self._magnitudes[key] = torch.tensor(table, dtype=torch.float64)
        return self._magnitudes[key]

    def draw(self, batch: int, g: torch.Generator) -> Draw:
        device = g.device
        policy = torch.randint(0, len(self.subpolicies), (batch,), generator=g, device=device)
        probability = self._on_device.setdefault(("p", str(device)), self.probability.to(device))
        applied = torch.rand(batch, 2, generator=g, device=device) <= probability[policy]
        negative = torch.rand(batch, 2, generator=g, device=device) <= 0.5
        return Draw(policy, applied, negative)

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.draw(images.shape[0], g))

    def apply(self, images: torch.Tensor, draw: Draw) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(
                f"BatchAutoAugment takes uint8 (B, C, H, W) batches, got {images.dtype} {tuple(images.shape)}"
            )
        device = images.device
        draw = draw.to(device)
        H, W = images.shape[-2:]
        masked = self.grouping == "mask" or (self.grouping == "auto" and device.type == "cuda")
        tables = self._tables(H, W, device)
        op_index, signed, size = (t[draw.policy] for t in tables[:3])  # (B, 2) each
        magnitude = torch.where(signed & draw.negative, -size, size)  # float64
        for slot in (0, 1):
            ops, m, active = op_index[:, slot], magnitude[:, slot], draw.applied[:, slot]
            images = self._slot(images, ops, m, active, self.slot_ops[slot], tables[3], masked)
        return images

    def _tables(self, height: int, width: int, device) -> tuple:
        """The policy as tensors on the batch's device, made once (no copies per batch)."""
        key = (height, width, str(device))
        if key not in self._on_device:
            geometric = torch.tensor([OP_NAMES.index(op) for op in AFFINE_OPS], device=device)
            self._on_device[key] = (
                self.op_index.to(device),
                self.signed.to(device),
                self.magnitudes(height, width).to(device),
                geometric,
            )
        return self._on_device[key]

    def _slot(self, images, ops, m, active, present: list[int], geometric, masked: bool) -> torch.Tensor:
        H, W = images.shape[-2:]
        affine = [k for k in present if OP_NAMES[k] in AFFINE_OPS]
        if affine:
            theta = torch.eye(2, 3, dtype=torch.float64, device=images.device).expand(len(m), 2, 3)
            for k in affine:
                theta = torch.where((ops == k).view(-1, 1, 1), AFFINE_OPS[OP_NAMES[k]](m, H, W), theta)
            moves = active & torch.isin(ops, geometric)
            images = apply_where(images, moves, lambda x, t: warp(x, t, self.fill), theta, masked)
        for k in present:
            if OP_NAMES[k] in COLOR_OPS:
                images = apply_where(images, active & (ops == k), COLOR_OPS[OP_NAMES[k]], m, masked)
        return images


def apply_where(images: torch.Tensor, chosen: torch.Tensor, op, param: torch.Tensor, masked: bool) -> torch.Tensor:
    """images with op(image, param) in place of every chosen image."""
    if masked:
        return torch.where(chosen.view(-1, 1, 1, 1), op(images, param), images)
    index = chosen.nonzero().squeeze(1)
    if index.numel() == 0:
        return images
    return images.index_copy(0, index, op(images[index], param[index]))
