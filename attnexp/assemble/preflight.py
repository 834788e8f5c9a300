"""Build the whole job before anything is written: every value error is found by the code that owns it.

After composition (types, keys, choices: torch-free) the preflight builds every
object the job will use — the datamodule and its files' geometry, the α
schedule, the model on the meta device and one forward of a meta batch of the
data's shape (that is where token-count rules such as ConvNN's K live), the
optimizer and lr scheduler — and checks the rules that tie two of them
together. Any problem is one `StartupError`; nothing is written and no real
tensor is allocated for the model.
"""

from __future__ import annotations

import sys

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from attnexp.assemble.objects import (
    build_alpha,
    build_backbone,
    build_data,
    example_input,
    make_optimizer,
    make_trainer,
)
from attnexp.config.blame import blamed
from attnexp.data.files import DataMissingError
from attnexp.errors import ConfigError
from attnexp.layers.contract import AttentionLayer
from attnexp.layers.value_maps import scheduled_maps

META_BATCH = 2  # images in the meta forward (SeqPool's softmax over the batch axis needs more than one)


def map_group(model: nn.Module, alpha_map: nn.Module) -> str:
    """'attention' if the α map sits inside an attention module, else 'seqpool'."""
    for module in model.modules():
        if isinstance(module, AttentionLayer) and any(m is alpha_map for m in module.modules()):
            return "attention"
    return "seqpool"


def check_alpha(model: nn.Module, schedule) -> None:
    """α-driven maps (recognised by type) need a schedule, and one that stays where their formula holds."""
    maps = scheduled_maps(model)
    if not maps:
        return
    owner = map_group(model, maps[0])
    if schedule is None:
        raise ConfigError(owner, ..., "needs an α schedule: add alpha=constant|linear|cosine|step")
    low, high = schedule.extent()
    for m in maps:
        if m.alpha_range is None or schedule.allow_extrapolation:
            continue
        lo, hi = m.alpha_range
        if low < lo or high > hi:
            raise ConfigError(
                "alpha",
                ...,
                f"{type(m).__name__} ({map_group(model, m)}) needs α in [{lo:g}, {hi:g}], this schedule spans "
                f"[{low:g}, {high:g}] (or alpha.allow_extrapolation=true)",
            )


def meta_forward(cfg: DictConfig, model: nn.Module) -> None:
    """One forward in eval mode, the stricter one: ConvNN's eval sample (an evenly spaced
    sub-grid) is never larger than its random training sample."""
    batch = example_input(cfg, model, META_BATCH, "meta")
    with blamed("model", cfg.model, cfg), torch.no_grad():
        model.eval()(batch)


def check_optimization(cfg: DictConfig) -> None:
    with blamed("optimizer", cfg.optimizer):
        optimizer = make_optimizer(cfg, on_gpu=False)([nn.Parameter(torch.zeros(1))])
    if cfg.get("scheduler"):
        with blamed("scheduler", cfg.scheduler):
            instantiate(cfg.scheduler)(optimizer)


_warned: set[str] = set()


def check_data(cfg: DictConfig) -> None:
    """The datamodule and its files. A dry run plans without the dataset: a missing or broken
    file is then a warning (once per message), not an error."""
    datamodule = build_data(cfg)
    try:
        with blamed("data", cfg.data):
            datamodule.check()
    except DataMissingError as e:
        if not cfg.sweep.dry_run:
            raise
        if str(e) not in _warned:
            _warned.add(str(e))
            print(f"attnexp: warning: {e} (the dry run plans anyway)", file=sys.stderr)


def build_job(cfg: DictConfig) -> None:
    """Build what the job will use; raise StartupError for the first problem."""
    if cfg.mode in ("train", "eval"):
        check_data(cfg)
    schedule = build_alpha(cfg)
    with torch.device("meta"):
        model = build_backbone(cfg)
    meta_forward(cfg, model)
    check_alpha(model, schedule)
    if cfg.mode == "train":
        check_optimization(cfg)
    if cfg.mode in ("train", "eval"):
        check_trainer(cfg)


def check_trainer(cfg: DictConfig) -> None:
    """Lightning's Trainer, built as the job builds it (its constructor checks its arguments)."""
    with blamed("trainer", cfg.trainer):
        make_trainer(cfg, [], logger=False)


def check_built(cfg: DictConfig, choices: dict) -> None:
    """build_job, with a group-level error naming the group's choice (`attention=convnn: ...`)."""
    try:
        build_job(cfg)
    except ConfigError as e:
        if e.value is ... and choices.get(e.key):
            raise ConfigError(e.key, choices[e.key], e.reason) from None
        raise
