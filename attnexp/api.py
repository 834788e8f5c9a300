"""Python entry points for notebooks and tools."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def compose_config(overrides: list[str] | None = None):
    """The config `attnexp <overrides>` would run with (types and cross-object rules checked;
    raises ConfigError). Values are checked by the constructors when the objects are built."""
    from attnexp.config.compose import compose, split_hydra
    from attnexp.config.rules import validate

    body, choices = split_hydra(compose(list(overrides or []), return_hydra_config=True))
    validate(body, choices)
    return body


def check(overrides: list[str] | None = None):
    """Everything the CLI checks before a job starts (compose_config, then every object the job
    will use, built on the meta device). Returns the config; raises StartupError."""
    from attnexp.config.compose import compose
    from attnexp.sweep.launch import check_job

    return check_job(compose(list(overrides or []), return_hydra_config=True))


def build_model(overrides: list[str] | None = None, compile: bool = False):
    """The backbone the CLI would train, e.g. build_model(["model=cct7", "data=cifar10"]).

    Touches no dataset file. `model.pretrained=PATH` loads weights strictly;
    compile=True (or compute.compile=true) returns a torch.compile'd module.
    """
    from attnexp.assemble.objects import build_model as _build
    from attnexp.assemble.objects import maybe_compile

    cfg = compose_config(overrides)
    return maybe_compile(_build(cfg), compile or cfg.compute.compile)


@dataclass
class Run:
    run_dir: Path
    config: Any  # DictConfig
    metrics: dict
    model: Any  # torch.nn.Module with the best (else last) checkpoint's weights, or None


def load_run(run_dir: str | Path, checkpoint: str = "best") -> Run:
    """A finished (or interrupted) run: its config, metrics.json and the model with its weights
    (a sweep's record of a reused run: the weights of the run it reused)."""
    from omegaconf import OmegaConf

    from attnexp.assemble.objects import build_model as _build
    from attnexp.assemble.objects import load_weights
    from attnexp.train.rundir import source

    run_dir = Path(run_dir)
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    trained = source(run_dir)  # a record of reuse: the run it reused holds the checkpoints
    ckpts = [trained / "checkpoints" / f"{name}.ckpt" for name in (checkpoint, "last")]
    ckpt = next((c for c in ckpts if c.is_file()), None)
    model = None
    if ckpt is not None:
        config.model.pretrained = None
        model = _build(config)
        load_weights(model, str(ckpt), key="checkpoint")
        model.eval()
    return Run(run_dir, config, metrics, model)
