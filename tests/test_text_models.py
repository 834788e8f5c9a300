"""Text CCT: the official keys, shapes and counts; the official masked attention and the tokenizer's
mask against formulas written here; padding without influence (model.seqpool_mask=true) for every
attention and SeqPool choice; no example depending on its batch."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import REPO, TEXT_REFERENCE
from formulas import (
    MASKED_VALUE_FORMULAS,
    masked_softmax_by_hand,
    official_masked_attention,
    sine_rows,
    text_tokenizer,
    text_tokenizer_mask,
)
from omegaconf import OmegaConf

from attnexp.assemble.objects import build_backbone, build_model
from attnexp.config.compose import compose, group_options, split_hydra
from attnexp.layers.attention import Attention
from attnexp.layers.value_maps import Remix, Shift, TokenSoftmax
from attnexp.models.text_cct import TextCCT, TextTokenizer

PRESET = {"2": "text_cct2", "4": "text_cct4", "6": "text_cct6"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def composed(*overrides: str):
    return split_hydra(compose(["data=text_demo", *overrides], return_hydra_config=True))


def test_keys_shapes_and_trainable_counts_equal_the_official_models():
    presets = {depth: composed(f"model={name}")[0] for depth, name in PRESET.items()}
    for name, ref in json.loads(TEXT_REFERENCE.read_text())["models"].items():
        depth, vocab, classes, seq_len = re.match(
            r"text_cct_(\d)\(vocab_size=(\d+), num_classes=(\d+), seq_len=(\d+)\)", name
        ).groups()
        cfg = presets[depth]
        cfg.data.max_size, cfg.data.num_classes, cfg.data.seq_len = int(vocab), int(classes), int(seq_len)
        with torch.device("meta"):
            model = build_backbone(cfg)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == ref["state_dict"], name
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ref["trainable"], name


@pytest.mark.numeric
def test_an_official_state_dict_loads_strictly_and_the_table_keeps_its_leading_zero_row(tmp_path):
    model = TextCCT(vocab_size=50, num_classes=3)
    table = model.classifier.positional_emb
    assert table.shape == (1, 34, 128) and not table.requires_grad
    assert torch.equal(table[0, 0], torch.zeros(128))
    # computed in float64, stored in float32: one rounding, ≤ U32 = 6e-8 for values ≤ 1
    torch.testing.assert_close(table[0, 1:], sine_rows(33, 128), rtol=0, atol=1e-6)
    path = tmp_path / "official.pth"
    torch.save(model.state_dict(), path)
    cfg, _ = composed("model=text_cct2", "data.max_size=50", "data.num_classes=3", f"model.pretrained={path}")
    loaded = build_model(cfg)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


# ---------------------------------------------------------------- masked attention and value maps


@pytest.mark.numeric
@pytest.mark.parametrize("impl", ["explicit", "sdpa"])
@pytest.mark.parametrize("value", ["x", "softmax", "shift"])
def test_masked_attention_is_the_official_one(impl, value):
    torch.manual_seed(0)
    maps = {"x": None, "softmax": TokenSoftmax(), "shift": Shift(alpha=0.5)}
    layer = Attention(dim=12, num_heads=3, impl=impl, value_map=maps[value]).double().eval()
    x = torch.randn(3, 7, 12, dtype=torch.double)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [False, True, True, False, True, False, False]])
    formula = MASKED_VALUE_FORMULAS[value]
    expected = official_masked_attention(
        x, layer.qkv.weight, layer.proj.weight, layer.proj.bias, 3, mask, lambda v, real: formula(v, real, 0.5)
    )
    # float64: dot products of ≤ 48 terms and a masked softmax, values ≤ 10: within 1e-13 on any CPU
    torch.testing.assert_close(layer(x, attn_mask=mask), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.numeric
def test_a_padded_query_averages_every_token_uniformly():
    torch.manual_seed(0)
    layer = Attention(dim=8, num_heads=2, impl="explicit").double()
    q = k = torch.randn(1, 2, 5, 4, dtype=torch.double)
    maps = layer.attention_maps(q, k, torch.tensor([[True, True, True, False, False]]))
    torch.testing.assert_close(maps[0, :, 3:], torch.full((2, 2, 5), 0.2, dtype=torch.double))
    assert (maps[0, :, :3, 3:] == 0).all()


@pytest.mark.numeric
@pytest.mark.parametrize("value_map", [TokenSoftmax(10.0), Remix(alpha=0.3), Shift(alpha=-1.0)])
def test_value_maps_soft_max_over_the_real_tokens_only(value_map):
    v = torch.randn(2, 6, 4, dtype=torch.double)
    real = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1]], dtype=torch.bool)[..., None]
    soft = masked_softmax_by_hand(v, real, 1)
    scale = getattr(value_map, "scale", None)
    alpha = float(getattr(value_map, "alpha", 0.0))
    expected = {TokenSoftmax: lambda: scale * soft, Remix: lambda: alpha * soft + (1 - alpha) * v,
                Shift: lambda: v + alpha * soft}[type(value_map)]()  # fmt: skip
    torch.testing.assert_close(value_map(v, real), expected)


# ---------------------------------------------------------------- the tokenizer


@pytest.mark.numeric
@pytest.mark.parametrize("kernel", [2, 4, 5])
def test_the_tokenizer_and_its_mask_propagation_match_the_formulas(kernel):
    torch.manual_seed(kernel)
    stride, padding = max(1, kernel // 2 - 1), max(1, kernel // 2)
    tok = TextTokenizer(word_dim=6, dim=5, kernel_size=kernel, stride=stride, padding=padding).double()
    mask = torch.rand(4, 13) > 0.4
    mask[0] = True
    mask[1, 5:] = False
    words = torch.randn(4, 13, 6, dtype=torch.double) * mask[..., None]
    tokens, out_mask = tok(words[:, None], mask)
    assert torch.equal(out_mask, text_tokenizer_mask(mask, kernel, stride, padding))
    torch.testing.assert_close(tokens, text_tokenizer(words, tok.conv_layers[0].weight, mask, stride, padding))
    assert tokens.shape[1] == tok.sequence_length(13)


def test_sequence_length_64_gives_33_tokens():
    assert TextCCT(vocab_size=10, num_classes=2).classifier.positional_emb.shape[1] == 33 + 1


# ---------------------------------------------------------------- every attention × SeqPool choice


ATTENTIONS = group_options("attention")
SEQPOOLS = group_options("seqpool")
SMALL = ["data.max_size=40", "model.dim=24", "model.word_embedding_dim=6", "model.num_layers=2", "data.seq_len=24"]


def choice_node(group: str, choice: str):
    """A choice's yaml as written (its schema link dropped): composing 14 of them would cost ~10 s here."""
    node = OmegaConf.load(REPO / "conf" / group / f"{choice}.yaml")
    node.pop("defaults", None)
    return node


@pytest.fixture(scope="module")
def nodes():
    """One composition: the text model; the attention and SeqPool nodes are swapped in memory."""
    base, _ = composed("model=text_cct2", *SMALL)
    attention = {a: choice_node("attention", a) for a in ATTENTIONS}
    seqpool = {s: choice_node("seqpool", s) for s in SEQPOOLS}
    return base, attention, seqpool


def build(nodes, attention: str, seqpool: str, seqpool_mask: bool) -> TextCCT:
    base, attentions, seqpools = nodes
    base.attention, base.seqpool = attentions[attention], seqpools[seqpool]
    base.model.seqpool_mask = seqpool_mask
    if attention == "convnn":
        base.attention.K = 5  # above the real tokens of the short example: those slots weigh 0
    torch.manual_seed(0)
    model = build_backbone(base).double().eval()
    for m in model.modules():
        if hasattr(m, "set_alpha"):
            m.set_alpha(0.5)
    return model


def text_batch(vocab: int = 40, seq_len: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, vocab, (3, seq_len), generator=g)
    ids[1, 9:] = 1  # 9 words, then padding
    ids[2, 3:] = 1  # 3 words: fewer real tokens than ConvNN's K
    return ids


def perturb_padding(model: TextCCT, noise: float) -> list:
    """Hooks that add noise at padded positions after the tokenizer and after every block."""
    state = {}
    g = torch.Generator().manual_seed(2)

    def after_tokenizer(module, args, out):
        tokens, mask = out
        state["pad"] = ~mask[..., None]
        return tokens + noise * torch.randn(tokens.shape, generator=g, dtype=tokens.dtype) * state["pad"], mask

    def after_block(module, args, out):
        return out + noise * torch.randn(out.shape, generator=g, dtype=out.dtype) * state["pad"]

    return [model.tokenizer.register_forward_hook(after_tokenizer)] + [
        b.register_forward_hook(after_block) for b in model.classifier.blocks
    ]


@pytest.mark.numeric
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_with_seqpool_mask_padding_has_no_influence_for_every_choice(nodes, attention):
    """softmax_dim0 is left out: it soft-maxes over the batch, so a padded position of one
    example reaches the others by design (it claims nothing about padding)."""
    ids = text_batch()
    for seqpool in [s for s in SEQPOOLS if s != "softmax_dim0"]:
        model = build(nodes, attention, seqpool, seqpool_mask=True)
        with torch.no_grad():
            clean = model(ids)
            hooks = perturb_padding(model, noise=10.0)
            noisy = model(ids)
        for h in hooks:
            h.remove()
        assert torch.isfinite(clean).all()
        # float64: reordered sums of these values (≤ 1e2) differ by ≤ 1e-12 on any CPU; noise of 10 at the
        # padding leaking through any weight above 1e-7 would exceed 1e-6
        torch.testing.assert_close(noisy, clean, rtol=0, atol=1e-6, msg=f"{attention} × {seqpool}")


@pytest.mark.numeric
def test_without_seqpool_mask_seqpool_reads_the_padding_as_the_official_model_does(nodes):
    model = build(nodes, "softmax", "x", seqpool_mask=False)
    ids = text_batch()
    with torch.no_grad():
        clean = model(ids)
        hooks = perturb_padding(model, noise=10.0)
        noisy = model(ids)
    for h in hooks:
        h.remove()
    assert torch.equal(noisy[0], clean[0])  # no padding in the first example
    assert not torch.allclose(noisy[1:], clean[1:], atol=1e-3)


@pytest.mark.numeric
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_an_example_never_depends_on_the_rest_of_its_batch(nodes, attention):
    ids = text_batch()
    for seqpool in [s for s in SEQPOOLS if s != "softmax_dim0"]:
        model = build(nodes, attention, seqpool, seqpool_mask=False)
        with torch.no_grad():
            together = model(ids)
            alone = torch.cat([model(ids[i : i + 1]) for i in range(len(ids))])
        # float64, batched and alone are one function by other kernels: ≤ 6 layers of dot products of
        # ≤ 300 terms (γ₃₀₀ = 3.3e-14) on values ≤ 1e2 stay within 1e-10 on any CPU
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-10, msg=f"{attention} × {seqpool}")
