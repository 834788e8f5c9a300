"""Write attnexp/config/schema.py from the constructors' signatures: `python scripts/gen_schema.py`.

Every yaml of a built group attaches `- /schema/<group>/<name>@_here_`; the dataclass stored there
holds its target's parameters, typed from their annotations and defaulted from the signature, so a
wrong type or an unknown key fails while Hydra composes, before torch is imported. What no
signature says lives in the tables below. tests/test_schemas.py fails when the file is stale.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the attnexp of this checkout, installed or not

from hydra.utils import get_class  # noqa: E402

from attnexp.layers.contract import CONTRACT  # noqa: E402

TARGET = REPO / "attnexp" / "config" / "schema.py"

# Keys a config holds that no constructor takes: read by another object, so null unless set.
BUILD_KEYS = {"pretrained": "Optional[str]"}  # weights loaded by attnexp.assemble.objects, not the constructor
OFFICIAL = BUILD_KEYS | {"official_name": "Optional[str]"}  # the official checkpoint's name (attnexp.assemble)
LAYERS = {"layers": "Optional[List[int]]"}  # the blocks an attention applies to (layers.block.attention_per_block)
# The attention contract's keywords (and DeepViT's reattention=True) are the backbone's to pass: null in
# the config, since a value set there wins over the backbone's (layers.block.bind_attention).
BACKBONE_FILLS = (*CONTRACT, "reattention")


@dataclass(frozen=True)
class Node:
    target: str
    partial: bool = False  # Hydra builds a functools.partial: the code calls it with what it injects
    injected: tuple = ()  # parameters the code fills: never in a config
    routed: dict = field(default_factory=dict)  # {key: config type} of keys another object reads
    forwards_to: str | None = None  # the class a **kwargs parameter hands the rest on to
    exposed: tuple | None = None  # a Lightning class: only the arguments attnexp's yamls set
    filled: tuple = ()  # parameters the caller passes unless the config sets them: null here


ATTENTION = dict(partial=True, routed=LAYERS, filled=BACKBONE_FILLS)  # built by each block of the backbone

TABLE = {
    "data/image": Node("attnexp.data.datamodule.ImageDataModule", injected=("seed",)),  # the run's top-level seed
    "data/text": Node("attnexp.data.text_datamodule.TextDataModule", injected=("seed",)),
    "model/compact_transformer": Node("attnexp.models.cct.CompactTransformer", routed=OFFICIAL),
    "model/cnn": Node("attnexp.models.cnn.CNN", routed=BUILD_KEYS),
    "model/vit": Node("attnexp.models.vit.ViT", routed=BUILD_KEYS),
    "model/hybrid": Node("attnexp.models.vit.Hybrid", routed=BUILD_KEYS, forwards_to="attnexp.models.vit.ViT"),
    "model/timm": Node("attnexp.models.timm_vit.TimmViT"),
    "model/text_cct": Node("attnexp.models.text_cct.TextCCT", routed=OFFICIAL),
    "attention/attention": Node("attnexp.layers.attention.Attention", **ATTENTION),
    "attention/convnn": Node("attnexp.layers.convnn.ConvNNAttention", **ATTENTION),
    "seqpool/plain": Node("attnexp.layers.value_maps.Identity"),
    "seqpool/scaled": Node("attnexp.layers.value_maps.TokenSoftmax"),
    "seqpool/alpha": Node("attnexp.layers.value_maps.Remix"),
    "alpha/constant": Node("attnexp.schedules.ConstantAlpha"),
    "alpha/ramp": Node("attnexp.schedules.LinearAlpha"),
    "alpha/step": Node("attnexp.schedules.StepAlpha"),
    "optimizer/adamw": Node("torch.optim.AdamW", partial=True, injected=("params",)),
    "optimizer/adam": Node("torch.optim.Adam", partial=True, injected=("params",)),
    "scheduler/warmup_cosine": Node("attnexp.schedules.WarmupCosine"),
    "scheduler/step_lr": Node("torch.optim.lr_scheduler.StepLR", partial=True, injected=("optimizer",)),
    "trainer/trainer": Node(
        "pytorch_lightning.Trainer",
        injected=("callbacks", "logger", "plugins", "default_root_dir", "benchmark"),  # build.objects.make_trainer
        exposed=tuple(
            "accelerator devices strategy precision max_epochs deterministic check_val_every_n_epoch limit_train_batches"
            " limit_val_batches limit_test_batches gradient_clip_val log_every_n_steps enable_progress_bar"
            " enable_model_summary num_sanity_val_steps detect_anomaly".split()
        ),
    ),
    "logger/tensorboard": Node(
        "pytorch_lightning.loggers.TensorBoardLogger", exposed=("save_dir", "name", "version", "default_hp_metric")
    ),
}

# Config types where an annotation is too loose for a config (keyed by parameter name, in any target);
# a tuple of strings is an Enum of those values, refused while composing.
OVERRIDES = {
    "lr": "float",  # float | Tensor
    "betas": "List[float]",  # tuple[float | Tensor, float | Tensor]
    "accelerator": ("auto", "cpu", "gpu", "cuda"),  # str | Accelerator; attnexp resolves it (build.objects.on_gpu)
    "devices": "Any",  # list[int] | str | int
    "strategy": "str",  # str | Strategy
    "precision": "str",  # Literal[64, 32, 16, "bf16-mixed", ...]; "auto" is attnexp's (build.objects.make_trainer)
    "deterministic": "bool",  # bool | "warn"
    "gradient_clip_val": "float",  # float | int
    # float | int, and Lightning tells them apart: an int is a number of batches, a float a fraction of
    # the epoch, so a float field would turn limit_val_batches=1 (one batch) into 1.0 (the whole epoch)
    "limit_train_batches": "Any",
    "limit_val_batches": "Any",
    "limit_test_batches": "Any",
    "save_dir": "Optional[str]",  # str | Path; null until the job has its folder (${paths.output_dir})
    "version": "str",  # int | str (TensorBoardLogger)
    "declared_image_size": "Any",  # int | str: an integer or pixel_count (models.vit.ViT)
    "mean": "List[float]",  # list (data.datamodule.ImageDataModule)
    "std": "List[float]",
    # dict | None: OmegaConf cannot merge a dict override (data.augment={...}) into a null typed Dict
    "augment": "Any",
}

CONFIG_TYPES = {int: "int", float: "float", bool: "bool", str: "str"}


def config_type(kind: Any) -> str:
    """The OmegaConf type of an annotation, nulls left out; a union of two kinds of value needs OVERRIDES."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind in CONFIG_TYPES:
        return CONFIG_TYPES[kind]
    if kind in (Any, inspect.Parameter.empty):
        return "Any"
    if origin is Literal and all(isinstance(a, str) for a in args):
        return "str"
    if origin in (Union, types.UnionType):
        kinds = {config_type(a) for a in args if a is not type(None)}
        if len(kinds) > 1:
            raise TypeError(f"{kind}: more than one kind of value; give its config type in OVERRIDES")
        return kinds.pop()
    if kind in (list, tuple) or origin in (list, tuple):
        inner = {config_type(a) for a in args if a is not Ellipsis} or {"Any"}
        if len(inner) > 1:
            raise TypeError(f"{kind}: mixed elements; give its config type in OVERRIDES")
        return f"List[{inner.pop()}]"
    if kind is dict or origin is dict:
        return "Dict[str, Any]"
    if isinstance(kind, type) and issubclass(kind, os.PathLike):
        return "str"
    return "Any"  # a class or a callable: a nested `_target_` node (or null)


def nullable(kind: Any) -> bool:
    return typing.get_origin(kind) in (Union, types.UnionType) and type(None) in typing.get_args(kind)


def enum_name(key: str) -> str:
    return "".join(part.title() for part in key.split("_"))


def literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    assert not isinstance(value, dict), value
    return repr(value)


def parameters(cls: type) -> list[tuple[str, Any, Any]]:
    """(name, annotation, default) of each keyword the constructor takes; a dataclass field's factory called."""
    hints = typing.get_type_hints(cls.__init__)
    factories = {f.name: f.default_factory for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    out = []
    for p in inspect.signature(cls).parameters.values():
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            factory = factories.get(p.name, dataclasses.MISSING)
            out.append((p.name, hints.get(p.name, Any), p.default if factory is dataclasses.MISSING else factory()))
    return out


def field_line(name: str, kind: Any, default: Any, filled: bool) -> str:
    """`name: type = default`; `filled`: the backbone passes it, so null here."""
    override = OVERRIDES.get(name)
    inner = enum_name(name) if isinstance(override, tuple) else override or config_type(kind)
    if filled:
        default = None
    optional = default is None or nullable(kind)
    text = f"Optional[{inner}]" if optional and inner != "Any" else inner
    if default is inspect.Parameter.empty:
        value = '"???"'  # required: the yaml must set it
    elif isinstance(override, tuple) and default is not None:
        assert default in override, (name, default)
        value = f"{inner}.{default}"
    elif isinstance(default, (list, tuple, dict)):  # a yaml list (or mapping): one fresh copy per config
        factory = f"lambda: {literal(list(default))}" if default else type(default).__name__.replace("tuple", "list")
        value = f"field(default_factory={factory})"
    else:
        value = literal(default)
    return f"    {name}: {text} = {value}"


def schema_class(path: str, node: Node) -> tuple[str, str]:
    """(class name, source) of one node's dataclass."""
    cls = get_class(node.target)
    params = parameters(cls)
    if node.forwards_to:
        own = {name for name, _, _ in params}
        params += [p for p in parameters(get_class(node.forwards_to)) if p[0] not in own]
    known = {name for name, _, _ in params}
    assert set(node.injected) <= known, (path, set(node.injected) - known)
    if node.exposed:
        assert set(node.exposed) <= known - set(node.injected), (path, set(node.exposed) - known)
        params = [p for p in params if p[0] in node.exposed]
    name = f"{cls.__name__}Schema"
    lines = ["@dataclass", f"class {name}:", f'    _target_: str = "{node.target}"']
    lines += ["    _partial_: bool = True"] if node.partial else []
    lines += [field_line(p, kind, default, p in node.filled) for p, kind, default in params if p not in node.injected]
    lines += [f"    {key}: {kind} = None" for key, kind in node.routed.items()]
    for attr, value in (("INJECTED", node.injected), ("ROUTED", tuple(node.routed)), ("FORWARDS_TO", node.forwards_to)):
        if value:
            lines.append(f"    {attr}: ClassVar[{type(value).__name__}] = {literal(value)}")
    return name, "\n".join(lines)


HEADER = '''# Generated by scripts/gen_schema.py from the constructors' signatures: do not edit by hand.
# After changing a constructor or the generator's tables: python scripts/gen_schema.py
"""Structured-config schemas of the built groups: the type of every knob, so a wrong type or an
unknown key fails while Hydra composes, before torch is imported.

One dataclass per constructor a config group targets: its parameters, typed from their annotations
and defaulted from the signature (`???`: the yaml must set it), minus what the code fills
(`INJECTED`), plus keys another object reads (`ROUTED`); `FORWARDS_TO` names the class a **kwargs
parameter hands the rest on to. Values are checked by the constructors when the preflight builds
the job. The nodes no constructor describes are attnexp/config/nodes.py.

Each yaml attaches its schema through its defaults list (`- /schema/<group>/<name>@_here_`), in
the `schema/` tree of Hydra's ConfigStore, which attnexp's help and "available:" lists never show.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import {typing_names}

from hydra.core.config_store import ConfigStore


class Choice(str, Enum):
    """A value from a fixed set that reads as its plain string: ==, f-strings, str(), dict keys, json."""

    __str__ = str.__str__
    __format__ = str.__format__

'''

FOOTER = '''

def register(schemas: dict[str, type]) -> None:
    """Each schema at schema/<path> in Hydra's ConfigStore, where the yamls' defaults lists name it."""
    store = ConfigStore.instance()
    for path, schema in schemas.items():
        group, _, name = path.rpartition("/")
        store.store(group=f"schema/{group}".rstrip("/"), name=name, node=schema)


register(SCHEMAS)
'''


def render() -> str:
    """The text of attnexp/config/schema.py."""
    enums = [
        f"class {enum_name(key)}(Choice):\n" + "".join(f'    {v} = "{v}"\n' for v in values)
        for key, values in OVERRIDES.items()
        if isinstance(values, tuple)
    ]
    classes = [schema_class(path, node) for path, node in TABLE.items()]
    registry = "".join(f'    "{path}": {name},\n' for path, (name, _) in zip(TABLE, classes))
    body = "\n\n".join(enums + [source + "\n" for _, source in classes])
    body += f"\n\nSCHEMAS: dict[str, type] = {{\n{registry}}}\n"
    used = sorted(set(re.findall(r"\b(Any|ClassVar|Dict|List|Optional)\[?", body)))
    return HEADER.replace("{typing_names}", ", ".join(used)) + "\n" + body + FOOTER


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET.relative_to(REPO)}")
