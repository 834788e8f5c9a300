"""The model presets against the official Compact-Transformers facts (tests/reference)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REFERENCE

import attnexp

PRESETS = {
    "cct2": "cct_2_3x2_32",
    "cct4": "cct_4_3x2_32",
    "cct6": "cct_6_3x2_32",
    "cct7": "cct_7_3x1_32",
    "cct7_3x2": "cct_7_3x2_32",
    "cct14": "cct_14_7x2_224",
    "cvt7": "cvt_7_4_32",
    "vitlite7": "vit_7_4_32",
}
# reference entries that need more than the preset
VARIANTS = {
    "cct_7_3x1_32_c100": ["model=cct7", "data=cifar100"],
    "cct_7_3x1_32_sine": ["model=cct7", "model.positional_embedding=sine"],
}


def reference() -> dict:
    return json.loads(REFERENCE.read_text())["models"]


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def shapes(model) -> dict:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


CASES = [(official, [f"model={preset}", "data=cifar10"]) for preset, official in PRESETS.items()] + list(
    VARIANTS.items()
)


@pytest.mark.parametrize("official,overrides", CASES, ids=[c[0] for c in CASES])
def test_keys_shapes_and_counts_match_official(official, overrides):
    ref = reference()[official]
    model = attnexp.build_model(overrides)
    assert shapes(model) == {k: s for k, s in ref["state_dict"]}
    assert trainable(model) == ref["params"]


@pytest.mark.numeric
def test_sine_table_is_fixed_and_matches_formula():
    model = attnexp.build_model(["model=cct7", "model.positional_embedding=sine"])
    table = model.classifier.positional_emb
    assert not table.requires_grad
    n, d = table.shape[1:]
    for p, i in [(0, 0), (3, 0), (5, 1), (17, 6), (200, 255), (255, 254)]:
        angle = p / 10000 ** (2 * (i // 2) / d)
        expected = (
            torch.sin(torch.tensor(angle, dtype=torch.float64))
            if i % 2 == 0
            else torch.cos(torch.tensor(angle, dtype=torch.float64))
        )
        # computed in float64, stored in float32: one rounding, ≤ U32 = 6e-8 for values ≤ 1
        assert table[0, p, i].item() == pytest.approx(expected.item(), abs=1e-6)


def test_cct14_builds_at_224_and_build_never_reads_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ folder here
    model = attnexp.build_model(["model=cct14", "model.image_size=224"])
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 10)


def test_pretrained_state_dict_reloads_strictly_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    source = attnexp.build_model(["model=cct2"]).eval()
    path = tmp_path / "official.pth"
    torch.save(source.state_dict(), path)
    loaded = attnexp.build_model(["model=cct2", f"model.pretrained={path}"]).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(source(x), loaded(x))


def test_pretrained_mismatch_is_one_clear_error(tmp_path):
    from attnexp.assemble.objects import CheckpointError

    path = tmp_path / "cct7.pth"
    torch.save(attnexp.build_model(["model=cct7"]).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        attnexp.build_model(["model=cct2", f"model.pretrained={path}"])
    message = str(err.value)
    assert "\n" not in message and "unexpected" in message and "mis-shaped" in message


def test_every_variant_keeps_the_official_keys():
    """softmax_v / remix / shift × every SeqPool line: exactly the official cct_2_3x2_32 entries."""
    base = {k: s for k, s in reference()["cct_2_3x2_32"]["state_dict"]}
    from conftest import compose

    from attnexp.assemble.objects import build_backbone
    from attnexp.config.compose import group_options

    cfg = compose("model=cct2", "alpha=constant")
    attentions = {a: compose(f"attention={a}").attention for a in ("softmax", "softmax_v", "remix", "shift")}
    seqpools = {s: compose(f"seqpool={s}").seqpool for s in group_options("seqpool")}
    for attention, attention_node in attentions.items():
        for seqpool, seqpool_node in seqpools.items():
            cfg.attention, cfg.seqpool = attention_node, seqpool_node  # one composition per choice
            with torch.device("meta"):  # keys and shapes only: no weights to initialise
                model = build_backbone(cfg)
            assert shapes(model) == base, (attention, seqpool)
