"""One job: train, evaluate or summarise a composed config in its folder (`paths.output_dir`).

`train(cfg) -> metrics` (and `evaluate`, `summary`) are plain functions of the
config: Hydra's job calls `run_mode(cfg)`, tests call them directly with
`paths.output_dir=<folder>`. They raise `RunFailed` (with the status they
wrote) when the run did not finish.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from attnexp.build.objects import (
    best_and_last,
    build_data,
    build_model,
    build_module,
    example_input,
    load_weights,
    make_logger,
    make_trainer,
    on_gpu,
    read_checkpoint,
    seed_and_threads,
    weights_source,
)
from attnexp.train.callbacks import GracefulStop, RunRecorder, StopRequested
from attnexp.train.module import ClassifierModule, NonFiniteLoss
from attnexp.train.rundir import RunRecord, provenance


class RunFailed(Exception):
    """The job ended without finishing; `status` is what metrics.json now says."""

    def __init__(self, status: str, message: str, exit_code: int = 1):
        self.status, self.exit_code = status, exit_code
        super().__init__(message)


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def device_name(on_gpu: bool) -> str:
    if on_gpu:
        return torch.cuda.get_device_name(0)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def numerics(trainer: pl.Trainer) -> dict:
    """What decides the arithmetic of a run (recorded: recipes compare only like with like)."""
    return {
        "precision": str(trainer.precision),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def _hydra_job():
    """Hydra's config of the job this runs in; None when attnexp.train.modes.train is called directly."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _choices() -> dict:
    job = _hydra_job()
    return {k: v for k, v in job.runtime.choices.items() if not k.startswith("hydra")} if job else {}


def _task_overrides() -> list[str]:
    job = _hydra_job()
    return list(job.overrides.task) if job else []


def run_hparams(choices: dict, overrides: list[str], swept: list[str]) -> dict:
    """What tells this run apart, for TensorBoard's HParams table: first what its sweep varies,
    then the rest the command set (group choices and knobs, as typed), then the other group
    choices; no bookkeeping keys (data.root, threads, the seed...), no _target_ / _partial_."""
    from attnexp.config.compose import is_bookkeeping

    def column(key: str) -> str:
        return key if "." in key else f"choice/{key}"

    given = dict(o.lstrip("+~").partition("=")[::2] for o in overrides)
    hparams = {column(k): given[k] for k in swept if k in given and not is_bookkeeping(k)}
    for key, value in given.items():
        if not is_bookkeeping(key):
            hparams.setdefault(column(key), value)
    for group, choice in choices.items():
        if not is_bookkeeping(group):
            hparams.setdefault(f"choice/{group}", str(choice))
    return hparams


# ---------------------------------------------------------------- modes


def train(cfg: DictConfig, record: RunRecord | None = None) -> dict:
    """Fit, then score the best checkpoint on the test split; the metrics dict (metrics.json)."""
    from pytorch_lightning.callbacks import LearningRateMonitor

    run_dir = cfg.paths.output_dir
    record = record or RunRecord(run_dir)
    seed_and_threads(cfg)
    started = time.perf_counter()
    resumed = record.read() if cfg.ckpt_path else {}
    datamodule = build_data(cfg)
    model = build_model(cfg)
    params = trainable_parameters(model)
    gpu = on_gpu(cfg)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    module = build_module(cfg, model, run_config)
    choices = _choices()
    ckpt_dir = Path(run_dir) / "checkpoints"
    recorder = RunRecorder(record, history=resumed.get("history"))
    stopper = GracefulStop(str(ckpt_dir / "last.ckpt"))
    checkpoint, last = best_and_last(ckpt_dir)
    logger = make_logger(cfg)
    rates = [LearningRateMonitor(logging_interval="epoch")] if logger else []
    trainer = make_trainer(cfg, [recorder, stopper, checkpoint, last, *rates], logger, run_dir)

    record.update(
        status="running",
        run_dir=str(run_dir),
        params=params,
        choices=choices or resumed.get("choices", {}),
        device=device_name(gpu),
        threads=torch.get_num_threads(),  # on the CPU a result depends on it (README)
        recipe=cfg.recipe.name,
        numerics=numerics(trainer),
        weights=weights_source(cfg, model),  # what the run started from (null: random initialisation)
        **provenance(run_dir),
    )

    fit_history: list = []

    def finish(status: str, **fields) -> dict:
        wall = resumed.get("wall_time_s", 0.0) + time.perf_counter() - started
        history = list(fit_history or recorder.history)
        best = max((h["val_acc1"] for h in history), default=None)
        final = history[-1]["val_acc1"] if history else None
        if trainer.is_global_zero and best is not None and logger:
            logger.log_hyperparams(
                run_hparams(choices or resumed.get("choices", {}), _task_overrides(), list(cfg.sweep.swept))
                | {"params": params, "threads": torch.get_num_threads(), "precision": str(trainer.precision)},
                {"hp/best_acc1": best, "hp/final_acc1": final},
            )
            logger.finalize(status)
        return record.update(
            status=status,
            best_acc1=best,
            final_acc1=final,
            epochs=len(history) and history[-1]["epoch"],
            wall_time_s=round(wall, 2),
            **fields,
        )

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except NonFiniteLoss as e:
        finish("diverged", reason=str(e), diverged_step=e.step)
        kept = sorted(p.name for p in ckpt_dir.glob("*.ckpt"))
        where = (
            f"last good checkpoints kept: {', '.join(kept)} in {ckpt_dir}"
            if kept
            else "no checkpoint had been saved yet"
        )
        raise RunFailed("diverged", f"{e}: stopped; {where}") from None
    except StopRequested as e:
        resume = f"ckpt_path={ckpt_dir / 'last.ckpt'}"
        finish("interrupted", reason=f"signal {e.signum}", resume_with=resume)
        raise RunFailed(
            "interrupted", f"interrupted at step {trainer.global_step}; resume with {resume}", 128 + e.signum
        ) from None
    except KeyboardInterrupt:
        finish("interrupted", reason="interrupted twice: stopped without a new checkpoint")
        raise RunFailed("interrupted", "interrupted", exit_code=130) from None

    fit_history = list(recorder.history)  # testing the best checkpoint must not rewind it
    test_metrics = {}
    if checkpoint.best_model_path:
        results = trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint.best_model_path, verbose=False)
        if results:
            test_metrics = {"test_acc1_at_best_val": results[0].get("test/acc1")}
        test_metrics.update(time_inference(module.model, datamodule, module.device))
    metrics = finish("done", reason=None, resume_with=None, **test_metrics)
    if trainer.is_global_zero:
        print(f"best top-1: {metrics['best_acc1']:.2f}, final top-1: {metrics['final_acc1']:.2f}")
        print(f"run directory: {run_dir}\nTensorBoard:   tensorboard --logdir {run_dir}")
    return metrics


def time_inference(model: torch.nn.Module, datamodule, device: torch.device) -> dict:
    """ms per evaluation batch (seed 003's "average inference time"), on the device that trained."""
    from attnexp.train.timing import inference_ms

    images, _ = datamodule.test_dataloader().batch(0, 0)
    ms = inference_ms(model, images.to(device))
    return {"inference_ms_per_batch": round(ms, 3), "inference_batch_size": int(images.shape[0])}


def evaluate(cfg: DictConfig, record: RunRecord | None = None) -> dict:
    """Score ckpt_path on the test split, rebuilding the model from the checkpoint's own config."""
    record = record or RunRecord(cfg.paths.output_dir)
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
    return record.update(
        status="done", mode="eval", ckpt_path=cfg.ckpt_path, params=trainable_parameters(model), **metrics
    )


def summary(cfg: DictConfig, record: RunRecord | None = None) -> dict:
    """Parameters, GFLOPs per image and tokens, without data or training (summary.json)."""
    run_dir = cfg.paths.output_dir
    from torch.utils.flop_counter import FlopCounterMode

    from attnexp.layers.attention import Attention
    from attnexp.layers.block import TransformerBlock

    model = build_model(cfg).eval()
    for m in model.modules():  # the FLOP counter cannot see inside CPU fused attention kernels
        if isinstance(m, Attention) and m.reattn is None:
            m.fused = False
    x = example_input(cfg, model, 1)  # one image, or one text's word ids
    tokens = []  # the sequence length entering the first transformer block (class token included)
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    hook = blocks[0].register_forward_pre_hook(lambda m, args: tokens.append(args[0].shape[1])) if blocks else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    if hook is not None:
        hook.remove()
    info = {
        "model": _choices().get("model") or cfg.model.get("official_name"),
        "official_name": cfg.model.get("official_name"),
        "attention": _choices().get("attention"),
        "params": trainable_parameters(model),
        "gflops_per_image": counter.get_total_flops() / 1e9,
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
    """The job of `cfg.mode` in `paths.output_dir`. Every way it can end is recorded in metrics.json
    by one RunRecord: a failure as `failed` with its one-line reason (traceback in error.txt)."""
    from attnexp.build.objects import CheckpointError
    from attnexp.errors import StartupError

    run_dir = cfg.paths.output_dir
    os.makedirs(run_dir, exist_ok=True)
    record = RunRecord(run_dir)
    try:
        return MODES[cfg.mode](cfg, record)
    except RunFailed:
        raise
    except (CheckpointError, StartupError, ValueError) as e:
        message = str(e).splitlines()[0]
    except Exception as e:
        (Path(run_dir) / "error.txt").write_text(traceback.format_exc())
        message = f"{type(e).__name__}: {e}".splitlines()[0] + f" (traceback in {run_dir}/error.txt)"
    record.update(status="failed", reason=message)
    raise RunFailed("failed", message)
