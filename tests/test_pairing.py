"""Two runs that differ only in the variant at one seed are a paired measurement (docs/sweeps.md): they
start from identical weights when the variant adds no parameters, and read identical batches (order
and augmentation draws) whatever the variant. Checked through a run's own start (attnexp.train.modes.
train: seeded, the datamodule built, then the model), stopped before training, for every choice in
conf/seqpool/ and conf/attention/ on a tiny CCT-2.

What each assertion catches:
- weights equal across choices: the model built before seeding, or after something whose random draws
  depend on the variant (a variant that adds parameters draws more: excluded by its parameter count);
- weights differ between seeds: the model not seeded from `seed` at all (then "equal" would prove nothing);
- batches equal across every choice, those adding parameters included: a loader (order or augmentation)
  drawing from the global RNG that building the model consumed, or seeded from anything but the run's
  seed, epoch and batch;
- batches differ between seeds and epochs: the data order not seeded from the run's seed / the epoch.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from attnexp.api import compose_config
from attnexp.errors import StartupError

REPO = Path(__file__).resolve().parent.parent
# a tiny CCT-2 on synthetic data, with the CIFAR augmentation (AutoAugment, crop, flip) so its draws are compared too
SMALL = ["debug=tiny", "model=cct2", "data.augment={autoaugment:cifar10,padding:4,flip:true}"]
BASELINE = {"seqpool": "x", "attention": "softmax"}  # the report's baselines: the official choices
EPOCHS, BATCHES = (0, 1), 2  # the first batches of the first two epochs


def choosing(choices: dict, seed: int) -> list[str]:
    """The tiny config's overrides with the baseline's choices, but `choices`, at `seed`."""
    return [*SMALL, *(f"{g}={c}" for g, c in {**BASELINE, **choices}.items()), f"seed={seed}"]


class Built(Exception):
    """Raised where the run hands its freshly built model to the training module: nothing trains."""


def run_start(overrides: list[str], folder: Path) -> dict:
    """What a run starts from: its model's initial state_dict and trainable parameter count, and its
    first training batches, read from the datamodule the run built, after it built the model."""
    from attnexp.train import modes

    seen = {}
    build_data = modes.build_data

    def record_data(cfg):
        seen["data"] = build_data(cfg)
        return seen["data"]

    def record_model(cfg, model, run_config=None):
        seen["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        raise Built

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Built):
        patch.setattr(modes, "build_data", record_data)
        patch.setattr(modes, "build_module", record_model)
        modes.train(compose_config([*overrides, f"paths.output_dir={folder}"]))
    data = seen["data"]
    data.setup("fit")
    loader = data.train_dataloader()
    batches = []
    for epoch in EPOCHS:
        loader.sampler.set_epoch(epoch)  # what Lightning calls at each epoch start
        batches += [(x.clone(), y.clone()) for x, y in itertools.islice(iter(loader), BATCHES)]
    return {"state": seen["state"], "params": seen["params"], "batches": batches}


def same_batches(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def different_weights(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


@pytest.fixture(scope="module")
def seed0(tmp_path_factory) -> dict:
    return run_start(choosing({}, seed=0), tmp_path_factory.mktemp("seed0"))


def test_the_seed_sets_weights_and_batches(seed0, tmp_path):
    """Else the equalities below would prove nothing."""
    seed1 = run_start(choosing({}, seed=1), tmp_path)
    assert different_weights(seed0["state"], seed1["state"]), "seed=1 starts from seed=0's weights"
    same = same_batches(seed0["batches"], seed1["batches"])
    assert not same, "seed=1 reads seed=0's batches"
    first, second = seed0["batches"][0], seed0["batches"][BATCHES]
    assert not torch.equal(first[0], second[0]), "epoch 1 starts with epoch 0's batch"


@pytest.mark.parametrize("group", ["seqpool", "attention"])
def test_runs_differing_only_in_the_variant_start_alike(group, seed0, tmp_path):
    """Every choice of the group at seed 0 against the baseline at seed 0."""
    base = seed0
    choices = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
    compared, adds_parameters, refused = [], [], {}
    for choice in choices:
        try:
            run = run_start(choosing({group: choice}, seed=0), tmp_path / choice)
        except StartupError as e:  # the project refuses this choice on this model
            refused[choice] = str(e)
            continue
        same = same_batches(run["batches"], base["batches"])  # (a bool: pytest would print every tensor)
        assert same, f"{group}={choice} reads other batches at seed 0 than {group}={BASELINE[group]}"
        if run["params"] != base["params"]:  # it adds (or drops) parameters: its draws differ, by design
            adds_parameters.append(f"{choice} ({run['params'] - base['params']:+,} parameters)")
            continue
        assert run["state"].keys() == base["state"].keys(), f"{group}={choice}: other state_dict keys"
        differ = [k for k in base["state"] if not torch.equal(run["state"][k], base["state"][k])]
        assert not differ, f"{group}={choice} starts from other weights than {group}={BASELINE[group]}: {differ[:5]}"
        compared.append(choice)
    assert BASELINE[group] in compared and len(compared) >= 2, (compared, adds_parameters, refused)
