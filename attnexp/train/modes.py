"""One job: train, evaluate or summarise a composed config in its folder (`paths.output_dir`).

`train(cfg) -> metrics` (and `evaluate`, `summary`) are plain functions of the
config: Hydra's job calls `run_mode(cfg)`, tests call them directly with
`paths.output_dir=<folder>`. They raise `RunFailed` (with the status they
wrote) when the run did not finish.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from attnexp.assemble.objects import (
    build_data,
    build_model,
    example_input,
    forward_gflops,
    load_weights,
    make_logger,
    make_trainer,
    read_checkpoint,
    seed_and_threads,
    trainable_parameters,
)
from attnexp.train.callbacks import Checkpoints, GracefulStop, RunRecorder, StopRequested
from attnexp.train.lifecycle import Lifecycle, RunFailed, failure_message, inference_timing
from attnexp.train.module import ClassifierModule, NonFiniteLoss, build_module
from attnexp.train.rundir import RunRecord


def hydra_job() -> DictConfig | None:
    """Hydra's config of the job this runs in; None when a mode is called directly (tests, tools)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


# ---------------------------------------------------------------- modes


def train(cfg: DictConfig) -> dict:
    """Fit, then score the best checkpoint on the test split; the metrics dict (metrics.json)."""
    from pytorch_lightning.callbacks import LearningRateMonitor

    run_dir = cfg.paths.output_dir
    seed_and_threads(cfg)
    datamodule = build_data(cfg)
    model = build_model(cfg)
    # enums as their strings: a resume's torch.load (weights_only) refuses any other class
    module = build_module(cfg, model, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    logger = make_logger(cfg)
    life = Lifecycle(cfg, logger, hydra_job(), resuming=bool(cfg.ckpt_path))
    ckpt_dir = Path(run_dir) / "checkpoints"
    checkpoints = Checkpoints([ckpt_dir], [life], resumable=ckpt_dir / "last.ckpt")
    rates = [LearningRateMonitor(logging_interval="epoch")] if logger else []
    callbacks = [RunRecorder(life), GracefulStop(checkpoints), checkpoints, *rates]
    trainer = make_trainer(cfg, callbacks, logger, run_dir)
    life.start(model, trainer)
    zero = trainer.is_global_zero
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except NonFiniteLoss as e:
        life.finish("diverged", zero, reason=str(e), diverged_step=e.step)
        kept = sorted(p.name for p in ckpt_dir.glob("*.ckpt"))
        where = f"last good checkpoints kept: {', '.join(kept)} in {ckpt_dir}" if kept else "no checkpoint yet"
        raise RunFailed("diverged", f"{e}: stopped; {where}") from None
    except StopRequested as e:
        resume = f"ckpt_path={ckpt_dir / 'last.ckpt'}"
        life.finish("interrupted", zero, reason=f"signal {e.signum}", resume_with=resume)
        raise RunFailed(
            "interrupted", f"interrupted at step {trainer.global_step}; resume with {resume}", 128 + e.signum
        ) from None
    except KeyboardInterrupt:
        life.finish("interrupted", zero, reason="interrupted twice: stopped without a new checkpoint")
        raise RunFailed("interrupted", "interrupted", exit_code=130) from None

    history, test_acc1, timing = life.history, None, {}
    best = ckpt_dir / "best.ckpt"
    if best.is_file():
        results = trainer.test(module, datamodule=datamodule, ckpt_path=str(best), verbose=False)
        life.history = history  # loading the best checkpoint restored its (shorter) history: keep the fit's
        test_acc1 = results[0].get("test/acc1") if results else None
        timing = inference_timing(cfg, lambda: module.model, datamodule, module.device)
    metrics = life.done(test_acc1, zero, **timing)
    if zero:
        print(f"best top-1: {metrics['best_acc1']:.2f}, final top-1: {metrics['final_acc1']:.2f}")
        print(f"run directory: {run_dir}" + (f"\nTensorBoard:   tensorboard --logdir {run_dir}" if logger else ""))
    return metrics


def evaluate(cfg: DictConfig) -> dict:
    """Score ckpt_path on the test split, rebuilding the model from the checkpoint's own config."""
    seed_and_threads(cfg)
    ckpt = read_checkpoint(cfg.ckpt_path, "ckpt_path")
    saved = ckpt.get("attnexp_config")
    model_cfg = OmegaConf.merge(cfg, {"model": saved["model"]}) if saved else cfg
    model_cfg.model.pretrained = None
    model = build_model(model_cfg)
    load_weights(model, cfg.ckpt_path, key="ckpt_path")
    module = ClassifierModule(model, optimizer=instantiate(cfg.optimizer))
    if ckpt.get("alpha") is not None:
        module.set_alpha(ckpt["alpha"])
    trainer = make_trainer(cfg, [], make_logger(cfg), cfg.paths.output_dir)
    results = trainer.test(module, datamodule=build_data(cfg), verbose=False)[0]
    metrics = {k.replace("/", "_"): float(v) for k, v in results.items()}
    print(f"test top-1: {metrics['test_acc1']:.2f}, top-5: {metrics['test_acc5']:.2f}")
    return RunRecord(cfg.paths.output_dir).update(
        status="done", mode="eval", ckpt_path=cfg.ckpt_path, params=trainable_parameters(model), **metrics
    )


def summary(cfg: DictConfig) -> dict:
    """Parameters, GFLOPs per image and tokens, without data or training (summary.json)."""
    run_dir = cfg.paths.output_dir
    from attnexp.layers.block import TransformerBlock

    job = hydra_job()
    choices = dict(job.runtime.choices) if job else {}
    model = build_model(cfg).eval()
    x = example_input(cfg, model, 1)  # one image, or one text's word ids
    tokens = []  # the sequence length entering the first transformer block (class token included)
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    hook = blocks[0].register_forward_pre_hook(lambda m, args: tokens.append(args[0].shape[1])) if blocks else None
    gflops = forward_gflops(cfg, model)
    if hook is not None:
        hook.remove()
    info = {
        "model": choices.get("model") or cfg.model.get("official_name"),
        "official_name": cfg.model.get("official_name"),
        "attention": choices.get("attention"),
        "params": trainable_parameters(model),
        "gflops_per_image": gflops,
        "tokens": tokens[0] if tokens else None,
        "image_size": x.shape[-1] if x.dim() == 4 else None,
    }
    print(
        f"{info['model']}: {info['params']:,} trainable parameters, "
        f"{info['gflops_per_image']:.3f} GFLOPs/img" + (f", {info['tokens']} tokens" if info["tokens"] else "")
    )
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "summary.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


MODES = {"train": train, "eval": evaluate, "summary": summary}


def run_mode(cfg: DictConfig) -> dict:
    """The job of `cfg.mode` in `paths.output_dir`. Every way it can end is recorded in metrics.json:
    a failure as `failed` with its one-line reason (traceback in error.txt)."""
    run_dir = cfg.paths.output_dir
    os.makedirs(run_dir, exist_ok=True)
    try:
        return MODES[cfg.mode](cfg)
    except RunFailed:
        raise
    except Exception as e:
        message = failure_message(e, run_dir)
    RunRecord(run_dir).update(status="failed", reason=message)
    raise RunFailed("failed", message)
