"""The official CCT AutoAugment policy batched (attnexp/data/official_policy.py) against PIL: every op
of the CIFAR-10 policy bit for bit on the CPU, the whole policy replayed through PIL, the draws'
frequencies, the per-image PIL path and the config switch; with a GPU, the CUDA mask path."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MNIST_T10K, compose
from PIL import Image, ImageEnhance, ImageOps

from attnexp.data.augment import BatchAugment, TorchvisionAugment, build_augment
from attnexp.data.autoaugment import POLICIES, BatchAutoAugment, Draw
from attnexp.data.official_pil import PILOfficialPolicy, from_pil, to_pil
from attnexp.data.official_policy import (
    COLOR_OPS,
    LEVELS,
    OFFICIAL_SIGNED,
    SHEARS,
    OfficialCIFAR10Policy,
    magnitude,
    nearest_source,
    numpy_linspace,
    remap,
    rotate_coefficients,
    translate_coefficients,
)

TABLE = POLICIES["cifar10"]
BY_INDEX, BY_MASK = OfficialCIFAR10Policy(grouping="index"), OfficialCIFAR10Policy(grouping="mask")  # tables built once

# ------------------------------------------------------------------ the reference: the official policy's PIL calls, literally

RANGES = {
    "ShearX": np.linspace(0, 0.3, 10),
    "ShearY": np.linspace(0, 0.3, 10),
    "TranslateX": np.linspace(0, 150 / 331, 10),
    "TranslateY": np.linspace(0, 150 / 331, 10),
    "Rotate": np.linspace(0, 30, 10),
    "Color": np.linspace(0.0, 0.9, 10),
    "Posterize": np.round(np.linspace(8, 4, 10), 0).astype(int),
    "Solarize": np.linspace(256, 0, 10),
    "Contrast": np.linspace(0.0, 0.9, 10),
    "Sharpness": np.linspace(0.0, 0.9, 10),
    "Brightness": np.linspace(0.0, 0.9, 10),
}
FILL = (128, 128, 128)


def rotate_with_fill(img, magnitude):
    rot = img.convert("RGBA").rotate(magnitude)
    return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(img.mode)


REFERENCE = {  # op → f(image, magnitude, sign): the official lambdas with the sign passed in
    "ShearX": lambda img, m, s: img.transform(
        img.size, Image.AFFINE, (1, m * s, 0, 0, 1, 0), Image.BICUBIC, fillcolor=FILL
    ),
    "ShearY": lambda img, m, s: img.transform(
        img.size, Image.AFFINE, (1, 0, 0, m * s, 1, 0), Image.BICUBIC, fillcolor=FILL
    ),
    "TranslateX": lambda img, m, s: img.transform(
        img.size, Image.AFFINE, (1, 0, m * img.size[0] * s, 0, 1, 0), fillcolor=FILL
    ),
    "TranslateY": lambda img, m, s: img.transform(
        img.size, Image.AFFINE, (1, 0, 0, 0, 1, m * img.size[1] * s), fillcolor=FILL
    ),
    "Rotate": lambda img, m, s: rotate_with_fill(img, m),
    "Color": lambda img, m, s: ImageEnhance.Color(img).enhance(1 + m * s),
    "Posterize": lambda img, m, s: ImageOps.posterize(img, int(m)),  # numpy's int is 100× slower here, same image
    "Solarize": lambda img, m, s: ImageOps.solarize(img, m),
    "Contrast": lambda img, m, s: ImageEnhance.Contrast(img).enhance(1 + m * s),
    "Sharpness": lambda img, m, s: ImageEnhance.Sharpness(img).enhance(1 + m * s),
    "Brightness": lambda img, m, s: ImageEnhance.Brightness(img).enhance(1 + m * s),
    "AutoContrast": lambda img, m, s: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, s: ImageOps.equalize(img),
    "Invert": lambda img, m, s: ImageOps.invert(img),
}


def reference_op(img: Image.Image, op: str, level_bin: int | None, sign: int) -> Image.Image:
    return REFERENCE[op](img, RANGES[op][level_bin] if op in RANGES else 0, sign)


def reference_policy(images: torch.Tensor, draw: Draw) -> torch.Tensor:
    """Each image through its drawn sub-policy, op by op, in PIL."""
    out = []
    for image, k, runs, flips in zip(images, draw.policy.tolist(), draw.applied.tolist(), draw.negative.tolist()):
        img = to_pil(image)
        for (op, _, level_bin), run, flip in zip(TABLE[k], runs, flips):
            if run:
                img = reference_op(img, op, level_bin, -1 if flip else 1)
        out.append(from_pil(img))
    return torch.stack(out)


# ------------------------------------------------------------------ test images


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tensors are ~1 MB, and on a 2-core machine a second thread costs more
    than it saves (elementwise ops ran 3× slower with two here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """212 uint8 RGB 32×32 images: 172 real MNIST digits, each tinted one colour over a random two-colour
    gradient, 32 of uniform noise, and 8 flat or two-level images (the degenerate histograms)."""
    raw = gzip.decompress((MNIST_T10K / "t10k-images-idx3-ubyte.gz").read_bytes())
    digits = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).view(-1, 28, 28)
    g = torch.Generator().manual_seed(0)
    ink = F.pad(digits[torch.randperm(len(digits), generator=g)[:172]].float() / 255, (2, 2, 2, 2)).unsqueeze(1)
    return torch.cat([tinted_over_gradients(ink, g), noise(32, g), degenerate_images()])


def tinted_over_gradients(ink: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = len(ink)
    angle = torch.rand(n, 1, 1, 1, generator=g) * 2 * math.pi
    ramp = torch.linspace(0, 1, 32)
    along = torch.cos(angle) * ramp.view(1, 1, 1, 32) + torch.sin(angle) * ramp.view(1, 1, 32, 1)  # (n, 1, 32, 32)
    low, high = along.amin((2, 3), keepdim=True), along.amax((2, 3), keepdim=True)
    along = (along - low) / (high - low)
    start, end, tint = (torch.rand(n, 3, 1, 1, generator=g) * 300 - 20 for _ in range(3))  # some clip at 0 and 255
    background = start + (end - start) * along
    return (background * (1 - ink) + tint * ink).round().clamp(0, 255).to(torch.uint8)


def noise(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def degenerate_images() -> torch.Tensor:
    flat = torch.tensor([0, 255, 128, 37], dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 32, 32)
    halves = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    halves[:, :, :, 16:] = torch.tensor([255, 1, 200, 90], dtype=torch.uint8).view(4, 1, 1, 1)
    return torch.cat([flat, halves])


def single_op_draw(n: int, subpolicy: int, slot: int, negative: bool) -> Draw:
    """Every image runs one slot of one sub-policy, with the given sign."""
    applied = torch.zeros(n, 2, dtype=torch.bool)
    applied[:, slot] = True
    return Draw(torch.full((n,), subpolicy), applied, applied & negative)


def differing(a: torch.Tensor, b: torch.Tensor) -> str:
    bad = (a != b).flatten(1).any(1)
    return f"{int(bad.sum())} of {len(a)} images differ (first: {int(bad.nonzero()[0]) if bad.any() else None})"


# ------------------------------------------------------------------ each op, bit for bit

# (op, magnitude bin) → its first (sub-policy, slot) in the table (reversed: the first one written wins)
OP_SLOTS = {(op, b): (k, slot) for k, pair in reversed(list(enumerate(TABLE))) for slot, (op, _, b) in enumerate(pair)}


def test_levels_are_numpys_linspace():
    """The magnitudes are np.linspace's float64 values exactly (torch.linspace rounds some differently)."""
    for op, levels in RANGES.items():
        assert LEVELS[op] == levels.tolist(), op
    assert numpy_linspace(256, 0) == np.linspace(256, 0, 10).tolist()
    assert LEVELS["Posterize"] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]


MASKED_SUBSET = 64  # the mask grouping runs every op of the slot on the whole batch: slower on the CPU


@pytest.mark.parametrize("op,level_bin", sorted(OP_SLOTS, key=str))
def test_op_matches_pil(images, op, level_bin):
    """The batched op, through the policy's own tables, gives PIL's image for every test image (index
    grouping) and for the first 64 (mask grouping; test_policy_replayed_through_pil has all of them)."""
    k, slot = OP_SLOTS[(op, level_bin)]
    for negative in (False, True) if op in OFFICIAL_SIGNED else (False,):
        expected = torch.stack(
            [from_pil(reference_op(to_pil(x), op, level_bin, -1 if negative else 1)) for x in images]
        )
        # every op changes some image (else the comparison tests nothing), bar Color's bin 0: factor 1, a copy
        assert (expected != images).any() or (op, level_bin) == ("Color", 0), "the op changed nothing"
        draw = single_op_draw(len(images), k, slot, negative)
        out = BY_INDEX.apply(images, draw)
        assert torch.equal(out, expected), f"{op} bin {level_bin} negative={negative} index: {differing(out, expected)}"
        n = MASKED_SUBSET
        out = BY_MASK.apply(images[:n], single_op_draw(n, k, slot, negative))
        assert torch.equal(out, expected[:n]), (
            f"{op} bin {level_bin} negative={negative} mask: {differing(out, expected[:n])}"
        )


def batched_op(x: torch.Tensor, op: str, level_bin: int | None, sign: int) -> torch.Tensor:
    """One op at any magnitude bin, straight through the module's op functions (the policy's tables
    hold only the table's bins)."""
    H, W = x.shape[-2:]
    m = magnitude(op, level_bin, H, W) * (sign if op in OFFICIAL_SIGNED else 1)
    if op == "Rotate":
        return remap(x, nearest_source(rotate_coefficients(m, H, W), H, W).expand(len(x), -1), 128)
    if op in ("TranslateX", "TranslateY"):
        coefficients = translate_coefficients(m, 0 if op == "TranslateX" else 1)
        return remap(x, nearest_source(coefficients, H, W).expand(len(x), -1), 128)
    per_image = torch.full((len(x),), m, dtype=torch.float64)
    return SHEARS[op](x, per_image, 128) if op in SHEARS else COLOR_OPS[op](x, per_image)


@pytest.mark.parametrize("op", sorted(REFERENCE))
def test_op_matches_pil_at_every_bin(images, op):
    """Beyond the table: every magnitude bin and sign of every op, on 24 of the images."""
    x = images[::9]  # digits, noise and flat images
    for level_bin in range(10) if op in RANGES else (None,):
        for sign in (1, -1) if op in OFFICIAL_SIGNED else (1,):
            expected = torch.stack([from_pil(reference_op(to_pil(image), op, level_bin, sign)) for image in x])
            out = batched_op(x, op, level_bin, sign)
            assert torch.equal(out, expected), f"{op} bin {level_bin} sign {sign}: {differing(out, expected)}"


# ------------------------------------------------------------------ the whole policy


def test_policy_replayed_through_pil(images):
    """Random draws, both slots, on the images and their mirror images: the batched policy and the
    package's per-image PIL path both give the reference's images, with every op of the policy run."""
    images = torch.cat([images, images.flip(-1)])
    draw = BY_INDEX.draw(len(images), torch.Generator().manual_seed(11))
    ran = {TABLE[k][s][0] for k, row in zip(draw.policy.tolist(), draw.applied.tolist()) for s in (0, 1) if row[s]}
    assert ran == {op for pair in TABLE for op, p, _ in pair if p > 0}
    expected = reference_policy(images, draw)
    for policy in (BY_INDEX, BY_MASK):
        out = policy.apply(images, draw)
        assert torch.equal(out, expected), f"{policy.grouping}: {differing(out, expected)}"
    per_image = PILOfficialPolicy()
    rows = zip(images, draw.policy.tolist(), draw.applied.tolist(), draw.negative.tolist())
    assert torch.equal(torch.stack([per_image.apply_one(*row) for row in rows]), expected)


def test_rotate_takes_no_sign(images):
    """Even a Draw that says negative turns Rotate counter-clockwise, as the official policy always does."""
    k, slot = OP_SLOTS[("Rotate", 2)]
    turned = BY_INDEX.apply(images, single_op_draw(len(images), k, slot, negative=True))
    assert torch.equal(turned, BY_INDEX.apply(images, single_op_draw(len(images), k, slot, negative=False)))
    assert torch.equal(turned[0], from_pil(rotate_with_fill(to_pil(images[0]), RANGES["Rotate"][2])))


def test_draw_frequencies():
    """Sub-policies uniform, each slot's op with its probability (strictly below p: p = 0 never runs),
    signs fair where the op takes one and never elsewhere (Rotate included): 5-sigma binomial bounds."""
    n = 100_000
    draw = BY_INDEX.draw(n, torch.Generator().manual_seed(0))
    counts = torch.bincount(draw.policy, minlength=len(TABLE)).double()
    p_sub = 1 / len(TABLE)
    assert ((counts - n * p_sub).abs() <= 5 * math.sqrt(n * p_sub * (1 - p_sub))).all(), counts
    signed_draws = []
    for k, pair in enumerate(TABLE):
        mine = draw.policy == k
        for slot, (op, p, _) in enumerate(pair):
            runs = draw.applied[mine, slot].double()
            assert abs(runs.mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / len(runs)), (
                k,
                slot,
                runs.mean().item(),
                p,
            )
            negative = draw.negative[mine, slot]
            if op in OFFICIAL_SIGNED:
                signed_draws.append(negative)
            else:
                assert not negative.any(), f"{op} (sub-policy {k}) got a sign"
    signs = torch.cat(signed_draws).double()
    assert abs(signs.mean().item() - 0.5) <= 5 * math.sqrt(0.25 / len(signs)), signs.mean().item()
    assert any(op == "Rotate" for pair in TABLE for op, _, _ in pair) and "Rotate" not in OFFICIAL_SIGNED


def test_draws_follow_the_generator():
    policy = BY_INDEX
    x = noise(64, torch.Generator().manual_seed(1))
    a, b = (policy(x, torch.Generator().manual_seed(5)) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, policy(x, torch.Generator().manual_seed(6)))


def test_grey_images_match_pil():
    """One-channel batches ("L" images) too, through the per-image PIL path on the same draws."""
    x = noise(120, torch.Generator().manual_seed(2))[:, :1]
    draw = BY_INDEX.draw(len(x), torch.Generator().manual_seed(4))
    per_image = PILOfficialPolicy()
    rows = zip(x, draw.policy.tolist(), draw.applied.tolist(), draw.negative.tolist())
    expected = torch.stack([per_image.apply_one(*row) for row in rows])
    assert torch.equal(BY_INDEX.apply(x, draw), expected)


def test_recipe_through_pil_per_image_matches_batched(images):
    """data.loader=torchvision with `official` runs the PIL path: the whole recipe (policy, crop, flip)
    per image and batched, independent random streams, agree in per-image mean, spread and share of
    fill-grey pixels within 5 standard errors."""
    batched = BatchAugment("official", padding=4, flip=True)(images, torch.Generator().manual_seed(5))
    per_image = TorchvisionAugment("official", padding=4, flip=True)(images, torch.Generator().manual_seed(6))

    def stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = x.double().flatten(1)
        return {"mean": f.mean(1), "std": f.std(1), "grey": (x == 128).flatten(1).double().mean(1)}

    a, b = stats(batched), stats(per_image)
    for key in a:
        se = math.sqrt(a[key].var().item() / len(images) + b[key].var().item() / len(images))
        assert abs(a[key].mean().item() - b[key].mean().item()) <= 5 * se, (
            key,
            a[key].mean().item(),
            b[key].mean().item(),
        )
    assert (per_image != images).flatten(1).any(1).double().mean() > 0.9


def test_config_selects_the_official_policy():
    """data.augment.autoaugment=official composes; the per-image loader (data.loader=torchvision) then
    runs the PIL path, the batched loaders the batched policy; cifar10 stays torchvision's policy."""
    spec = dict(compose("data=cifar10", "data.augment.autoaugment=official").data.augment)
    per_image = build_augment(spec, "torchvision")
    assert isinstance(per_image, TorchvisionAugment) and isinstance(
        per_image.transform.transforms[0], PILOfficialPolicy
    )
    assert isinstance(build_augment(spec, "batched").policy, OfficialCIFAR10Policy)
    assert isinstance(build_augment({**spec, "autoaugment": "cifar10"}, "batched").policy, BatchAutoAugment)
    with pytest.raises(ValueError, match="one of cifar10, svhn, imagenet, official"):
        build_augment({**spec, "autoaugment": "offical"}, "batched")


# ------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device visible (tests hide GPUs unless CUDA_VISIBLE_DEVICES is set)"
)
def test_cuda_mask_path_matches_the_cpu(images):
    """On the GPU (mask grouping, no host sync once the tables are there): the same draws give the CPU's
    images up to 1 in at most 0.1 % of the pixels."""
    policy = OfficialCIFAR10Policy()
    cuda_images = images.cuda()
    draw = policy.draw(len(images), torch.Generator().manual_seed(11))
    generator = torch.Generator(device="cuda").manual_seed(0)
    policy(cuda_images, generator)  # builds the tables on the device (copies: host syncs, once)
    cuda_draw = draw.to("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_gpu = policy.apply(cuda_images, cuda_draw)
        policy(cuda_images, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    diff = (on_gpu.cpu().int() - policy.apply(images, draw).int()).abs()
    assert diff.max() <= 1 and (diff > 0).double().mean() <= 1e-3, (int(diff.max()), (diff > 0).double().mean().item())
