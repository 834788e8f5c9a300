"""Config → objects: the model (with pretrained weights), the datamodule, the α schedule, an
example input, and what trains them: the optimizer, the Trainer and its logger (the training
modules are built where they are defined, attnexp.train.module and attnexp.pack.module).
A run, a pack, the dry-run estimate and attnexp-bench all build through these factories.

Each group's node is built inside `blamed(group)`, so whatever a constructor
raises becomes a `ConfigError` naming that group's key (attnexp.config.blame).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import nn

from attnexp.config.blame import blamed
from attnexp.errors import require
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
    """Which weights a run started from (metrics.json): the backbone's own record, or the file; a file
    with its sha256."""
    weights = getattr(model, "weights", None)
    if weights is None and cfg.model.get("pretrained"):
        weights = {"file": os.path.abspath(cfg.model.pretrained)}
    if weights and weights.get("file"):
        return weights | {"sha256": file_sha256(weights["file"])}
    return weights


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file in the same folder, then rename: a kill mid-write keeps the previous file.
    Reads a run folder written while Lightning's ModelCheckpoint kept its checkpoints (the cda3209
    fixture) without that callback's states: attnexp.train.callbacks.Checkpoints finds the best so far
    in the history, and a state no callback answers to would be reported as lost on resume."""

    def load_checkpoint(self, *args, **kwargs) -> dict:
        checkpoint = super().load_checkpoint(*args, **kwargs)
        states = checkpoint.get("callbacks") or {}
        for key in [k for k in states if str(k).startswith("ModelCheckpoint{")]:
            del states[key]
        return checkpoint

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


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


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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


def build_data(cfg: DictConfig):
    """The datamodule, delivering images as the model asks for them (model_data_spec)."""
    spec = model_data_spec(cfg)
    with blamed("data", cfg.data):
        return instantiate(cfg.data, seed=cfg.seed, _convert_="all", **spec)


def on_gpu(cfg: DictConfig) -> bool:
    return torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")


def trainer_precision(cfg: DictConfig) -> str:
    """The precision the Trainer runs at: `auto` is bf16-mixed on a GPU, 32-true on the CPU."""
    precision = cfg.trainer.precision
    return precision if precision != "auto" else ("bf16-mixed" if on_gpu(cfg) else "32-true")


def seed_and_threads(cfg: DictConfig) -> None:
    if cfg.compute.num_threads:
        torch.set_num_threads(cfg.compute.num_threads)
    if on_gpu(cfg):
        torch.set_float32_matmul_precision(cfg.compute.matmul_precision)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)


def _compile_failed(e: Exception) -> None:
    reason = (str(e).strip().splitlines() or [""])[0][:200]
    print(f"attnexp: torch.compile failed ({type(e).__name__}: {reason}); running eager", file=sys.stderr)


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """torch.compile `model` in place (same object, same state_dict keys, so checkpoints load anywhere).

    Compilation happens at the first call, which is also where a missing C++
    compiler or an unsupported op shows up: then one line says so and the
    model runs eager from then on, instead of the run dying.
    """
    if not enabled:
        return model
    try:
        model.compile()
    except Exception as e:  # e.g. a Python version dynamo does not support
        _compile_failed(e)
        return model
    from torch._dynamo.exc import TorchDynamoException

    compiled = getattr(model, "_compiled_call_impl", None)  # where nn.Module.compile keeps the compiled call
    if compiled is None:  # a torch whose Module.compile works otherwise: compiled, without the fallback
        return model

    def call_or_fall_back(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except TorchDynamoException as e:  # backend and toolchain failures
            _compile_failed(e)
            model._compiled_call_impl = None
            return model._call_impl(*args, **kwargs)

    model._compiled_call_impl = call_or_fall_back
    return model


def channels_last_tokenizer(model: torch.nn.Module) -> torch.nn.Module:
    """NHWC tokenizer convs (what cuDNN's tensor-core kernels and oneDNN want); a pre-hook converts the input.

    The tokenizer's (B, C, H, W) → (B, H·W, C) flatten is then a free view.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None or not any(isinstance(m, torch.nn.Conv2d) for m in tokenizer.modules()):
        return model
    tokenizer.to(memory_format=torch.channels_last)
    tokenizer.register_forward_pre_hook(
        lambda _, args: (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    )
    return model


def make_optimizer(cfg: DictConfig, on_gpu: bool):
    """The optimizer partial. fused=null means the fused kernel on a GPU (one launch per step, not
    one per parameter tensor) and torch's default elsewhere; true/false are taken as given."""
    require(cfg.optimizer.lr > 0, "lr", cfg.optimizer.lr, "must be > 0 (at 0 the run cannot learn)")
    fused = on_gpu and "fused" in cfg.optimizer and cfg.optimizer.fused is None
    return instantiate(cfg.optimizer, **({"fused": True} if fused else {}))


def make_trainer(cfg: DictConfig, callbacks: list, logger, root_dir: str | None = None) -> pl.Trainer:
    """Lightning's Trainer from the trainer node (hydra.utils.instantiate); attnexp fills what
    depends on the machine (auto accelerator, precision and progress bar) and its own parts.
    `root_dir`: the run's folder (None for the start-up check, which writes nothing). Checkpoints are
    written by the callbacks given (a run's and a pack's: attnexp.train.callbacks.Checkpoints), never
    by a default of Lightning's."""
    # the console keeps attnexp's own lines: no start-up banners (accelerator availability, tips), no
    # warnings that do not apply to our loaders
    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning's own deprecated call
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")  # epoch metrics are ours
    t = cfg.trainer
    gpu = on_gpu(cfg)
    progress = t.enable_progress_bar if t.enable_progress_bar is not None else sys.stderr.isatty()
    extra = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    return instantiate(
        t,
        accelerator="gpu" if gpu else "cpu",
        precision=trainer_precision(cfg),
        benchmark=gpu and not t.deterministic,  # cuDNN picks the fastest tokenizer-conv kernels once per shape
        enable_progress_bar=progress,
        callbacks=callbacks + extra,
        logger=logger,
        default_root_dir=root_dir,
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        plugins=[AtomicCheckpointIO()],
    )


def make_logger(cfg: DictConfig):
    """The logger group's choice (TensorBoard by default), writing into the run's folder."""
    return instantiate(cfg.logger) if cfg.get("logger") else False


def forward_gflops(cfg: DictConfig, model: nn.Module) -> float:
    """GFLOPs of one forward of one example (image or text), attention on its explicit path: the
    FLOP counter cannot see inside the CPU's fused attention kernels (mode=summary, the dry run)."""
    from torch.utils.flop_counter import FlopCounterMode

    from attnexp.layers.attention import Attention

    fused = [m for m in model.modules() if isinstance(m, Attention) and m.fused]
    for m in fused:
        m.fused = False
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example_input(cfg, model, 1))
    finally:
        for m in fused:
            m.fused = True
    return counter.get_total_flops() / 1e9


def example_input(cfg: DictConfig, model: nn.Module, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A batch of what the model reads: a model that reads something other than images makes
    its own (`example_input`: the text models' word ids, padding included); images otherwise."""
    if hasattr(model, "example_input"):
        return model.example_input(batch, device)
    size = model_data_spec(cfg).get("image_size") or cfg.data.image_size  # the side the model sees
    return torch.randn(batch, cfg.data.in_channels, size, size, device=device)
