"""sweep.pack: K seeds or α values of one configuration trained as one vectorised job.

Each member must be its unpacked run: per-epoch training loss, validation loss and top-1
equal within 1e-5 (relative) on the CPU, its folder where the unpacked sweep puts it, and
files every reader of runs accepts.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import attnexp_main, compose, copy_tree
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tolerance import U32, gamma, within

from attnexp.tools import report

# two short epochs of real digits, deterministic kernels: what the equality is checked on
RUN = [
    "model=cct2",
    "data=digits",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "scheduler.warmup_epochs=1",
]
TAGS = ("train/loss", "val/loss", "val/acc1")
# a two-block timm ViT (random weights), as seed 001's fine-tune builds it
TIMM_TINY = ["model=timm", "+model.kwargs={depth:2,patch_size:8,embed_dim:64,num_heads:2}", "model.image_size=32"]


def curves(run_dir: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: [e.value for e in sorted(events.Scalars(tag), key=lambda e: e.step)] for tag in TAGS}


def sweep(root: Path, name: str, *args: str) -> Path:
    out = root / name
    proc = attnexp_main("-m", *RUN, *args, f"hydra.sweep.dir={out}", cwd=root)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return out


def members(sweep_dir: Path) -> dict[str, Path]:
    return {str(p.parent.relative_to(sweep_dir)): p.parent for p in sweep_dir.rglob("metrics.json")}


# A pack and its unpacked runs are one training by different kernels (batched by vmap or not): every op
# may round differently in its last bit, and four AdamW steps carry that on. No closed form bounds how
# far, so the bound is measured on the machine the test runs on: seed 0 trained again unpacked from
# initial weights each one float32 ulp away, a last-bit difference in every weight. A member may differ
# from its run by PACK_DRIFT times that drift, relative to the value (never less than a float32
# rounding, U32): packing injects last-bit differences at each of the four steps where the nudge
# injects them once, and 16 covers those four with four times to spare.
PACK_DRIFT = 16


def assert_same_runs(unpacked: Path, packed: Path, k: int, drift: dict[str, float], diverged: int = 0) -> None:
    """Every unpacked run has its member, in the same folder, with the same curves."""
    runs, packs = members(unpacked), members(packed)
    assert set(runs) <= set(packs) and len(runs) == k and len(packs) == k + diverged  # the same folders
    for name, run in runs.items():
        mine, theirs = curves(packs[name]), curves(run)
        for tag in TAGS:
            assert len(mine[tag]) == len(theirs[tag]) == 2, (name, tag)
            bound = [PACK_DRIFT * max(drift[tag], U32) * abs(v) for v in theirs[tag]]
            within(mine[tag], theirs[tag], bound, tight=1e-5 * max(map(abs, theirs[tag])), what=f"{name} {tag}")
        metrics = json.loads((packs[name] / "metrics.json").read_text())
        assert metrics["status"] == "done" and len(metrics["packed_with"]) == k + diverged - 1
        alone = json.loads((run / "metrics.json").read_text())
        test_acc1 = alone["test_acc1_at_best_val"]
        within(metrics["test_acc1_at_best_val"], test_acc1, PACK_DRIFT * max(drift["val/acc1"], U32) * test_acc1)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack_seeds")
    return sweep(root, "unpacked", "seed=0,1,2"), sweep(root, "packed", "seed=0,1,2", "sweep.pack=seed"), root


@pytest.fixture(scope="module")
def drift(seeds) -> dict[str, float]:
    """Per tag, the largest relative change a one-ulp nudge of every initial weight makes to seed 0's
    unpacked curves on this machine (see PACK_DRIFT)."""
    from attnexp.train import modes

    unpacked, _, root = seeds
    build = modes.build_model

    def nudged(cfg):
        model = build(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modes, "build_model", nudged)
        nudge = sweep(root, "nudged", "seed=0")
    (twin,) = members(nudge).values()
    run = members(unpacked)[str(twin.relative_to(nudge))]  # seed 0's folder in the unpacked sweep
    a, b = curves(run), curves(twin)
    found = {tag: max(abs(x - y) / abs(x) for x, y in zip(a[tag], b[tag])) for tag in TAGS}
    print(f"drift of a one-ulp nudge (relative): {found}")
    return found


@pytest.mark.numeric
def test_packed_seeds_equal_their_unpacked_runs(seeds, drift):
    unpacked, packed, _ = seeds
    assert_same_runs(unpacked, packed, 3, drift)


@pytest.fixture(scope="module")
def alphas(tmp_path_factory):
    """Three α values of remix unpacked, and packed with a fourth, 1e38, whose first step overflows
    (with Adam: its learning-rate tag is Lightning's name for it, lr-Adam)."""
    root = tmp_path_factory.mktemp("pack_alphas")
    grid = ["attention=remix", "alpha=constant", "alpha.allow_extrapolation=true", "optimizer=adam"]
    unpacked = sweep(root, "unpacked", *grid, "alpha.value=0,0.5,1")
    return unpacked, sweep(root, "packed", *grid, "alpha.value=0,0.5,1,1e38", "sweep.pack=alpha"), grid


@pytest.mark.numeric
def test_packed_alpha_values_equal_their_unpacked_runs(alphas, drift):
    unpacked, packed, _ = alphas  # the pack also holds a member that diverged at its first step
    assert_same_runs(unpacked, packed, 3, drift, diverged=1)  # remix's runs drift as the seeds' do


def test_a_diverging_member_is_frozen_and_the_others_go_on(alphas):
    import attnexp

    _, packed, grid = alphas
    broken = next(d for n, d in members(packed).items() if "1e+38" in n)
    metrics = json.loads((broken / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["diverged_step"] == 0
    # frozen at its initial weights: its kept checkpoint is the model its seed builds
    state = torch.load(broken / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    torch.manual_seed(0)  # as its run seeds itself (seed 0) before building the model
    initial = attnexp.build_model([*RUN, *grid, "alpha.value=1e38"]).state_dict()
    assert all(torch.equal(state[f"model.{k}"], v) for k, v in initial.items())
    # the other members equal their unpacked runs: test_packed_alpha_values_equal_their_unpacked_runs


def tags(run_dir: Path) -> tuple[set[str], set[str]]:
    """(scalar tags, HParams plugin tags) of a run's event files."""
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return set(events.Tags()["scalars"]), set(events.PluginTagToContent("hparams"))


@pytest.mark.parametrize("fixture", ["seeds", "alphas"])
def test_a_member_records_and_logs_what_its_unpacked_run_does(fixture, request):
    """The same lifecycle: metrics.json's keys, TensorBoard's tags (the learning rate under the tag
    LearningRateMonitor gives the optimizer in use) and an HParams entry."""
    unpacked, packed = request.getfixturevalue(fixture)[:2]
    optimizer = "Adam" if fixture == "alphas" else "AdamW"
    runs, packs = members(unpacked), members(packed)
    assert runs
    for name, run in runs.items():
        alone, member = (json.loads((d / "metrics.json").read_text()) for d in (run, packs[name]))
        assert set(member) - {"packed_with"} == set(alone), name
        (scalars, hparams), (theirs, their_hparams) = tags(packs[name]), tags(run)
        assert scalars == theirs and f"lr-{optimizer}" in scalars and "test/acc1" in scalars, name
        assert hparams == their_hparams and "_hparams_/session_start_info" in hparams, name


@pytest.mark.numeric
def is_number(text: str) -> bool:
    try:
        return float(text) == float(text)  # not NaN
    except ValueError:
        return False


def test_a_packed_sweep_reports_as_the_unpacked_one(seeds, drift):
    unpacked, packed, root = seeds
    tables = []
    for name, folder in (("unpacked", unpacked), ("packed", packed)):
        assert report.main([str(folder), "--out", str(root / f"report_{name}")]) == 0
        with open(root / f"report_{name}" / "report.csv") as f:
            tables.append(list(csv.DictReader(f)))
    timing = {"wall_time_s", "s_per_epoch"}
    assert len(tables[0]) == len(tables[1]) > 0  # the same rows, and some
    # means and stds over the seeds of values each within PACK_DRIFT·drift of its run (relative): a mean
    # moves by at most the largest change, a sample std of 3 by √(3/2) times it
    rel = 1.23 * PACK_DRIFT * max(*drift.values(), U32)
    for mine, theirs in zip(*tables):
        for key in mine.keys() - timing:
            try:
                value, scale = float(theirs[key]), max(abs(float(v)) for k, v in theirs.items() if is_number(v))
            except ValueError:
                assert mine[key] == theirs[key], key
            else:
                within(float(mine[key]), value, rel * scale, tight=1e-5 * abs(value), what=key)


def test_a_member_checkpoint_is_an_ordinary_run(seeds):
    import attnexp

    _, packed, root = seeds
    run_dir = sorted(members(packed).values())[1]
    run = attnexp.load_run(run_dir)
    assert run.metrics["status"] == "done" and run.model is not None
    proc = attnexp_main("mode=eval", f"ckpt_path='{run_dir / 'checkpoints' / 'best.ckpt'}'", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"test top-1: {run.metrics['test_acc1_at_best_val']:.2f}" in proc.stdout


def test_sigterm_then_resume_continues_the_pack_bit_exact(seeds, tmp_path, monkeypatch):
    """SIGTERM after step 3 of 4 (mid-epoch 2): every member checkpointed, the sweep stops; resumed
    with sweep.resume=true, each member ends with the uninterrupted pack's weights and scores."""
    from attnexp.pack.run import PackRecorder

    _, reference, _ = seeds
    cut = tmp_path / "cut"
    command = ["-m", *RUN, "seed=0,1,2", "sweep.pack=seed", f"hydra.sweep.dir={cut}"]
    record_step = PackRecorder.on_train_batch_end

    def terminate_after_step_3(self, trainer, module, *args):
        record_step(self, trainer, module, *args)
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(PackRecorder, "on_train_batch_end", terminate_after_step_3)
    proc = attnexp_main(*command, cwd=tmp_path)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert {json.loads((d / "metrics.json").read_text())["status"] for d in members(cut).values()} == {"interrupted"}
    monkeypatch.undo()
    proc = attnexp_main(*command, "sweep.resume=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[resume] pack of 3" in proc.stdout
    for name, run_dir in members(reference).items():
        a, b = (torch.load(d / name / "checkpoints" / "last.ckpt", weights_only=False) for d in (reference, cut))
        assert a["global_step"] == b["global_step"] == 4
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), name
        ma, mb = (json.loads((d / name / "metrics.json").read_text()) for d in (reference, cut))
        assert mb["status"] == "done"
        assert [h["val_acc1"] for h in ma["history"]] == [h["val_acc1"] for h in mb["history"]]
        assert ma["test_acc1_at_best_val"] == mb["test_acc1_at_best_val"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["seed=0,1", "sweep.pack=seeds"], "sweep.pack=seeds: one of seed, alpha"),
        (["seed=0,1", "sweep.pack=seed", "callbacks=attention_stats"], "cannot report per member"),
        (["seed=0,1", "sweep.pack=seed", "trainer.devices=2"], "a pack trains on one device"),
        (["seed=0,1", "sweep.pack=seed", "attention=convnn", "attention.K=3"], "attention=convnn"),
        (["seed=0,1", "sweep.pack=seed", *TIMM_TINY, "model.backbone_lr_scale=0.1"], "lr_scale 0.1, 1"),
        # the seeds' paths not packed yet (docs/speed.md says what it would take)
        (["seed=0,1", "sweep.pack=seed", *TIMM_TINY, "model.drop_path_rate=0.1"], "(DropPath, p=0.1) draws outside"),
        (["seed=0,1", "sweep.pack=seed", "model=text_cct2", "data=text_demo"], "data=text_demo: its loader cannot"),
    ],
)
def test_what_cannot_be_packed_is_refused_at_start_up(tmp_path, args, needle):
    proc = attnexp_main("-m", *RUN, *args, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "s").exists()


def test_running_statistics_are_refused_and_one_rate_is_not():
    from torch import nn

    from attnexp.pack.run import model_refusal

    class Groups(nn.Sequential):  # a backbone's own param_groups, every group at the configured rate
        def param_groups(self):
            return [{"params": [self[0].weight]}, {"params": [self[0].bias], "lr_scale": 1.0}]

    assert "1 (BatchNorm1d) keeps running statistics" in model_refusal(
        nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    )
    assert model_refusal(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False))) is None
    assert model_refusal(Groups(nn.Linear(4, 4), nn.LayerNorm(4))) is None


def test_only_attnexps_own_dropout_draws_through_the_tape():
    from torch import nn

    from attnexp.layers.randomness import Dropout, untaped_randomness

    model = nn.Sequential(Dropout(0.1), nn.Dropout(0.0), nn.Dropout(0.2))
    assert untaped_randomness(model) == ["2 (Dropout, p=0.2)"]


def test_the_dry_run_shows_the_packs(tmp_path):
    proc = attnexp_main(
        "-m", *RUN, "seqpool=x,softmax", "seed=0,1", "sweep.pack=seed", "sweep.dry_run=true", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pack 0: jobs 0, 1 together" in proc.stdout and "pack 1: jobs 2, 3 together" in proc.stdout


@pytest.mark.numeric
def test_a_member_resumes_alone_as_its_unpacked_run_does(seeds, tmp_path):
    """A member's last.ckpt holds what an unpacked run's does (its AdamW slice, the loops, its best):
    one more epoch, alone and unpacked, from the packed member and from its unpacked run agree.
    (A resume extends a run in its folder: copies of the fixture's runs are extended.)"""
    from attnexp.schedules import warmup_cosine_factor

    unpacked, packed, _ = seeds
    name = sorted(members(packed))[2]
    starts, histories, ends = [], [], []
    for sweep_dir in (unpacked, packed):
        run_dir = copy_tree(sweep_dir / name, tmp_path / sweep_dir.name / name)
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        starts.append(torch.load(ckpt, weights_only=False))
        histories.append(json.loads((run_dir / "metrics.json").read_text())["history"])
        proc = attnexp_main(f"ckpt_path='{ckpt}'", "trainer.max_epochs=3", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ends.append((torch.load(ckpt, weights_only=False), json.loads((run_dir / "metrics.json").read_text())))
    (a, ma), (b, mb) = ends
    # exact: the loops, the optimizer's step counts and rate, the loader's position, the epochs kept
    assert a["global_step"] == b["global_step"] == 6 and mb["status"] == "done" and mb["epochs"] == 3
    assert a["loops"] == b["loops"]
    (sa, *_), (sb, *_) = (c["optimizer_states"] for c in (a, b))
    assert [st["step"].item() for st in sa["state"].values()] == [st["step"].item() for st in sb["state"].values()]
    assert sa["param_groups"][0]["lr"] == sb["param_groups"][0]["lr"]
    # The weights: packed and unpacked are different computations, so the two start this resume apart by
    # float noise, d₄ (measured). Both then take the resume's two AdamW steps unpacked; a bias-corrected
    # step moves a weight by at most lr·B_t (B_t = (1−β₁)/(1−β₁ᵗ)·√((1−β₂ᵗ)/(1−β₂))·√Σⱼ₍ⱼ<ₜ₎(β₁²/β₂)ʲ by
    # Cauchy–Schwarz on m and v; 1.011 and 1.016 at steps 5 and 6) in either direction, whatever the
    # gradient (a gradient at float noise is enough), and decay only shrinks a difference: so
    # |d₆| ≤ |d₄| + Σ 2·lr_t·B_t. The tight 1e-5 + 1e-4·|w| is what one machine's kernels gave.
    (b1, b2), lr = sa["param_groups"][0]["betas"], compose(*RUN).optimizer.lr
    rates = [lr * warmup_cosine_factor(2, 1, 3)] * 2  # the resumed epoch, its two steps
    steps = sum(
        2
        * rate
        * (1 - b1)
        / (1 - b1**t)
        * ((1 - b2**t) / (1 - b2)) ** 0.5
        * sum((b1 * b1 / b2) ** j for j in range(t)) ** 0.5
        for t, rate in zip((5, 6), rates)
    )
    for key, value in a["state_dict"].items():
        start = (starts[1]["state_dict"][key] - starts[0]["state_dict"][key]).abs()
        within(b["state_dict"][key], value, start + steps, tight=1e-5 + 1e-4 * value.abs().max().item(), what=key)
    # the epochs before the resume are each run's own, kept exactly
    assert [ma["history"][:2], mb["history"][:2]] == histories
    # the function computed after the resume: self-calibrated by the packing's own drift in the
    # validation loss at epochs 1-2 (the same members, measured here), with a floor of float32's error
    # in a mean of the 16 validation losses, γ₁₆·|L|; 8×: two more steps from states that far apart
    before = max(abs(x["val_loss"] - y["val_loss"]) for x, y in zip(ma["history"][:2], mb["history"][:2]))
    loss = ma["history"][2]["val_loss"]
    within(mb["history"][2]["val_loss"], loss, 8 * max(before, gamma(16) * abs(loss)), what="val_loss, epoch 3")
