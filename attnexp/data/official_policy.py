"""The official Compact-Transformers AutoAugment policy on whole uint8 batches, on the batch's device.

The official CCT training script augments CIFAR with its own PIL `CIFAR10Policy`
(credited to DeepVoltaire/AutoAugment), not with torchvision's AutoAugment. Its
sub-policies, probabilities and magnitude bins are the CIFAR-10 table of
`POLICIES["cifar10"]`, but its ops are PIL's, and some differ in substance:
- Rotate turns counter-clockwise only (no random sign);
- the shears resample bicubic (PIL's cubic with a = -1, truncated to uint8);
- a translation moves by 150/331 of the size at most, not a whole number of pixels;
- Solarize thresholds run from 256 (nothing inverted) down to 0;
- Color / Contrast / Sharpness / Brightness are PIL's float32 ImageEnhance blends,
  AutoContrast is PIL's float64 lookup table;
- an op runs when uniform() < p (torchvision: ≤).

Each op here redoes PIL's arithmetic (the same float width, operation order and
truncation), so that on the CPU, given the same draws, the output is PIL's image
bit for bit; tests/test_official_policy.py checks every op against PIL itself.
The random draws are vectors over the batch and the ops run per slot on the
images that drew them, grouped as in `BatchAutoAugment` (`index` on the CPU,
`mask` on CUDA: no `nonzero()`, so no host sync).
"""

from __future__ import annotations

import functools
import math

import torch

from attnexp.data.autoaugment import (
    NUM_BINS,
    POLICIES,
    SIGNED,
    Draw,
    apply_where,
    equalize,
    invert,
    per_image,
    policy_tables,
    posterize,
)

# ------------------------------------------------------------------ magnitudes, as the official policy makes them


def numpy_linspace(start: float, stop: float, num: int = NUM_BINS) -> list[float]:
    """np.linspace's float64 values (i·step + start, the last one `stop` itself), without numpy.

    The official levels come from np.linspace; torch.linspace rounds some of them differently.
    """
    step = (stop - start) / (num - 1)
    return [i * step + start for i in range(num - 1)] + [float(stop)]


ENHANCE_LEVELS = numpy_linspace(0.0, 0.9)  # factor 1 ± level
LEVELS: dict[str, list] = {
    "ShearX": numpy_linspace(0.0, 0.3),
    "ShearY": numpy_linspace(0.0, 0.3),
    "TranslateX": numpy_linspace(0.0, 150 / 331),  # a fraction of the width
    "TranslateY": numpy_linspace(0.0, 150 / 331),  # of the height
    "Rotate": numpy_linspace(0.0, 30.0),  # degrees, counter-clockwise
    "Color": ENHANCE_LEVELS,
    "Contrast": ENHANCE_LEVELS,
    "Sharpness": ENHANCE_LEVELS,
    "Brightness": ENHANCE_LEVELS,
    "Posterize": [round(v) for v in numpy_linspace(8.0, 4.0)],  # bits kept: 8, 8, 7, 7, 6, 6, 5, 5, 4, 4
    "Solarize": numpy_linspace(256.0, 0.0),  # pixels at or above the threshold are inverted
}

# ops whose magnitude gets a random sign; the official Rotate has none
OFFICIAL_SIGNED = SIGNED - {"Rotate"}


def magnitude(op: str, level_bin: int | None, height: int, width: int) -> float:
    """The unsigned magnitude the official policy hands the op for an image of this size (0: none)."""
    if op not in LEVELS:
        return 0.0
    level = LEVELS[op][level_bin]
    if op == "TranslateX":
        return level * width  # pixels, in general not a whole number
    if op == "TranslateY":
        return level * height
    return float(level)


# ------------------------------------------------------------------ nearest warps: Translate, Rotate
# PIL's Image.transform(AFFINE, NEAREST) maps output pixel (x, y) to input (a0·x + a1·y + a2, a3·x + a4·y + a5).


def translate_coefficients(pixels: float, axis: int) -> tuple[float, ...]:
    return (1.0, 0.0, pixels, 0.0, 1.0, 0.0) if axis == 0 else (1.0, 0.0, 0.0, 0.0, 1.0, pixels)


def rotate_coefficients(degrees: float, height: int, width: int) -> tuple[float, ...]:
    """The inverse map Image.rotate(degrees) builds (about the centre, cos and sin rounded to 15 places)."""
    degrees = degrees % 360.0
    if degrees == 0:  # PIL copies the image
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    angle = -math.radians(degrees)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = width / 2, height / 2
    c = a * -cx + b * -cy + 0.0 + cx
    f = d * -cx + e * -cy + 0.0 + cy
    return (a, b, c, d, e, f)


@functools.lru_cache(maxsize=256)  # pure Python loops: build each map once per process
def nearest_source(coefficients: tuple[float, ...], height: int, width: int) -> torch.Tensor:
    """(H·W,) long: the input pixel each output pixel copies (row-major), -1 where it falls outside.

    Replays PIL's ImagingTransformAffine for NEAREST, which picks one of three
    arithmetics: a pure scale/shift runs in float64, a map whose corners stay
    within ±32768 in 16.16 fixed point, any other in float64. Each accumulates the
    sample point along the row and down the rows (a running sum can land on the
    other side of a pixel edge than a direct product would).
    """
    a0, a1, a2, a3, a4, a5 = coefficients
    if a1 == 0 and a3 == 0:
        pairs = _scaled_pairs(coefficients, height, width)
    elif all(_fits_fixed(coefficients, x, y) for x, y in ((0, 0), (width, height), (0, height), (width, 0))):
        pairs = _fixed_point_pairs(coefficients, height, width)
    else:
        pairs = _float_pairs(coefficients, height, width)
    source = [yin * width + xin if 0 <= xin < width and 0 <= yin < height else -1 for xin, yin in pairs]
    return torch.tensor(source, dtype=torch.long)


def _coord(v: float) -> int:
    return -1 if v < 0.0 else int(v)  # PIL's COORD: negatives are simply outside


def _scaled_pairs(a: tuple[float, ...], height: int, width: int) -> list[tuple[int, int]]:
    """ImagingScaleAffine: one running sum along x shared by every row, one down y."""
    xx, columns = a[2] + a[0] * 0.5, []
    for _ in range(width):
        columns.append(_coord(xx))
        xx += a[0]
    yy, rows = a[5] + a[4] * 0.5, []
    for _ in range(height):
        rows.append(_coord(yy))
        yy += a[4]
    return [(xin, yin) for yin in rows for xin in columns]


def _fits_fixed(a: tuple[float, ...], x: int, y: int) -> bool:
    return abs(x * a[0] + y * a[1] + a[2]) < 32768.0 and abs(x * a[3] + y * a[4] + a[5]) < 32768.0


def _fixed(v: float) -> int:
    return math.floor(v * 65536.0 + 0.5)  # PIL's FIX: 16.16, rounded half up


def _fixed_point_pairs(a: tuple[float, ...], height: int, width: int) -> list[tuple[int, int]]:
    """affine_fixed: integer running sums in 16.16, the pixel is the integer part (>> 16 floors)."""
    a0, a1, a3, a4 = (_fixed(a[k]) for k in (0, 1, 3, 4))
    row_x = _fixed(a[2] + a[0] * 0.5 + a[1] * 0.5)  # note the order: a0's half first, unlike the float path
    row_y = _fixed(a[5] + a[3] * 0.5 + a[4] * 0.5)
    pairs = []
    for _ in range(height):
        xx, yy = row_x, row_y
        for _ in range(width):
            pairs.append((xx >> 16, yy >> 16))
            xx += a0
            yy += a3
        row_x += a1
        row_y += a4
    return pairs


def _float_pairs(a: tuple[float, ...], height: int, width: int) -> list[tuple[int, int]]:
    """The float64 fallback for maps too large for fixed point."""
    row_x, row_y = a[2] + a[1] * 0.5 + a[0] * 0.5, a[5] + a[4] * 0.5 + a[3] * 0.5
    pairs = []
    for _ in range(height):
        xx, yy = row_x, row_y
        for _ in range(width):
            pairs.append((_coord(xx), _coord(yy)))
            xx += a[0]
            yy += a[3]
        row_x += a[1]
        row_y += a[4]
    return pairs


def remap(images: torch.Tensor, source: torch.Tensor, fill: int) -> torch.Tensor:
    """uint8 (G, C, H, W) with pixel p copied from flat input pixel source[g, p] ((G, H·W)), fill where -1."""
    G, C, H, W = images.shape
    flat = images.reshape(G, C, H * W)
    picked = flat.gather(2, source.clamp(min=0).unsqueeze(1).expand(G, C, H * W))
    return torch.where(source.unsqueeze(1) < 0, torch.full_like(picked, fill), picked).view(G, C, H, W)


# ------------------------------------------------------------------ bicubic shears


def _cubic(v1, v2, v3, v4, d):
    """PIL's BICUBIC macro: the a = -1 cubic through four samples at offset d, in its evaluation order."""
    p2 = v3 - v1
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = v2 - v1 - v3 + v4  # p2..p4 from integers: exact in any order
    return v2 + d * (p2 + d * (p3 + d * p4))


def shear_rows(images: torch.Tensor, m: torch.Tensor, fill: int) -> torch.Tensor:
    """PIL's Image.transform(AFFINE, (1, m, 0, 0, 1, 0), BICUBIC, fillcolor=fill) per image, m (G,).

    Output pixel (x, y) samples row y at x + 0.5 + m·(y + 0.5) (float64, PIL's order);
    the vertical pass of PIL's bicubic has offset 0, so it returns that row's value
    exactly. Outside [0, W) the pixel keeps the fill; inside, four neighbours,
    clamped to the row, and the cubic is clipped to 0..255 and truncated.
    """
    G, C, H, W = images.shape
    dev = images.device
    x_centre = torch.arange(W, dtype=torch.float64, device=dev) + 0.5
    y_centre = torch.arange(H, dtype=torch.float64, device=dev) + 0.5
    sample = x_centre + m.view(-1, 1, 1) * y_centre.view(1, H, 1)  # (G, H, W)
    inside = (sample >= 0) & (sample < W)
    shifted = sample - 0.5
    left = shifted.floor()
    d = (shifted - left).unsqueeze(1)  # (G, 1, H, W)
    taps = (left.long().unsqueeze(-1) + torch.arange(-1, 3, device=dev)).clamp(0, W - 1)  # (G, H, W, 4)
    # gather along each row: (G, C, H, W·4) → (G, C, H, W, 4)
    index = taps.view(G, 1, H, W * 4).expand(G, C, H, W * 4)
    values = images.gather(3, index).view(G, C, H, W, 4).double()
    v = _cubic(*values.unbind(-1), d)
    out = v.clamp(0, 255).trunc().to(torch.uint8)
    return torch.where(inside.unsqueeze(1), out, torch.full_like(out, fill))


def shear_columns(images: torch.Tensor, m: torch.Tensor, fill: int) -> torch.Tensor:
    """(1, 0, 0, m, 1, 0): output (x, y) samples column x at y + 0.5 + m·(x + 0.5); the transpose of shear_rows."""
    return shear_rows(images.transpose(-1, -2), m, fill).transpose(-1, -2)


# ------------------------------------------------------------------ colour ops: uint8 (G, C, H, W), magnitude (G,) float64


def pil_luma(images: torch.Tensor) -> torch.Tensor:
    """PIL's convert("L"): (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16, (G, 1, H, W) int32."""
    if images.shape[1] == 1:
        return images.int()
    r, g, b = images.int().unbind(dim=1)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).unsqueeze(1)


def blend(degenerate: torch.Tensor, images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend(degenerate, image, 1 + m): d + α·(i − d) in float32, clipped, truncated.

    α is 1 + m in float64 rounded to float32 (PIL parses it as a C float); the
    product and the sum round separately (no fused multiply-add), as PIL's C does.
    """
    alpha = per_image((1.0 + m).float())
    base = degenerate.float()
    mixed = base + alpha * (images.float() - base)
    return mixed.clamp(0, 255).to(torch.uint8)  # the cast truncates, as PIL's (UINT8) does


def brightness(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return blend(torch.zeros_like(images), images, m)


def color(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return blend(pil_luma(images), images, m)


def contrast(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Blend with a solid grey: the luma histogram's mean, rounded half up (int(mean + 0.5))."""
    luma = pil_luma(images)
    total = luma.sum(dim=(-3, -2, -1), keepdim=True, dtype=torch.int64)  # (G, 1, 1, 1)
    # a tensor divisor: CUDA divides by a Python number through its reciprocal, one more rounding
    mean = total.double() / torch.full_like(total, luma[0].numel(), dtype=torch.float64)
    return blend((mean + 0.5).floor(), images, m)


# PIL divides its float32 kernel by the divisor in float32
_SMOOTH_SIDE = (torch.tensor(1.0) / torch.tensor(13.0)).item()
_SMOOTH_CENTRE = (torch.tensor(5.0) / torch.tensor(13.0)).item()


def smooth(images: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH (3×3: ring 1, centre 5, /13) in float32, rounded half up; the 1-px border kept.

    PIL sums 0.5, then row y+1, row y, row y−1, each row left to right.
    """
    G, C, H, W = images.shape
    if H <= 2 or W <= 2:
        return images
    x = images.float()

    def row(dy: int, middle: float) -> torch.Tensor:  # (G, C, H-2, W-2): one kernel row at offset dy
        r = x[..., 1 + dy : H - 1 + dy, :]
        return r[..., :-2] * _SMOOTH_SIDE + r[..., 1:-1] * middle + r[..., 2:] * _SMOOTH_SIDE

    total = torch.full_like(x[..., 1:-1, 1:-1], 0.5)
    total = total + row(1, _SMOOTH_SIDE)
    total = total + row(0, _SMOOTH_CENTRE)
    total = total + row(-1, _SMOOTH_SIDE)
    out = images.clone()
    out[..., 1:-1, 1:-1] = total.clamp(0, 255).to(torch.uint8)
    return out


def sharpness(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return blend(smooth(images), images, m)


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """ImageOps.solarize: pixels at or above the (float) threshold are inverted."""
    return torch.where(images.double() >= per_image(threshold), 255 - images, images)


def autocontrast(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast per channel: int(v·scale + offset) in float64, scale = 255/(hi − lo),
    offset = −lo·scale, clipped; a channel of one value is left alone."""
    x = images.double()
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    flat = high <= low
    span = torch.where(flat, torch.ones_like(high), high - low)
    scale = torch.full_like(span, 255.0) / span  # a true division: `255.0 / span` multiplies by a reciprocal
    offset = -low * scale
    stretched = (x * scale + offset).trunc().clamp(0, 255).to(torch.uint8)
    return torch.where(flat, images, stretched)


COLOR_OPS = {
    "Color": color,
    "Contrast": contrast,
    "Sharpness": sharpness,
    "Brightness": brightness,
    "Posterize": posterize,
    "Solarize": solarize,
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Invert": invert,
}
NEAREST_WARPS = ("TranslateX", "TranslateY", "Rotate")
SHEARS = {"ShearX": shear_rows, "ShearY": shear_columns}
OP_NAMES = NEAREST_WARPS + tuple(SHEARS) + tuple(COLOR_OPS)


# ------------------------------------------------------------------ the policy


class OfficialCIFAR10Policy:
    """The official CCT CIFAR10Policy for uint8 (B, C, H, W) batches; `__call__(images, generator)`.

    `draw` / `apply` / `grouping` as in `BatchAutoAugment`; in the Draw, `negative`
    is set only where the op takes a sign (never for Rotate).
    """

    GROUPINGS = ("auto", "index", "mask")

    def __init__(self, fill: int = 128, grouping: str = "auto"):
        if grouping not in self.GROUPINGS:
            raise ValueError(f"grouping={grouping}: one of {', '.join(self.GROUPINGS)}")
        self.fill, self.grouping = int(fill), grouping
        self.subpolicies = POLICIES["cifar10"]
        tables = policy_tables(self.subpolicies, OP_NAMES, OFFICIAL_SIGNED)
        self.op_index, self.probability, self.signed, self.slot_ops = tables
        self._on_device: dict = {}

    def __repr__(self) -> str:
        return f"OfficialCIFAR10Policy(fill={self.fill}, grouping={self.grouping!r})"

    def draw(self, batch: int, g: torch.Generator) -> Draw:
        device = g.device
        policy = torch.randint(0, len(self.subpolicies), (batch,), generator=g, device=device)
        probability, signed = self._device_copy("draw", device, self.probability, self.signed)
        applied = torch.rand(batch, 2, generator=g, device=device) < probability[policy]  # random.random() < p
        negative = (torch.rand(batch, 2, generator=g, device=device) < 0.5) & signed[policy]
        return Draw(policy, applied, negative)

    def __call__(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.draw(images.shape[0], g))

    def apply(self, images: torch.Tensor, draw: Draw) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise TypeError(
                f"OfficialCIFAR10Policy takes uint8 (B, 1 or 3, H, W) batches, got {images.dtype} {tuple(images.shape)}"
            )
        device = images.device
        draw = draw.to(device)
        H, W = images.shape[-2:]
        masked = self.grouping == "mask" or (self.grouping == "auto" and device.type == "cuda")
        op_index, magnitudes, sources, warp_ids = self._tables(H, W, device)
        for slot in (0, 1):
            # the table row of each image's (sub-policy, slot, sign): (B,)
            entry = (draw.policy * 2 + slot) * 2 + draw.negative[:, slot].long()
            ops, active = op_index[draw.policy, slot], draw.applied[:, slot]
            if any(OP_NAMES[k] in NEAREST_WARPS for k in self.slot_ops[slot]):
                moves = active & torch.isin(ops, warp_ids)
                images = apply_where(images, moves, lambda x, e: remap(x, sources[e], self.fill), entry, masked)
            for k in self.slot_ops[slot]:
                if OP_NAMES[k] not in NEAREST_WARPS:
                    images = apply_where(images, active & (ops == k), self._op(OP_NAMES[k]), magnitudes[entry], masked)
        return images

    def _op(self, name: str):
        if name in SHEARS:
            return lambda x, m: SHEARS[name](x, m, self.fill)
        return COLOR_OPS[name]

    def _device_copy(self, key: str, device, *tensors: torch.Tensor) -> tuple:
        cache_key = (key, str(device))
        if cache_key not in self._on_device:
            self._on_device[cache_key] = tuple(t.to(device) for t in tensors)
        return self._on_device[cache_key]

    def _tables(self, height: int, width: int, device) -> tuple:
        """The policy for this image size as tensors on the device, made once: op indices (S, 2), signed
        magnitudes (S·2·2,) float64 and nearest-warp sources (S·2·2, H·W), rows ordered (sub-policy, slot, sign)."""
        key = ("tables", height, width, str(device))
        if key not in self._on_device:
            magnitudes, sources = [], []
            for sub in self.subpolicies:
                for op, _, level_bin in sub:
                    for sign in (1.0, -1.0):
                        m = magnitude(op, level_bin, height, width) * (sign if op in OFFICIAL_SIGNED else 1.0)
                        magnitudes.append(m)
                        sources.append(self._source(op, m, height, width))
            warp_ids = torch.tensor([OP_NAMES.index(op) for op in NEAREST_WARPS])
            tables = (self.op_index, torch.tensor(magnitudes, dtype=torch.float64), torch.stack(sources), warp_ids)
            self._on_device[key] = tuple(t.to(device) for t in tables)
        return self._on_device[key]

    @staticmethod
    def _source(op: str, m: float, height: int, width: int) -> torch.Tensor:
        if op == "Rotate":
            return nearest_source(rotate_coefficients(m, height, width), height, width)
        if op in ("TranslateX", "TranslateY"):
            return nearest_source(translate_coefficients(m, 0 if op == "TranslateX" else 1), height, width)
        return torch.arange(height * width)  # not a nearest warp: never used
