"""Every model × attention (× SeqPool) yaml on disk either works or is refused at start-up.

Found by listing conf/, so a new yaml is covered the day it is added. Each model
is composed once; the attention, SeqPool and α choices are composed once each and
swapped in memory. A combination the preflight accepts must build at toy width,
run forward and backward and, for a variant that adds no parameters, hold exactly
the softmax build's state_dict keys and shapes. One the preflight refuses must be
refused with a ConfigError (one line at the CLI) and be one of the refusals the
rules below predict.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from attnexp.assemble.objects import build_model
from attnexp.assemble.preflight import check_built, example_input
from attnexp.config.compose import compose, group_options, split_hydra
from attnexp.config.rules import validate
from attnexp.errors import ConfigError
from attnexp.layers.attention import Attention
from attnexp.layers.contract import AttentionLayer

MODELS = group_options("model")
ATTENTIONS = group_options("attention")
SEQPOOLS = group_options("seqpool")
FIVE_TOKENS = {
    "vit",
    "deepvit",
    "hybrid",
    "vit_seed003",
    "deepvit_seed003",
    "hybrid_seed003",
}  # 2×2 patches + class token

# toy width: small enough for the whole grid in seconds, divisible by every preset's head count
TOY = {"dim": 24, "num_layers": 2, "head_dim": 8, "hidden_dim": 16}
TOY_TIMM = {"embed_dim": 24, "depth": 2, "num_heads": 3, "patch_size": 8}


def composed(*overrides: str, data: str = "fake"):
    body, choices = split_hydra(compose([*overrides, f"data={data}"], return_hydra_config=True))
    return body, choices


def data_for(model: str) -> str:
    """The text models read word ids: their data is the generated text task."""
    return "text_demo" if model.startswith("text_") else "fake"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Toy-width models run fastest on one thread (no OpenMP hand-offs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nodes():
    """Each attention and SeqPool choice's node, and a constant α (one composition each)."""
    attention = {a: composed(f"attention={a}")[0].attention for a in ATTENTIONS}
    seqpool = {s: composed(f"seqpool={s}")[0].seqpool for s in SEQPOOLS}
    alpha = composed("alpha=constant", "alpha.value=0.5")[0].alpha
    return attention, seqpool, alpha


def predicted_refusal(model: str, cfg, attention: str, seqpool: str) -> str | None:
    """The key a combination must be refused on, from the documented rules (None: it must run)."""
    has_attention, has_seqpool = (
        "attn_layer" in cfg.model,
        "seqpool_value" in cfg.model and cfg.model.get("pooling") != "cls",
    )
    if seqpool != "x" and not has_seqpool:
        return "seqpool"
    if attention != "softmax" and not has_attention:
        return "attention"
    if attention == "convnn" and cfg.model.get("reattention"):
        return "model.reattention"  # ConvNN has no attention maps to mix
    if attention == "convnn" and model in FIVE_TOKENS:
        return "attention.K"  # K 9 > 5 tokens
    return None


def combination(base, choices, nodes, attention: str, seqpool: str):
    """The model's config with these choices swapped in (in place: cheaper than a copy)."""
    attention_nodes, seqpool_nodes, alpha = nodes
    base.attention = attention_nodes[attention]
    base.seqpool = seqpool_nodes[seqpool]
    base.alpha = alpha
    return base, {**choices, "attention": attention, "seqpool": seqpool, "alpha": "constant"}


def state_shapes(model: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def forward_backward(cfg, model: torch.nn.Module) -> None:
    x = example_input(cfg, model, 2)
    logits = model.train()(x)
    assert logits.shape == (2, cfg.model.num_classes)
    logits.logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def toy_base(model: str):
    """The model's composed config at toy width, its choices, and its toy model as a key."""
    base, choices = composed(f"model={model}", data=data_for(model))
    for key, value in TOY.items():
        if key in base.model:
            base.model[key] = value
    return base, choices, str({k: v for k, v in OmegaConf.to_container(base.model).items() if k != "official_name"})


def distinct_toys(models: list[str]) -> list[str]:
    """The first preset of each toy model: presets that differ only in what TOY overrides (text_cct4
    is text_cct2 with more layers) build the same toy model, and one grid per toy model keeps the file fast."""
    first: dict[str, str] = {}
    for model in models:
        first.setdefault(toy_base(model)[2], model)
    return list(first.values())


@pytest.mark.parametrize("model", distinct_toys(MODELS))
def test_every_attention_and_seqpool_works_or_is_refused_at_start_up(model, nodes):
    base, choices, _ = toy_base(model)
    if "kwargs" in base.model:  # model=timm: a toy of its family, through timm.create_model's own arguments
        base.model.image_size, base.model.kwargs = 32, TOY_TIMM
    seqpools = SEQPOOLS if "seqpool_value" in base.model else ["x", "softmax"]  # one refusal is enough there
    reference: dict = {}
    for seqpool in seqpools:
        for attention in ["softmax"] + [a for a in ATTENTIONS if a != "softmax"]:
            cfg, picked = combination(base, choices, nodes, attention, seqpool)
            expected = predicted_refusal(model, cfg, attention, seqpool)
            try:
                validate(cfg, picked)
                check_built(cfg, picked)
            except ConfigError as e:
                assert e.key == expected, f"{model} × {attention} × {seqpool} refused unexpectedly: {e}"
                continue
            finally:
                # the data, optimizer and Trainer checks do not depend on the attention or SeqPool:
                # the first combination runs them (train mode), the others only the model's (summary)
                base.mode = "summary"
            assert expected is None, f"{model} × {attention} × {seqpool} should be refused on {expected}"
            torch.manual_seed(0)
            built = build_model(cfg)
            forward_backward(cfg, built)
            shapes = state_shapes(built)
            if attention == "softmax":
                reference[seqpool] = shapes
            elif all(isinstance(m, Attention) for m in built.modules() if isinstance(m, AttentionLayer)):
                assert shapes == reference[seqpool], f"{model} × {attention}: the state_dict differs from softmax's"


@pytest.mark.parametrize("model", sorted(FIVE_TOKENS - {"deepvit", "deepvit_seed003"}))
def test_convnn_fits_the_five_token_seed003_vits_with_a_small_k(model, nodes):
    """ConvNN honours head_dim (4 heads × 64 on the 128 stream) and runs with K ≤ 5."""
    cfg, choices = composed(f"model={model}", "attention=convnn", "attention.K=3")
    check_built(cfg, choices)
    built = build_model(cfg)
    layer = built.blocks[0].self_attn if hasattr(built, "blocks") else built.vit.blocks[0].self_attn
    assert layer.proj.in_features == 4 * 64 and layer.proj.out_features == 128
    forward_backward(cfg, built)
