"""The rules no single constructor can check (torch-free).

Types, unknown keys and the fixed sets (mode, sweep.pack, trainer.accelerator) are the
schemas' job (Hydra, while composing); a value of one object is its constructor's
(attnexp.assemble.preflight builds every object). What is left here ties two objects, or the
job, together:
- required keys: `???` values and the keys a preset lists under `required`;
- the job: `mode=eval` needs a checkpoint, and the files the job names exist;
- groups that only some models read: a SeqPool choice on a model without
  SeqPool, an attention choice on a model without attention, would otherwise be
  silently ignored;
- the trainer's epoch and step counts ≥ 1 (attnexp counts with them; Lightning would take null).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from attnexp.errors import ConfigError

Rule = Callable[[DictConfig, dict], None]
RULES: list[Rule] = []


def rule(fn: Rule) -> Rule:
    RULES.append(fn)
    return fn


def _need(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


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
def _model_reads_its_data(cfg, choices):
    """A model reads sizes from the data node (`${data.num_classes}`, a text model's
    `${data.max_size}`): data of another kind lacks them. Said before anything resolves them."""
    model, data = cfg.get("model"), cfg.get("data")
    if not isinstance(model, DictConfig) or not isinstance(data, DictConfig):
        return
    raw = OmegaConf.to_container(model, resolve=False)
    wanted = {m for v in raw.values() if isinstance(v, str) for m in re.findall(r"\$\{data\.(\w+)\}", v)}
    lacking = sorted(k for k in wanted if k not in data)
    if lacking:
        raise ConfigError(
            "model",
            choices.get("model"),
            f"reads data.{lacking[0]}, which data={choices.get('data')} does not have (data for another kind of model)",
        )


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
def _job(cfg, choices):
    if cfg.mode == "eval":
        _need(cfg.get("ckpt_path") is not None, "ckpt_path", None, "mode=eval needs ckpt_path=PATH")
    for key in ("ckpt_path", "model.pretrained"):
        path = OmegaConf.select(cfg, key)
        _need(not isinstance(path, str) or os.path.isfile(path), key, path, "no such file")


@rule
def _reuse(cfg, choices):
    reuse = OmegaConf.select(cfg, "sweep.reuse")
    _need(reuse in (True, False, "verify"), "sweep.reuse", reuse, "true, false or verify")


@rule
def _trainer(cfg, choices):
    t = cfg.get("trainer")
    if not isinstance(t, DictConfig):
        return
    for key in ("max_epochs", "check_val_every_n_epoch", "log_every_n_steps"):
        _need(t[key] is not None and t[key] >= 1, f"trainer.{key}", t[key], "must be ≥ 1")


@rule
def _seqpool_needs_seqpool_model(cfg, choices):
    choice, model = choices.get("seqpool"), cfg.get("model")
    if not choice or choice == "x" or not isinstance(model, DictConfig):
        return
    if "seqpool_value" not in model:
        raise ConfigError(
            "seqpool", choice, f"model={choices.get('model')} has no SeqPool (choose a cct* or cvt* model)"
        )
    if model.get("pooling") == "cls":
        raise ConfigError("seqpool", choice, "model.pooling=cls has no SeqPool")


@rule
def _attention_needs_attention_model(cfg, choices):
    choice, model = choices.get("attention"), cfg.get("model")
    if choice and choice != "softmax" and isinstance(model, DictConfig) and "attn_layer" not in model:
        raise ConfigError(
            "attention",
            choice,
            f"model={choices.get('model')} has no attention (choose e.g. vit, deepvit, hybrid, cct2)",
        )


def validate(cfg: DictConfig, choices: dict | None = None) -> None:
    """Raise ConfigError for the first cross-object problem found."""
    choices = choices or {}
    try:
        for fn in RULES:
            fn(cfg, choices)
    except OmegaConfBaseException as e:  # a bad interpolation, a missing mandatory value
        key = getattr(e, "full_key", None) or "config"
        raise ConfigError(str(key), ..., str(e).splitlines()[0]) from None
