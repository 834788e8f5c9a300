"""Packed runs: K members of one configuration (seeds, or values of α) trained as one model.

The members' parameters are stacked (`torch.func.stack_module_state`) and one
`vmap(functional_call(...))` runs all K forwards and backwards at once; AdamW is
elementwise, so one optimizer over the stacked tensors is K independent ones.
Each member keeps what its unpacked run would have: its initialisation (built
with its own seed), its data order and augmentation (its own seeded loader),
its α, and its dropout / attention-dropout / stochastic-depth masks, drawn per
step from a generator seeded exactly as its unpacked run seeds torch's, in the
order recorded once from the model (attnexp.layers.randomness) — so on the CPU a
member's losses and accuracies equal its unpacked run's.

A member is an ordinary run: its own folder, metrics.json (with `packed_with`),
TensorBoard events and single-model best/last checkpoints. A member whose loss
turns non-finite is marked diverged and frozen (its slice of the weights and of
AdamW's state restored after every step) while the others go on.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from attnexp.assemble.objects import build_alpha, make_optimizer, on_gpu
from attnexp.data.loader import ResumableLoader
from attnexp.layers import randomness
from attnexp.layers.value_maps import scheduled_maps
from attnexp.train.module import TrainingModule, step_seed


def _safe(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot hold dots


@dataclass
class MemberState:
    """What the pack tracks for one member between epochs."""

    diverged_step: int | None = None
    best_state: dict | None = None  # its weights at the best validation top-1 (CPU copies)


class PackedModule(TrainingModule):
    def __init__(
        self,
        models: list[nn.Module],
        seeds: list[int],
        optimizer,
        scheduler=None,
        label_smoothing: float = 0.0,
        eval_label_smoothing: float = 0.0,
        alphas: list | None = None,
    ):
        alphas = alphas or [None] * len(seeds)
        super().__init__(len(models), optimizer, scheduler, label_smoothing, eval_label_smoothing, seeds, alphas)
        params, buffers = stack_module_state(models)
        self.names = {_safe(k): k for k in [*params, *buffers]}
        # an OrderedDict: ParameterDict sorts a plain dict's keys, and the optimizer's state must be in
        # named_parameters() order, as each member's unpacked run holds it
        self.stacked = nn.ParameterDict(OrderedDict((_safe(k), nn.Parameter(v)) for k, v in params.items()))
        for k, v in buffers.items():
            self.register_buffer(_safe(k), v, persistent=True)
        self.state_keys = list(models[0].state_dict())  # what a member's own checkpoint holds
        self._base = [copy.deepcopy(models[0]).to("meta")]  # a list: not a submodule (no meta parameters)
        self.alpha_keys = [k for k in buffers if k.rsplit(".", 1)[-1] == "alpha"] if scheduled_maps(models[0]) else []
        self.alpha_driven = bool(self.alpha_keys)
        self.members = [MemberState() for _ in models]
        self._plans: dict[tuple, list] = {}
        self._frozen: dict[int, dict] = {}  # member → its weights and AdamW state when it diverged
        # the members' folders (a resumed pack must be the same pack) and configs (in their checkpoints)
        self.member_dirs: list[str] = []
        self.run_configs: list[dict] = [{}] * self.size

    # ------------------------------------------------------------ the vectorised forward
    @property
    def base(self) -> nn.Module:
        return self._base[0]

    def tensors(self) -> tuple[dict, dict]:
        params = {self.names[k]: p for k, p in self.stacked.items()}
        buffers = {self.names[k]: b for k, b in self.named_buffers() if k in self.names}
        return params, buffers

    def member_tensors(self, k: int) -> dict:
        params, buffers = self.tensors()
        return {name: t[k] for name, t in {**params, **buffers}.items()}

    def plan(self, shape: tuple) -> list:
        """The (shape, keep) of every mask one training forward of this input shape draws, in order."""
        if shape not in self._plans:
            self.base.train()
            x = torch.zeros(shape, device=self.device)
            with torch.no_grad(), randomness.recording() as tape:
                functional_call(self.base, self.member_tensors(0), (x,))
            self._plans[shape] = tape.plan
        return self._plans[shape]

    def member_masks(self, shape: tuple, step: int) -> list[torch.Tensor]:
        """Each member's masks for this step, from its own generator seeded as its unpacked run seeds torch's."""
        plan = self.plan(shape)
        if not plan:
            return []
        like = torch.empty(0, device=self.device)
        gens = [torch.Generator(self.device).manual_seed(step_seed(seed, step)) for seed in self.seeds]
        drawn = [[randomness.fresh_mask(like, s, keep, g) for s, keep in plan] for g in gens]
        return [torch.stack([member[i] for member in drawn]) for i in range(len(plan))]

    def forward_members(self, x: torch.Tensor, shared: bool, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(K, B, classes) logits; x is (K, B, ...) per member, or (B, ...) shared by all (`shared`)."""
        masks = masks or []

        def one(params, buffers, x, masks):
            with randomness.replaying(list(masks)):
                return functional_call(self.base, (params, buffers), (x,))

        params, buffers = self.tensors()
        return vmap(one, in_dims=(0, 0, None if shared else 0, 0), randomness="error")(params, buffers, x, masks)

    # ------------------------------------------------------------ α and the learning rate
    def set_alphas(self, values: list[float]) -> None:
        self.alpha_values = values
        level = torch.tensor(values, device=self.device)
        _, buffers = self.tensors()
        for key in self.alpha_keys:
            buffers[key].copy_(level.to(buffers[key].dtype))

    def trained(self) -> nn.Module:
        return self.stacked

    # ------------------------------------------------------------ steps
    def member_logits(self, x: torch.Tensor, shared: bool, train: bool) -> torch.Tensor:
        """Training: each member's own dropout masks for this step (drawn as its unpacked run's)."""
        self.base.train(train)
        masks = self.member_masks(tuple(x.shape if shared else x.shape[1:]), self.global_step) if train else []
        return self.forward_members(x, shared, masks)

    def alive(self, losses: torch.Tensor | None = None) -> list[int]:
        """The members still training; one whose `losses` turned non-finite is frozen from now on."""
        if losses is not None:
            bad = (~torch.isfinite(losses.detach())).nonzero().flatten().tolist()  # a host sync per step
            for k in bad:
                if self.members[k].diverged_step is None:
                    self.members[k].diverged_step = self.global_step
                    self._frozen[k] = self._slice(k)
        return [k for k, m in enumerate(self.members) if m.diverged_step is None]

    def _slice(self, k: int) -> dict:
        optimizer = self.trainer.optimizers[0] if self.trainer is not None and self.trainer.optimizers else None
        saved = {}
        for name, p in self.stacked.items():
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            moments = {s: v[k].clone() for s, v in state.items() if torch.is_tensor(v) and v.dim() > 0}
            saved[name] = (p.detach()[k].clone(), moments)
        return saved

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Put every frozen member back: zero gradients still move it through AdamW's momentum and decay."""
        if not self._frozen:
            return
        optimizer = self.trainer.optimizers[0]
        with torch.no_grad():
            for k, saved in self._frozen.items():
                for name, (value, moments) in saved.items():
                    p = self.stacked[name]
                    p[k] = value
                    for s, v in moments.items():
                        optimizer.state[p][s][k] = v

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Each member clipped by its own gradient norm, as its unpacked run is (Lightning's rule:
        coefficient max_norm / (norm + 1e-6), at most 1)."""
        if not gradient_clip_val:
            return
        grads = [p.grad for p in self.stacked.values() if p.grad is not None]
        if gradient_clip_algorithm == "value":
            for g in grads:
                g.clamp_(-gradient_clip_val, gradient_clip_val)
            return
        norms = torch.stack([g.flatten(1).float().pow(2).sum(1) for g in grads]).sum(0).sqrt()  # (K,)
        coef = (gradient_clip_val / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))

    def epoch_metrics(self, stage: str) -> list[dict[str, float] | None]:
        return [values and {n: float(v) for n, v in values.items()} for values in self.epoch_values(stage)]

    # ------------------------------------------------------------ a pack's checkpoint (Ctrl-C / SIGTERM)
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What a resumed pack needs beyond weights, optimizer and loops: each member's
        best weights and divergence, the frozen slices, the α values, and who the members are."""
        checkpoint["pack"] = {
            "members": [vars(m) for m in self.members],
            "frozen": self._frozen,
            "alpha_values": self.alpha_values,
            "member_dirs": self.member_dirs,
        }
        self.last_dump = checkpoint  # what each member's own resumable checkpoint is cut from

    def member_checkpoint(self, k: int) -> dict:
        """Member k's own checkpoint (attnexp.train.callbacks.Checkpoints): its weights and config
        (mode=eval, load_run), and, while it trains, cut from the pack's latest checkpoint what its
        unpacked run's holds to resume alone: its slice of AdamW's state (the same parameters in the
        same order, one group) and the loops; a diverged member's frozen weights, nothing to resume."""
        checkpoint = {
            "state_dict": {f"model.{key}": value for key, value in self.member_state_dict(k).items()},
            "attnexp_config": self.run_configs[k],
            "alpha": self.alpha_values[k],
            "packed_with": [d for d in self.member_dirs if d != self.member_dirs[k]],
            "pytorch-lightning_version": pl.__version__,
        }
        dump, state = self.last_dump, self.members[k]
        if dump is None or state.diverged_step is not None:
            return checkpoint | {"epoch": self.current_epoch, "global_step": state.diverged_step}
        optimizer = dump["optimizer_states"][0]
        sliced = {
            i: {name: (v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v) for name, v in per_param.items()}
            for i, per_param in optimizer["state"].items()
        }
        resume = {
            key: v for key, v in dump.items() if key not in ("state_dict", "optimizer_states", "pack", "callbacks")
        }
        optimizer_states = [{"state": sliced, "param_groups": optimizer["param_groups"]}]
        return resume | checkpoint | {"optimizer_states": optimizer_states}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint["pack"]
        for member, state in zip(self.members, saved["members"]):
            for key, value in state.items():
                setattr(member, key, value)
        self._frozen = saved["frozen"]
        if self.alpha_keys and saved["alpha_values"][0] is not None:
            self.set_alphas(saved["alpha_values"])

    # ------------------------------------------------------------ members as ordinary models
    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        tensors = self.member_tensors(k)
        return {name: tensors[name].detach().cpu().clone() for name in self.state_keys}

    def load_member_states(self, states: list[dict]) -> None:
        with torch.no_grad():
            params, buffers = self.tensors()
            for name, stacked in {**params, **buffers}.items():
                if name in states[0]:
                    stacked.copy_(torch.stack([s[name] for s in states]).to(stacked.device))


def build_pack(cfgs: list[DictConfig], models: list[nn.Module]) -> PackedModule:
    """The members' models as one vectorised module, trained as each member's run would be (one
    optimizer over the stacked tensors is K independent AdamWs)."""
    base = cfgs[0]
    return PackedModule(
        models,
        seeds=[c.seed for c in cfgs],
        optimizer=make_optimizer(base, on_gpu(base)),
        scheduler=instantiate(base.scheduler) if base.get("scheduler") else None,
        label_smoothing=base.label_smoothing,
        eval_label_smoothing=base.label_smoothing if base.recipe.smooth_eval_loss else 0.0,
        alphas=[build_alpha(c) for c in cfgs],
    )


class PackedLoader(ResumableLoader):
    """K seeded TensorLoaders as one: each batch stacks the members' own batches (K, B, ...);
    members that share a seed share their batch (B, ...), fed to every member."""

    def __init__(self, loaders: list):
        super().__init__()
        self.loaders = loaders
        self.shared = len({lo.seed for lo in loaders}) == 1 or not loaders[0].shuffle

    def __len__(self) -> int:
        return len(self.loaders[0])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for lo in self.loaders:
            lo.epoch = epoch

    def batch(self, epoch: int, i: int):
        if self.shared:
            return self.loaders[0].batch(epoch, i)
        parts = [lo.batch(epoch, i) for lo in self.loaders]
        return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])

    def __iter__(self):
        # a generator: its body runs on the first next(), after Lightning has set the epoch
        epoch, batches = self.positions()
        for i in batches:
            yield self.batch(epoch, i)


class PackedData(pl.LightningDataModule):
    """One datamodule's data (loaded once), one seeded loader per member."""

    def __init__(self, datamodule, seeds: list[int]):
        super().__init__()
        self.datamodule, self.seeds = datamodule, seeds

    def setup(self, stage: str | None = None) -> None:
        self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)

    def _loaders(self, split: str, train: bool) -> PackedLoader:
        dm = self.datamodule
        return PackedLoader([dm.make_loader(getattr(dm, split), train=train, seed=s) for s in self.seeds])

    def train_dataloader(self):
        return self._loaders("train", True)

    def val_dataloader(self):
        return self._loaders("val", False)

    def test_dataloader(self):
        return self._loaders("test", False)
