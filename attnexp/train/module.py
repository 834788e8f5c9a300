"""The training module: TrainingModule trains K members with one step (a pack's: attnexp.pack.module);
ClassifierModule is one run's (K = 1): any backbone + cross-entropy, top-1/top-5, the optimizer and lr
schedule, and α."""

from __future__ import annotations

import sys
from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from attnexp.assemble.objects import build_alpha, channels_last_tokenizer, make_optimizer, maybe_compile, on_gpu
from attnexp.layers.value_maps import scheduled_maps
from attnexp.schedules import AlphaSchedule

SCHEDULE_KEYS = ("optimizer.lr", "trainer.max_epochs", "scheduler")  # what decides each epoch's rate


def _select(config: dict, key: str):
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _leaves(value, key: str) -> dict:
    if isinstance(value, dict):
        return {k: v for name, child in value.items() for k, v in _leaves(child, f"{key}.{name}").items()}
    return {key: value}


def schedule_changes(saved: dict, current: dict) -> str:
    """'key old → new, ...' for the schedule keys a resume changes ('' when none, or nothing saved)."""
    if not saved or not current:
        return ""
    old, new = (
        {k: v for key in SCHEDULE_KEYS for k, v in _leaves(_select(c, key), key).items()} for c in (saved, current)
    )
    return ", ".join(
        f"{key} {old.get(key)} → {new.get(key)}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    )


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, what: str = "loss"):
        self.step = step
        super().__init__(f"non-finite {what} at step {step}")


class EpochMetrics(nn.Module):
    """Mean loss, top-1 and top-5 (%) of one stage: torchmetrics means over samples, kept on the
    device and summed over DDP ranks (sample-weighted, so uneven last shards count right).
    Their states are not persistent: checkpoints keep the official keys."""

    def __init__(self):
        super().__init__()
        from torchmetrics import MeanMetric

        # nan_strategy="disable": no isnan check, so no host sync per step (non-finite losses are ours)
        self.means = nn.ModuleDict({name: MeanMetric(nan_strategy="disable") for name in ("loss", "acc1", "acc5")})
        self.seen = False

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        hits = logits.topk(min(5, logits.shape[-1]), dim=-1).indices == labels[:, None]
        self.means["loss"].update(loss.detach().float(), weight=labels.shape[0])
        self.means["acc1"].update(100.0 * hits[:, 0].float())
        self.means["acc5"].update(100.0 * hits.any(-1).float())
        self.seen = True

    def compute(self) -> dict[str, torch.Tensor]:
        """The epoch's values (synchronised across ranks), and a fresh start for the next epoch."""
        values = {name: mean.compute() for name, mean in self.means.items()}
        for mean in self.means.values():
            mean.reset()
        self.seen = False
        return values


class EpochRates:
    """The lr multiplier of every epoch as a pure function of the config: the scheduler it names,
    stepped from epoch 0 on a stand-in optimizer (any torch or attnexp scheduler works), cached.
    The module sets each step's rate from it, so a resumed run trains at the rate the config
    gives its epoch, never at a rate restored from the checkpoint."""

    def __init__(self, make_scheduler: Callable):
        self.stand_in = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        self.scheduler = make_scheduler(self.stand_in)
        self.factors = [self.stand_in.param_groups[0]["lr"]]

    def __call__(self, epoch: int) -> float:
        while len(self.factors) <= epoch:
            self.stand_in.step()  # no gradients: nothing moves; keeps torch's step order
            self.scheduler.step()
            self.factors.append(self.stand_in.param_groups[0]["lr"])
        return self.factors[epoch]


def param_groups(model: nn.Module) -> list[dict]:
    """The optimizer's parameter groups: one, or the backbone's own (a group's `lr_scale`
    multiplies the configured rate, e.g. a pretrained body slower than its new head)."""
    groups = getattr(model, "param_groups", None)
    return groups() if groups is not None else [{"params": list(model.parameters())}]


class TrainingModule(pl.LightningModule):
    """What trains K members, a run (K = 1: ClassifierModule) or a pack (attnexp.pack.module), with one
    step: the members' logits (`member_logits`), each member's loss (cross-entropy with its label
    smoothing) and epoch metrics, the non-finite watch (`alive`), the seed, loader position and α of
    each training step, the optimizer over `trained()` with its parameter groups and per-epoch rates.

    Metrics accumulate on the device and are read once per epoch: no host sync inside a training step
    (except the non-finite watch: ClassifierModule's `nonfinite_every`)."""

    def __init__(self, size, optimizer, scheduler, label_smoothing, eval_label_smoothing, seeds, alphas):
        super().__init__()
        self.size = size
        self.optimizer_factory = optimizer
        self.epoch_rates = EpochRates(scheduler) if scheduler is not None else None
        self.base_lrs: list[float] = []  # each param group's rate from the config
        self.label_smoothing = label_smoothing
        self.eval_label_smoothing = eval_label_smoothing  # the official script smooths its test loss too
        self.seeds = seeds
        self.alphas = alphas  # each member's α schedule (None: no α)
        self.alpha_values: list[float | None] = [None] * size
        # keys name the stage (nn.Module's own `train` is taken); each moves to the device with the model
        self.metrics = nn.ModuleList(
            nn.ModuleDict({f"{stage}_metrics": EpochMetrics() for stage in ("train", "val", "test")})
            for _ in range(size)
        )
        self.last_dump: dict | None = None  # the latest checkpoint saved (on_save_checkpoint)

    # ------------------------------------------------------------ the optimizer and its rates
    def configure_optimizers(self):
        # no Lightning scheduler: set_lr gives every step its rate (a checkpointed scheduler
        # would carry a stale rate into the first resumed epoch)
        optimizer = self.optimizer_factory(param_groups(self.trained()))
        self.base_lrs = [group["lr"] * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
        return optimizer

    def set_lr(self, epoch: int) -> None:
        """The rate of every step of `epoch`, from the config alone (constant within an epoch)."""
        factor = self.epoch_rates(epoch) if self.epoch_rates is not None else 1.0
        for group, base in zip(self.optimizers().param_groups, self.base_lrs):
            group["lr"] = base * factor

    # set before Lightning's LearningRateMonitor reads it at the epoch's start, so it logs the rate
    # the epoch trains with; on_train_start also covers a resume (mid-epoch included)
    def on_train_start(self) -> None:
        self.set_lr(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        self.set_lr(self.current_epoch + 1)

    # ------------------------------------------------------------ each training step's seed, position and α
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # dropout / drop-path draws become a function of (seed, step): a run resumed from any
        # step replays exactly what the uninterrupted run would have drawn (Lightning does not
        # checkpoint the global RNG); a pack's members draw from generators seeded alike.
        # Seeding is a host-side call, no device sync.
        torch.manual_seed(step_seed(self.seeds[0], self.global_step))
        # the loader's resume position counts this batch as consumed: any checkpoint written
        # after this step (callbacks' on_train_batch_end run before the module's) resumes after it
        loader = self.trainer.train_dataloader
        if hasattr(loader, "consumed"):
            loader.consumed = batch_idx + 1
        if self.alpha_driven and self.alphas[0] is not None:
            n = self.trainer.num_training_batches
            self.set_alphas([alpha(self.global_step, n) for alpha in self.alphas])

    # ------------------------------------------------------------ the step
    def losses(self, logits: torch.Tensor, labels: torch.Tensor, stage: str) -> torch.Tensor:
        """(K,) each member's mean cross-entropy over its batch: logits (K, B, C), labels (K, B)."""
        smoothing = self.label_smoothing if stage == "train" else self.eval_label_smoothing
        return torch.stack([F.cross_entropy(x.float(), y, label_smoothing=smoothing) for x, y in zip(logits, labels)])

    def shared_step(self, batch, stage: str) -> torch.Tensor:
        """The summed loss of the members still training, each member's metrics updated."""
        images, labels = batch
        logits = self.member_logits(images, shared=labels.dim() == 1, train=stage == "train")
        labels = labels.expand(self.size, -1) if labels.dim() == 1 else labels
        losses = self.losses(logits, labels, stage)
        alive = self.alive(losses) if stage == "train" else list(range(self.size))
        for k in alive:
            self.metrics[k][f"{stage}_metrics"].update(losses[k], logits[k], labels[k])
        return (losses if len(alive) == self.size else losses[alive]).sum()  # no index tensor: no host sync

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def epoch_values(self, stage: str) -> list[dict[str, torch.Tensor] | None]:
        """Each member's epoch means of `stage` (None where it saw no batch), and a fresh start."""
        return [m[f"{stage}_metrics"].compute() if m[f"{stage}_metrics"].seen else None for m in self.metrics]


class ClassifierModule(TrainingModule):
    """Any backbone + cross-entropy, top-1/top-5, the optimizer and lr schedule, and α: one run."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        label_smoothing: float = 0.0,
        eval_label_smoothing: float = 0.0,
        alpha: AlphaSchedule | None = None,
        run_config: dict | None = None,
        nonfinite_every: int = 1,
        seed: int = 0,
    ):
        super().__init__(1, optimizer, scheduler, label_smoothing, eval_label_smoothing, [seed], [alpha])
        self.model = model
        self.alpha_maps = scheduled_maps(model)
        self.alpha_driven = bool(self.alpha_maps)
        self.run_config = run_config or {}
        self.nonfinite_every = nonfinite_every  # 1 on CPU (free); larger on GPU to avoid a sync per step
        self._first_bad_step: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def trained(self) -> nn.Module:
        return self.model

    def member_logits(self, x: torch.Tensor, shared: bool, train: bool) -> torch.Tensor:
        return self(x)[None]  # Lightning sets train / eval mode

    # ------------------------------------------------------------ alpha
    @property
    def alpha_value(self) -> float | None:
        return self.alpha_values[0]

    def set_alpha(self, value: float) -> None:
        self.alpha_values = [value]
        for m in self.alpha_maps:
            m.set_alpha(value)

    def set_alphas(self, values: list[float]) -> None:
        self.set_alpha(values[0])
        self.log("alpha", self.alpha_value, on_step=True, on_epoch=False)

    # ------------------------------------------------------------ the non-finite watch and the epoch's values
    def alive(self, losses: torch.Tensor) -> list[int]:
        """A non-finite loss stops the run (NonFiniteLoss), checked every `nonfinite_every` steps."""
        step = torch.tensor(self.global_step, device=losses.device)
        bad = ~torch.isfinite(losses[0].detach())
        first = self._first_bad_step if self._first_bad_step is not None else torch.full_like(step, -1)
        self._first_bad_step = torch.where((first < 0) & bad, step, first)
        if (self.global_step + 1) % self.nonfinite_every == 0 and self._first_bad_step.item() >= 0:
            raise NonFiniteLoss(int(self._first_bad_step.item()))
        return [0]

    def _log_epoch(self, stage: str) -> None:
        for name, value in (self.epoch_values(stage)[0] or {}).items():
            self.log(f"{stage}/{name}", value)  # already summed over ranks by torchmetrics

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")
        super().on_train_epoch_end()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ------------------------------------------------------------ checkpoints carry the config and α
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # never replace a good checkpoint with diverged weights (a huge step can make the
        # weights inf one step before the loss shows it)
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise NonFiniteLoss(self.global_step, "weights")
        checkpoint["attnexp_config"] = self.run_config
        checkpoint["alpha"] = self.alpha_value
        self.last_dump = checkpoint

    def member_checkpoint(self, k: int) -> dict:
        """The run's own checkpoint, as last saved (attnexp.train.callbacks.Checkpoints)."""
        return self.last_dump

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("alpha") is not None:
            self.set_alpha(checkpoint["alpha"])
        changed = schedule_changes(checkpoint.get("attnexp_config") or {}, self.run_config)
        if changed:
            print(
                f"attnexp: resuming with a changed schedule ({changed}): the rate follows the new config from here",
                file=sys.stderr,
            )


def build_module(cfg: DictConfig, model: torch.nn.Module, run_config: dict | None = None) -> ClassifierModule:
    """The training module around a backbone, with the fast-path switches (shared with attnexp-bench)."""
    gpu = on_gpu(cfg)
    channels_last_tokenizer(model)  # on the CPU too: CCT-2's train step runs ~1.2× faster (docs/speed.md)
    return ClassifierModule(
        maybe_compile(model, cfg.compute.compile),
        optimizer=make_optimizer(cfg, gpu),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        label_smoothing=cfg.label_smoothing,
        eval_label_smoothing=cfg.label_smoothing if cfg.recipe.smooth_eval_loss else 0.0,
        alpha=build_alpha(cfg),
        run_config=run_config,
        nonfinite_every=cfg.trainer.log_every_n_steps if gpu else 1,
        seed=cfg.seed,
    )
