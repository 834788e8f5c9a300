"""Config → objects: the model (with pretrained weights), the datamodule, the α schedule.

Each group's node is built inside `blamed(group)`, so whatever a constructor
raises becomes a `ConfigError` naming that group's key (attnexp.blame).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from attnexp.blame import blamed
from attnexp.layers.value_maps import scheduled_maps

# keys of a model node that describe it rather than construct it
MODEL_META_KEYS = ("pretrained", "official_name")
# model keys that hold another group's object: (key, group)
MODEL_PARTS = (("attn_layer", "attention"), ("seqpool_value", "seqpool"))


class CheckpointError(Exception):
    pass


def model_class(cfg: DictConfig) -> type:
    return get_class(cfg.model._target_)


def loads_own_weights(cfg: DictConfig) -> bool:
    """A backbone that takes `pretrained` itself (timm's loader) rather than attnexp's strict load."""
    return getattr(model_class(cfg), "loads_pretrained", False)


def build_backbone(cfg: DictConfig) -> nn.Module:
    """The model as configured (no weights loaded by attnexp, α not set); the attention and SeqPool
    objects are built on their own, so an error in one names its group's key."""
    with blamed("model", cfg.model):
        node = OmegaConf.to_container(cfg.model, resolve=True)
        own = loads_own_weights(cfg)
    for key in MODEL_META_KEYS:
        if not (own and key == "pretrained"):
            node.pop(key, None)
    parts = {}
    for key, group in MODEL_PARTS:
        if node.get(key) is not None:
            with blamed(group, cfg.get(group)):
                parts[key] = instantiate(node.pop(key), _convert_="all")
    with blamed("model", cfg.model, cfg):
        return instantiate(node, **parts, _convert_="all")


def build_model(cfg: DictConfig) -> nn.Module:
    model = build_backbone(cfg)
    alpha = build_alpha(cfg)
    if alpha is not None:  # α at step 0, so a model built outside training is in a defined state
        for m in scheduled_maps(model):
            m.set_alpha(alpha(0, 1))
    if cfg.model.get("pretrained") and not loads_own_weights(cfg):
        load_weights(model, cfg.model.pretrained, key="model.pretrained")
    return model


def weights_source(cfg: DictConfig, model: nn.Module) -> dict | None:
    """Which weights a run started from (metrics.json): the backbone's own record, or the file."""
    if getattr(model, "weights", None) is not None:
        return model.weights
    path = cfg.model.get("pretrained")
    if not path:
        return None
    return {"file": os.path.abspath(path), "sha256": file_sha256(path)}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str, key: str) -> dict:
    """torch.load with one-line errors for a missing file or one that is not a checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{key}={path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle, zip and EOF errors all mean the same to the user
        raise CheckpointError(f"{key}={path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{key}={path}: not a checkpoint (holds a {type(obj).__name__}, not a dict)")
    return obj


def state_dict_of(obj: dict) -> dict[str, torch.Tensor]:
    """A raw state_dict (official .pth) or the backbone part of an attnexp / Lightning checkpoint."""
    if "state_dict" in obj:
        prefix = "model."
        return {k[len(prefix) :]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
    return obj


def mismatch_summary(model: nn.Module, state: dict[str, Any]) -> str | None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [
        f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if keys:
            shown = ", ".join(keys[:3]) + (f", … (+{len(keys) - 3})" if len(keys) > 3 else "")
            parts.append(f"{len(keys)} {label}: {shown}")
    return "; ".join(parts) or None


def _trained_as(obj: dict) -> str:
    """How an attnexp checkpoint's model was configured, as a hint for a mismatch."""
    model = (obj.get("attnexp_config") or {}).get("model") or {}
    if not model:
        return ""
    name = model.get("official_name") or str(model.get("_target_", "")).rsplit(".", 1)[-1]
    sizes = ", ".join(f"{k}={model[k]}" for k in ("dim", "num_layers", "num_heads", "num_classes") if k in model)
    return f"; the checkpoint's model: {name} ({sizes})"


def load_weights(model: nn.Module, path: str, key: str) -> None:
    obj = read_checkpoint(path, key)
    state = state_dict_of(obj)
    problem = mismatch_summary(model, state)
    if problem:
        raise CheckpointError(f"{key}={path}: does not fit this model ({problem}){_trained_as(obj)}")
    model.load_state_dict(state, strict=True)


def build_alpha(cfg: DictConfig):
    node = cfg.get("alpha")
    if not node or not node.get("_target_"):
        return None
    with blamed("alpha", node):
        return instantiate(node)


def model_data_spec(cfg: DictConfig) -> dict:
    """What the model asks of its input: the image size it is built for (`model.image_size`; most
    models follow `data.image_size`, model=vit_tiny224 is 224), or a backbone's own `data_spec`
    (a pretrained timm model's resolution and normalisation)."""
    if not isinstance(cfg.get("model"), DictConfig) or not cfg.model.get("_target_"):
        return {}
    with blamed("model", cfg.model):
        spec = getattr(model_class(cfg), "data_spec", None)
        node = OmegaConf.to_container(cfg.model, resolve=True)
        if spec is not None:
            return spec(node)
    return {"image_size": node["image_size"]} if node.get("image_size") else {}


def input_size(cfg: DictConfig) -> int:
    """The side of the images the model sees."""
    return model_data_spec(cfg).get("image_size") or cfg.data.image_size


def build_data(cfg: DictConfig):
    """The datamodule, delivering images as the model asks for them (model_data_spec)."""
    spec = model_data_spec(cfg)
    with blamed("data", cfg.data):
        return instantiate(cfg.data, seed=cfg.seed, _convert_="all", **spec)
