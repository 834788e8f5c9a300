"""Nothing lost, nothing silently wrong: bad input, divergence, signals, atomic writes, exact resume."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ATTNEXP, attnexp_main, run_cli, run_dirs

# ---------------------------------------------------------------- bad input, refused at start-up
# (overrides, text the one-line message must contain). All fail before any folder exists: exit 2.
# data=fake is added unless a case picks its data, so each case meets its own error first.
CONFIG_ERRORS = [
    (["optimizer.lr=abc"], "optimizer.lr=abc: expected a number"),
    (["optimizer.lr=-1"], "optimizer.lr=-1.0"),
    (["optimizer.lr=0"], "optimizer.lr=0.0: must be > 0"),  # AdamW accepts 0: the run could not learn
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.batch_size=1.5"], "data.batch_size=1.5"),
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["model=nope"], "model=nope"),
    (["attention=nope"], "attention=nope"),
    (["data=imagenet"], "data=imagenet"),
    (["model.num_heads=3"], "model.num_heads=3"),
    (["model.dimm=3"], "model.dimm"),
    (["attention=remix"], "attention=remix: needs an α schedule"),
    (["attention=remix", "alpha=constant", "alpha.value=1.5"], "alpha=constant"),
    (["model=vitlite7", "seqpool=softmax"], "seqpool=softmax"),
    (["mode=fly"], "mode=fly"),
    (["mode=eval"], "ckpt_path"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path=/nonexistent/last.ckpt"),
    (["model.pretrained=/nonexistent/cct.pth"], "model.pretrained"),
    (["data.val_split=1.5"], "data.val_split=1.5"),
    (["model.positional_embedding=random"], "model.positional_embedding=random"),
    (["attention.impl=flash"], "attention.impl=flash"),
    (["trainer.precision=8"], "trainer.precision=8"),
    (["seqpool=shift", "alpha=step"], "alpha.points"),
    (["experiment=remix_finetune"], "model.pretrained"),
    (["model.dropout=1.5"], "model.dropout=1.5"),
    (["model=cvt7", "data.image_size=30"], "model.patch_size=4"),
    (["seed=abc"], "error: seed=abc: expected an integer"),
    (["trainer.deterministic=maybe"], "trainer.deterministic"),
    (["attention=shift", "alpha=linear", "alpha.unit=hour"], "alpha.unit=hour"),
    (["model=["], "model=["),
    # the preflight builds the job: what only a constructor or a forward can know
    (["model=vit", "attention=convnn"], "attention.K=9: must not exceed the 5 tokens"),
    (["model=hybrid_seed003", "attention=convnn"], "attention.K=9"),
    (["model=deepvit", "attention=convnn", "attention.K=3"], "model.reattention=true"),
    (["model=cct2", "model.kernel_size=0"], "model.kernel_size=0: must be ≥ 1"),
    (["model=cnn", "data.image_size=5"], "model.image_size=5: the conv stem needs at least 6 pixels"),
    (["attention.layers=[99]"], "attention.layers=[99]"),
    (["attention=remix", "alpha=linear", "alpha.ramp_begin=5", "alpha.ramp_end=2"], "alpha.ramp_end=2.0"),
    (["data.val_split=0.9999"], "data.val_split=0.9999: leaves 0"),
    (["attention=convnn", "attention.sampling=spatial", "attention.samples=65"], "attention.samples=65"),
    (["model=vit", "model.head_dim=0"], "model.head_dim=0"),
    (["scheduler.warmup_epochs=-1"], "scheduler.warmup_epochs=-1"),
    (["attention=softmax_v", "attention.scale=-1"], "attention.scale=-1"),
    (["data.loader=gpu"], "data.loader=gpu"),
    (["attention.value_map.nope=1"], "attention.value_map"),
]
DATA_ERRORS = [
    (["data=cifar10", "data.root=EMPTY"], "cifar-10-batches-py"),
    (["data=cifar100", "data.root=EMPTY"], "cifar-100-python"),
    (["data=mnist", "data.root=EMPTY"], "t10k-images-idx3-ubyte"),
    (["data=mnist", "data.root=CORRUPT"], "train-labels-idx1-ubyte: not an IDX file"),
    (["data=mnist", "data.root=TRUNCATED"], "t10k-images-idx3-ubyte: truncated"),
]


def assert_one_line_error(proc, needle: str, code: int) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("attnexp: error: "), last
    assert needle in last, (needle, last)
    assert "Traceback" not in proc.stderr


def write_idx(path: Path, dims: tuple[int, ...], body: bytes | None = None, magic: bytes = b"\x00\x00\x08") -> None:
    header = magic + bytes([len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + (bytes(int(np.prod(dims))) if body is None else body))


def mnist_folder(root: Path, broken: str | None = None, truncated: str | None = None) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(raw / f"{split}-images-idx3-ubyte", (n, 28, 28))
        write_idx(raw / f"{split}-labels-idx1-ubyte", (n,))
    if broken:
        write_idx(raw / broken, (20,), magic=b"\x00\x00\x0d")  # float IDX: not MNIST's
    if truncated:
        path = raw / truncated
        path.write_bytes(path.read_bytes()[:-100])


@pytest.fixture
def battery_dir(tmp_path, monkeypatch):
    """A working folder with an empty, a corrupt and a truncated dataset root."""
    (tmp_path / "EMPTY").mkdir()
    mnist_folder(tmp_path / "CORRUPT", broken="train-labels-idx1-ubyte")
    mnist_folder(tmp_path / "TRUNCATED", truncated="t10k-images-idx3-ubyte")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "overrides,needle", CONFIG_ERRORS + DATA_ERRORS, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(overrides, needle, battery_dir):
    data = [] if any(o.startswith("data=") for o in overrides) else ["data=fake"]
    proc = attnexp_main(*overrides, *data, cwd=battery_dir)
    assert_one_line_error(proc, needle, code=2)
    assert not (battery_dir / "outputs").exists() and not (battery_dir / "multirun").exists()


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["optimizer.lr=abc"], "optimizer.lr=abc: expected a number"),  # a type: torch-free
        (["model=vit", "attention=convnn", "data=fake"], "attention.K=9"),  # a value: the preflight
    ],  # a file's header ("not an IDX file") is in the in-process battery
)
def test_bad_input_through_the_real_console_script(overrides, needle, battery_dir):
    proc = run_cli(*overrides, cwd=battery_dir)
    assert_one_line_error(proc, needle, code=2)
    assert not (battery_dir / "outputs").exists()


def test_unknown_choice_lists_the_available_ones(battery_dir):
    proc = attnexp_main("model=cct3", cwd=battery_dir)
    assert_one_line_error(proc, "cct2", code=2)
    assert "cct7" in proc.stderr and "vitlite7" in proc.stderr


def test_bad_sweep_value_fails_before_any_job(battery_dir):
    proc = attnexp_main("-m", "debug=tiny", "optimizer.lr=1e-3,abc", cwd=battery_dir)
    assert_one_line_error(proc, "optimizer.lr=abc", code=2)
    assert not (battery_dir / "multirun").exists()


def test_a_bad_value_in_a_later_sweep_job_fails_before_the_first_starts(battery_dir):
    proc = attnexp_main("-m", "debug=tiny", "model=cct2", "model.kernel_size=3,0", cwd=battery_dir)
    assert_one_line_error(proc, "model.kernel_size=0", code=2)
    assert not (battery_dir / "multirun").exists()


# ---------------------------------------------------------------- bad checkpoints (found at run time)


def test_bad_checkpoints_each_give_one_line(workdir):
    garbage = workdir / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    other = workdir / "cct7.pth"
    import attnexp

    torch.save(attnexp.build_model(["model=cct7"]).state_dict(), other)
    cases = [
        (["debug=tiny", f"model.pretrained={garbage}"], "not a readable checkpoint"),
        (["debug=tiny", f"model.pretrained={other}"], "does not fit"),
        (["debug=tiny", "mode=eval", f"ckpt_path={garbage}"], "not a readable checkpoint"),
    ]
    for overrides, needle in cases:
        proc = attnexp_main(*overrides, cwd=workdir)
        err = proc.stderr
        assert proc.returncode == 1, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("attnexp: error: ") and needle in last, last
        assert "Traceback" not in err
    statuses = [json.loads((d / "metrics.json").read_text())["status"] for d in run_dirs(workdir / "outputs")]
    assert statuses == ["failed"] * 3


# ---------------------------------------------------------------- divergence


def test_non_finite_loss_stops_marks_diverged_and_keeps_the_good_checkpoint(workdir):
    run_dir = workdir / "run"
    poison = ["+callbacks.poison._target_=poison.PoisonAtStep", "+callbacks.poison.step=3"]  # epoch 2, batch 2
    env = {"PYTHONPATH": str(Path(__file__).parent)}
    proc = run_cli("debug=tiny", "trainer.max_epochs=3", *poison, f"hydra.run.dir={run_dir}", cwd=workdir, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("attnexp: error: non-finite loss at step 3: stopped; last good checkpoints kept")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["diverged_step"] == 3
    # epoch 1's checkpoint survives, finite, and loads
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


# ---------------------------------------------------------------- atomic writes


def test_a_kill_during_checkpoint_writing_keeps_the_previous_file(tmp_path, monkeypatch):
    from attnexp.assemble.objects import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # stands for the kill arriving mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    kept = torch.load(path, weights_only=False)
    assert kept["epoch"] == 1 and torch.equal(kept["state_dict"]["w"], torch.ones(3))


WRITER = """
import sys, torch
from attnexp.assemble.objects import AtomicCheckpointIO
io, big = AtomicCheckpointIO(), torch.randn(4_000_000)
for epoch in range(1, 10_000):
    io.save_checkpoint({"epoch": epoch, "w": big}, sys.argv[1])
    print(epoch, flush=True)
"""


def test_sigkill_while_writing_checkpoints_leaves_a_loadable_one(tmp_path):
    import sys

    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    for _ in range(3):  # let it finish a few files, then kill it in the middle of another
        proc.stdout.readline()
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(path, weights_only=False)["epoch"] >= 3


def test_metrics_json_is_replaced_atomically(tmp_path):
    from attnexp.train.rundir import RunRecord, read_metrics

    RunRecord(tmp_path).update(status="running", best_acc1=1.0)
    RunRecord(tmp_path).update(status="done")
    assert read_metrics(tmp_path) == {"status": "done", "best_acc1": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp files left


# ---------------------------------------------------------------- signals and exact resume

RUN = [
    "debug=tiny",
    "model=cct2",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "data.train_size=640",
    "data.batch_size=32",
    "trainer.deterministic=true",
]


def assert_resumed_run_matches(full_dir: Path, cut_dir: Path, steps: int) -> None:
    a = torch.load(full_dir / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == steps
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full_dir, cut_dir))
    assert mb["status"] == "done"
    assert [h["val_acc1"] for h in ma["history"]] == [h["val_acc1"] for h in mb["history"]]
    assert (ma["best_acc1"], ma["final_acc1"]) == (mb["best_acc1"], mb["final_acc1"])


def test_sigterm_at_a_known_step_then_resume_matches_the_uninterrupted_run(workdir):
    """SIGTERM during step 7 of 10 (mid-epoch 2, sent in-process by a test callback): the run finishes
    that step, saves it and stops; resumed, it ends bit-exact on the uninterrupted run (CPU)."""
    full_dir, cut_dir = workdir / "full", workdir / "cut"
    run = [*RUN, "data.train_size=160"]  # 5 steps an epoch
    assert attnexp_main(*run, f"hydra.run.dir={full_dir}", cwd=workdir).returncode == 0
    sigterm = ["+callbacks.sigterm._target_=poison.SigtermDuringStep", "+callbacks.sigterm.step=7"]
    cut = attnexp_main(*run, *sigterm, f"hydra.run.dir={cut_dir}", cwd=workdir)
    assert cut.returncode == 128 + signal.SIGTERM, cut.stderr[-2000:]
    assert "resume with ckpt_path=" in cut.stderr.strip().splitlines()[-1]
    assert json.loads((cut_dir / "metrics.json").read_text())["status"] == "interrupted"
    assert torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 7
    resumed = attnexp_main(f"ckpt_path={cut_dir / 'checkpoints' / 'last.ckpt'}", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_resumed_run_matches(full_dir, cut_dir, steps=10)
    assert not list(workdir.glob("outputs"))  # resumed in its own folder, no new run folder


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_matches_the_uninterrupted_run(workdir):
    """The console script, signalled from outside: bit-exact on CPU: same data order and augmentation (seeded per batch), dropout seeded per
    step, optimizer, scheduler and loader position restored from the mid-epoch checkpoint."""
    full_dir, cut_dir = workdir / "full", workdir / "cut"
    full = subprocess.Popen(
        [str(ATTNEXP), *RUN, f"hydra.run.dir={full_dir}"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cut = subprocess.Popen(
        [str(ATTNEXP), *RUN, f"hydra.run.dir={cut_dir}"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 180
    while not (cut_dir / "checkpoints" / "last.ckpt").exists():  # epoch 1 is done
        assert time.time() < deadline and cut.poll() is None
        time.sleep(0.05)
    time.sleep(0.6)  # well into epoch 2 (20 steps)
    cut.send_signal(signal.SIGTERM)
    _, err = cut.communicate(timeout=120)
    assert cut.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "resume with ckpt_path=" in err.strip().splitlines()[-1]
    interrupted = json.loads((cut_dir / "metrics.json").read_text())
    assert interrupted["status"] == "interrupted"
    step = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 20 < step < 40, step  # mid-epoch 2

    resumed = run_cli(f"ckpt_path={cut_dir / 'checkpoints' / 'last.ckpt'}", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full.communicate(timeout=180)
    assert full.returncode == 0
    assert_resumed_run_matches(full_dir, cut_dir, steps=40)
    assert not list(workdir.glob("outputs"))  # resumed in its own folder, no new run folder


def test_the_rate_follows_the_config_at_every_step_also_across_a_resume_that_changes_it(battery_dir, capsys):
    """lr = base · factor(epoch of this step, config): a resume that lengthens the run trains its first
    resumed epoch at the new schedule's rate, not at the rate the checkpoint ended with (0)."""
    from tbparse import SummaryReader

    from attnexp.cli import main
    from attnexp.schedules import warmup_cosine_factor

    run = battery_dir / "run"
    main(["debug=tiny", "trainer.max_epochs=2", "scheduler.warmup_epochs=1", f"hydra.run.dir={run}"])
    main([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=4"])
    assert "trainer.max_epochs 2 → 4" in capsys.readouterr().err
    scalars = SummaryReader(str(run / "tb")).scalars
    rates = scalars[scalars.tag == "lr-AdamW"]  # Lightning's LearningRateMonitor
    logged = dict(zip(rates.step, rates.value))
    steps_per_epoch = 2  # debug=tiny
    for step, rate in logged.items():
        epoch = step // steps_per_epoch
        total = 2 if epoch < 2 else 4  # the first run's schedule, then the resumed one's
        # the rate is a Python float the schedule computes; TensorBoard stores it as float32: one
        # rounding (≤ U32 = 6e-8 relative), whatever the CPU
        assert rate == pytest.approx(5e-4 * warmup_cosine_factor(epoch, 1, total), rel=1e-6), (step, rate)
    assert sorted(logged) == [0, 2, 4, 6]  # each epoch's first step: the rate all its steps train with
    assert logged[4] > 0  # epoch 2, first resumed: 5e-4 · ½(1 + cos(π/3)), not the finished run's 0
