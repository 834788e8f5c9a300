"""Start-up validation: every mistake becomes one `ConfigError(key, value, allowed)`.

Runs on the composed config before any data is read or directory written.
Types and unknown keys are checked against the dataclass schemas; the range
and consistency rules below catch what types cannot.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from attnexp.config.schema import FIXED, GROUPS_BY_TARGET, SCHEMAS, TopSchema


class ConfigError(Exception):
    """A bad value: `key=value: what is allowed`."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        shown = f"{key}={_show(value)}" if value is not ... else key
        super().__init__(f"{shown}: {allowed}")


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _type_name(tp: Any) -> str:
    text = str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "list": "a list"}
    if text.startswith("Optional["):
        return names.get(text[9:-1], text[9:-1]) + " or null"
    return names.get(text, text)


def _check_schema(prefix: str, node: Any, schema: type) -> None:
    try:
        OmegaConf.merge(OmegaConf.structured(schema), node)
    except ConfigKeyError as e:
        known = ", ".join(f.name for f in dataclasses.fields(schema) if not f.name.startswith("_"))
        raise ConfigError(f"{prefix}.{e.full_key}", ..., f"unknown key (known: {known})") from None
    except ValidationError as e:
        name = str(e.full_key).split(".")[-1]
        tp = {f.name: f.type for f in dataclasses.fields(schema)}.get(name, "")
        raise ConfigError(f"{prefix}.{e.full_key}", node.get(name), f"expected {_type_name(tp)}") from None


def check_types(cfg: DictConfig) -> None:
    for group in GROUPS_BY_TARGET:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        schema = SCHEMAS.get(node._target_)
        if schema is not None:
            _check_schema(group, node, schema)
        value_map = node.get("value_map")
        if isinstance(value_map, DictConfig) and value_map.get("_target_") in SCHEMAS:
            _check_schema(f"{group}.value_map", value_map, SCHEMAS[value_map._target_])
    for key, schema in FIXED.items():
        if key in cfg:
            _check_schema(key, cfg[key], schema)
    top = {f.name: cfg.get(f.name) for f in dataclasses.fields(TopSchema) if f.name in cfg}
    _check_schema("", OmegaConf.create(top), TopSchema)


# ---------------------------------------------------------------- rules
Rule = Callable[[DictConfig, dict], None]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def _need(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _one_of(cfg: DictConfig, key: str, allowed: tuple) -> None:
    value = OmegaConf.select(cfg, key)
    if value is not None:
        _need(value in allowed, key, value, "one of " + ", ".join(map(str, allowed)))


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            if OmegaConf.is_missing(node, key):
                out.append(path)
            else:
                child = node._get_node(key)
                if isinstance(child, DictConfig):
                    out += _missing_keys(child, path + ".")
    return out


@rule
def _required(cfg, choices):
    missing = _missing_keys(cfg)
    if missing:
        raise ConfigError(missing[0], "???", f"required: set {missing[0]}=VALUE")
    # presets list keys they cannot run without (OmegaConf's ??? cannot override a group's null)
    for key in cfg.get("required") or []:
        if OmegaConf.select(cfg, key) is None:
            what = f"experiment={choices['experiment']} " if choices.get("experiment") else ""
            raise ConfigError(key, None, f"{what}needs it: add {key}=VALUE")


@rule
def _choices(cfg, choices):
    _one_of(cfg, "mode", ("train", "eval", "summary"))
    _one_of(cfg, "attention.impl", ("auto", "sdpa", "explicit"))
    _one_of(cfg, "model.positional_embedding", ("learnable", "sine", "none"))
    _one_of(cfg, "model.pooling", ("seqpool", "cls"))
    _one_of(cfg, "model.tokenizer", ("conv", "patch"))
    _one_of(cfg, "alpha.unit", ("epoch", "step"))
    _one_of(cfg, "data.loader", ("auto", "device", "torchvision"))
    _one_of(cfg, "trainer.progress_bar", ("auto", "on", "off"))
    _one_of(
        cfg,
        "trainer.precision",
        ("auto", "32", "32-true", "64", "64-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true"),
    )


@rule
def _positive(cfg, choices):
    for key in ("optimizer.lr",):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            _need(value > 0, key, value, "must be > 0")
    for key in (
        "data.batch_size",
        "data.eval_batch_size",
        "trainer.max_epochs",
        "trainer.check_val_every_n_epoch",
        "model.num_layers",
        "model.num_heads",
        "model.dim",
        "data.image_size",
    ):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            _need(value >= 1, key, value, "must be ≥ 1")
    for key in ("data.num_workers", "optimizer.weight_decay", "trainer.gradient_clip_val", "label_smoothing"):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            _need(value >= 0, key, value, "must be ≥ 0")
    for key in ("model.dropout", "model.attn_drop", "model.drop_path", "label_smoothing"):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            _need(0 <= value < 1, key, value, "must be in [0, 1)")
    split = OmegaConf.select(cfg, "data.val_split")
    if split is not None:
        _need(0 <= split < 1, "data.val_split", split, "a fraction in [0, 1)")


@rule
def _heads_divide_width(cfg, choices):
    dim, heads = OmegaConf.select(cfg, "model.dim"), OmegaConf.select(cfg, "model.num_heads")
    if dim and heads and OmegaConf.select(cfg, "model.head_dim") is None:
        _need(dim % heads == 0, "model.num_heads", heads, f"must divide model.dim={dim}")


@rule
def _tokenizer_fits_image(cfg, choices):
    tokenizer = OmegaConf.select(cfg, "model.tokenizer")
    size, patch = OmegaConf.select(cfg, "model.image_size"), OmegaConf.select(cfg, "model.patch_size")
    if tokenizer in (None, "patch") and size and patch:
        _need(size % patch == 0, "model.patch_size", patch, f"must divide the image size {size}")
    if tokenizer == "conv":
        size, layers = cfg.model.image_size, cfg.model.n_conv_layers
        _need(layers >= 1, "model.n_conv_layers", layers, "must be ≥ 1")
        _need(size >= 2**layers, "model.image_size", size, f"too small for {layers} conv+pool layers")


def _scheduled(node: Any) -> str | None:
    """The class name of an α-driven value map in this node, if any."""
    if not isinstance(node, DictConfig):
        return None
    vm = node.get("value_map", node)
    if isinstance(vm, DictConfig) and str(vm.get("_target_", "")).endswith((".Remix", ".Shift")):
        if vm.get("alpha") is None:
            return vm._target_.rsplit(".", 1)[-1]
    return None


def _alpha_values(alpha: DictConfig) -> list[float]:
    target = str(alpha._target_)
    if target.endswith("ConstantAlpha"):
        return [alpha.value]
    if target.endswith("StepAlpha"):
        return [p[1] for p in alpha.points]
    return [alpha.start, alpha.end]


@rule
def _alpha(cfg, choices):
    alpha = cfg.get("alpha")
    has_alpha = isinstance(alpha, DictConfig) and alpha.get("_target_")
    users = {g: _scheduled(cfg.get(g)) for g in ("attention", "seqpool")}
    for group, kind in users.items():
        if kind and not has_alpha:
            raise ConfigError(
                group, choices.get(group, kind.lower()), "needs an α schedule: add alpha=constant|linear|cosine|step"
            )
    if has_alpha:
        if str(alpha._target_).endswith("StepAlpha"):
            _need(len(alpha.points) > 0, "alpha.points", list(alpha.points), "a list of [epoch, value] pairs")
        if "Remix" in users.values() and not alpha.allow_extrapolation:
            for value in _alpha_values(alpha):
                _need(0 <= value <= 1, "alpha", value, "remix needs α in [0, 1] (or alpha.allow_extrapolation=true)")


@rule
def _seqpool_needs_seqpool_model(cfg, choices):
    choice = choices.get("seqpool")
    if choice and choice != "x" and "seqpool_value" not in cfg.get("model", {}):
        raise ConfigError("seqpool", choice, f"model={choices.get('model')} has no SeqPool (choose a cct* or cvt* model)")
    if choice and choice != "x" and cfg.model.get("pooling") == "cls":
        raise ConfigError("seqpool", choice, "model.pooling=cls has no SeqPool")


@rule
def _mode_needs(cfg, choices):
    if cfg.get("mode") == "eval":
        _need(cfg.get("ckpt_path") is not None, "ckpt_path", None, "mode=eval needs ckpt_path=PATH")


@rule
def _attention_needs_attention_model(cfg, choices):
    # a model without attention layers (cnn) would silently ignore the choice
    choice, model = choices.get("attention"), cfg.get("model")
    if choice and choice != "softmax" and isinstance(model, DictConfig) and "attn_layer" not in model:
        raise ConfigError(
            "attention", choice, f"model={choices.get('model')} has no attention (choose e.g. vit, deepvit, hybrid, cct2)"
        )


def _conv_stem_side(image_size: int) -> int:
    # models/cnn.py ConvStem: two valid 3×3 convs, then a 2×2 max-pool
    return (image_size - 4) // 2


@rule
def _seed003_geometry(cfg, choices):
    model = cfg.get("model")
    if not isinstance(model, DictConfig):
        return
    for key in ("emb_dropout", "feature_dropout", "hidden_dropout"):
        if model.get(key) is not None:
            _need(0 <= model[key] < 1, f"model.{key}", model[key], "must be in [0, 1)")
    target = str(model.get("_target_", ""))
    if target.endswith((".CNN", ".Hybrid")):
        size = model.image_size
        _need(_conv_stem_side(size) >= 1, "model.image_size", size, "the conv stem needs at least 6 pixels")
    if "patches_per_side" not in model:
        return
    side = _conv_stem_side(model.image_size) if target.endswith(".Hybrid") else model.image_size
    per_side = model.patches_per_side
    _need(per_side >= 1 and side % per_side == 0, "model.patches_per_side", per_side, f"must divide the ViT's input side {side}")
    patch, declared = side // per_side, model.get("declared_image_size")
    if declared is not None and declared != "pixel_count":
        ok = isinstance(declared, int) and not isinstance(declared, bool) and declared >= side and declared % patch == 0
        _need(ok, "model.declared_image_size", declared, f"null, pixel_count, or an integer ≥ {side} divisible by the patch {patch}")
    if model.get("reattention"):
        impl = OmegaConf.select(cfg, "attention.impl")
        _need(impl != "sdpa", "attention.impl", impl, "model.reattention=true mixes the attention maps: use auto or explicit")


# ---------------------------------------------------------------- ConvNN attention (seed 004)
CONVNN = "attnexp.layers.convnn.ConvNNAttention"
# the registries of attnexp/layers/convnn.py, repeated here so start-up checks need no torch
CONVNN_CHOICES = {
    "similarity": ("cosine", "euclidean"),
    "projection": ("kqv", "v", "kq", "none"),
    "sampling": ("all", "spatial", "random"),
    "prime_conv": ("regular", "depthwise"),
    "head_layout": ("split", "v_d_over_h2", "v_h"),
    "branch": ("none", "conv1d", "attention"),
}


def token_count(model: DictConfig) -> int | None:
    """Tokens a CompactTransformer's blocks see (class token included), torch-free; None for other models."""
    if not str(model.get("_target_", "")).endswith("cct.CompactTransformer"):
        return None
    side = model.image_size
    if model.tokenizer == "patch":
        side //= model.patch_size
    else:
        k = model.kernel_size
        stride, pad = max(1, k // 2 - 1), max(1, k // 2)  # tokenizer.conv_stride_padding, the official rule
        for _ in range(model.n_conv_layers):
            side = (side + 2 * pad - k) // stride + 1
            side = (side + 2 - 3) // 2 + 1  # MaxPool2d(3, 2, 1)
    return side * side + (model.pooling == "cls")


@rule
def _convnn(cfg, choices):
    node = cfg.get("attention")
    if not isinstance(node, DictConfig) or node.get("_target_") != CONVNN:
        return
    # values may be interpolations (experiment=convnn_ablation's lines): type-check them resolved
    _check_schema("attention", OmegaConf.create(OmegaConf.to_container(node, resolve=True)), SCHEMAS[CONVNN])
    for key, allowed in CONVNN_CHOICES.items():
        _one_of(cfg, f"attention.{key}", allowed)
    K, ratio, branch, layout = node.K, node.branch_ratio, node.branch, node.head_layout
    _need(K >= 1, "attention.K", K, "must be ≥ 1")
    _need(node.temperature > 0, "attention.temperature", node.temperature, "must be > 0")
    _need(0 <= ratio <= 1, "attention.branch_ratio", ratio, "a fraction in [0, 1]")
    if node.sampling != "all":
        _need((node.samples or 0) >= 1, "attention.samples", node.samples, f"sampling={node.sampling} needs samples ≥ 1")
    if layout != "split":
        _need(node.projection in ("kqv", "v"), "attention.head_layout", layout, "narrows V: needs attention.projection=kqv or v")
    model = cfg.get("model")
    if not isinstance(model, DictConfig) or not model.get("dim"):
        return
    dim = model.dim
    own = node.num_heads is not None
    heads, heads_key = (node.num_heads, "attention.num_heads") if own else (model.get("num_heads"), "model.num_heads")
    if not heads:
        return
    _need(heads >= 1, heads_key, heads, "must be ≥ 1")
    _need(dim % heads == 0, heads_key, heads, f"ConvNN's heads must divide the width model.dim={dim}")
    width = dim if branch == "none" else round(dim * ratio)  # channels through ConvNN
    if branch != "none":
        split = [("ConvNN", width)] if layout == "split" else []
        split += [("attention", dim - width)] if branch == "attention" else []
        for part, channels in split:
            ok = channels == 0 or channels % heads == 0
            _need(ok, heads_key, heads, f"must divide the {part} branch's {channels} channels (branch_ratio={ratio})")
    if layout == "v_d_over_h2" and width:
        _need(width // heads**2 >= 1, heads_key, heads, f"leaves V no channels ({width} // {heads}² = 0)")
    tokens = token_count(model)
    if not tokens or not width:
        return
    side = math.isqrt(tokens)
    extra, patches = tokens - side * side, side * side  # the class token, the square grid of patches
    against, what = tokens, "all tokens"
    if node.sampling != "all":
        _need(node.samples <= patches, "attention.samples", node.samples, f"at most the {patches} patches")
        against = extra + min(math.isqrt(node.samples), side) ** 2  # the spatial sub-grid (random's eval subset)
        what = f"the {node.sampling} sample"
    _need(K <= against, "attention.K", K, f"must not exceed the {against} tokens the similarity is computed against ({what})")


def validate(cfg: DictConfig, choices: dict | None = None) -> None:
    """Raise ConfigError for the first problem found."""
    choices = choices or {}
    try:
        _required(cfg, choices)
        check_types(cfg)
        for fn in RULES:
            fn(cfg, choices)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:  # a bad interpolation, a missing mandatory value
        key = getattr(e, "full_key", None) or "config"
        raise ConfigError(str(key), ..., str(e).splitlines()[0]) from None
