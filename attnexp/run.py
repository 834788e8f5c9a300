"""One job: train, evaluate or summarise a composed config in its folder (`paths.output_dir`).

`train(cfg) -> metrics` (and `evaluate`, `summary`) are plain functions of the
config: Hydra's job calls `run_mode(cfg)`, tests call them directly with
`paths.output_dir=<folder>`. They raise `RunFailed` (with the status they
wrote) when the run did not finish.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from attnexp.build import build_alpha, build_data, build_model, load_weights, read_checkpoint, weights_source
from attnexp.callbacks import AtomicCheckpointIO, GracefulStop, RunRecorder, StopRequested
from attnexp.module import ClassifierModule, NonFiniteLoss
from attnexp.rundir import RunRecord, provenance


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


def _on_gpu(cfg: DictConfig) -> bool:
    return torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")


def seed_and_threads(cfg: DictConfig) -> None:
    if cfg.compute.num_threads:
        torch.set_num_threads(cfg.compute.num_threads)
    if _on_gpu(cfg):
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
    if on_gpu and "fused" in cfg.optimizer and cfg.optimizer.fused is None:
        return instantiate(cfg.optimizer, fused=True)
    return instantiate(cfg.optimizer)


def quiet_lightning() -> None:
    """Keep the console to attnexp's own lines: Lightning's start-up banners (accelerator
    availability, advertising tips) and two warnings that do not apply to our loaders."""
    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning's own deprecated call
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")  # epoch metrics are ours


def make_trainer(
    cfg: DictConfig, callbacks: list, logger, root_dir: str | None = None, checkpointing: bool = True
) -> pl.Trainer:
    """Lightning's Trainer from the trainer node (hydra.utils.instantiate); attnexp fills what
    depends on the machine (auto accelerator, precision and progress bar) and its own parts.
    `root_dir`: the run's folder (None for the start-up check, which writes nothing)."""
    quiet_lightning()
    t = cfg.trainer
    on_gpu = _on_gpu(cfg)
    progress = t.enable_progress_bar if t.enable_progress_bar is not None else sys.stderr.isatty()
    extra = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    return instantiate(
        t,
        accelerator="gpu" if on_gpu else "cpu",
        precision=t.precision if t.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true"),
        benchmark=on_gpu and not t.deterministic,  # cuDNN picks the fastest tokenizer-conv kernels once per shape
        enable_progress_bar=progress,
        callbacks=callbacks + extra,
        logger=logger,
        default_root_dir=root_dir,
        enable_checkpointing=checkpointing,  # a pack writes its members' checkpoints itself
        plugins=[AtomicCheckpointIO()],
    )


def numerics(trainer: pl.Trainer) -> dict:
    """What decides the arithmetic of a run (recorded: recipes compare only like with like)."""
    return {
        "precision": str(trainer.precision),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def make_logger(cfg: DictConfig):
    """The logger group's choice (TensorBoard by default), writing into the run's folder."""
    return instantiate(cfg.logger) if cfg.get("logger") else False


def _hydra_job():
    """Hydra's config of the job this runs in; None when attnexp.run.train is called directly."""
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


def build_module(cfg: DictConfig, model: torch.nn.Module, run_config: dict | None = None) -> ClassifierModule:
    """The training module around a backbone, with the fast-path switches (shared with attnexp-bench)."""
    on_gpu = _on_gpu(cfg)
    channels_last_tokenizer(model)  # on the CPU too: CCT-2's train step runs ~1.2× faster (docs/speed.md)
    return ClassifierModule(
        maybe_compile(model, cfg.compute.compile),
        optimizer=make_optimizer(cfg, on_gpu),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        label_smoothing=cfg.label_smoothing,
        eval_label_smoothing=cfg.label_smoothing if cfg.recipe.smooth_eval_loss else 0.0,
        alpha=build_alpha(cfg),
        run_config=run_config,
        nonfinite_every=cfg.trainer.log_every_n_steps if on_gpu else 1,
        seed=cfg.seed,
    )


def best_and_last(ckpt_dir) -> tuple:
    """The run's best.ckpt (by validation top-1) and last.ckpt (every epoch). Two callbacks: Lightning's
    save_last only rewrites last.ckpt when the best improved, so a resume would repeat epochs.
    (A packed member's checkpoints are written to match.)"""
    from pytorch_lightning.callbacks import ModelCheckpoint

    best = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val/acc1", mode="max", auto_insert_metric_name=False
    )
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", enable_version_counter=False)
    return best, last


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
    on_gpu = _on_gpu(cfg)
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
        device=device_name(on_gpu),
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
    from attnexp.timing import inference_ms

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
    from attnexp.preflight import example_input

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
    from attnexp.build import CheckpointError
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
