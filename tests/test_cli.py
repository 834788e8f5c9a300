"""The runner end to end: help, summary, a real run's folder, eval, load_run, real MNIST."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import REFERENCE, TINY, attnexp_main, run_cli, run_dirs, run_in
from test_official_models import PRESETS

import attnexp


def test_help_lists_groups_and_choices_without_importing_torch():
    code = (
        "import sys, io, contextlib\n"
        "from attnexp.cli import main\n"
        "out = io.StringIO()\n"
        "try:\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code\n"
        "assert 'torch' not in sys.modules and 'pytorch_lightning' not in sys.modules\n"
        "print(out.getvalue())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for group, choice in [
        ("model", "cct7"),
        ("attention", "softmax_v"),
        ("seqpool", "softmax_plus_x"),
        ("alpha", "linear"),
        ("data", "digits"),
        ("experiment", "seqpool_lines"),
    ]:
        line = next(line for line in proc.stdout.splitlines() if line.startswith(f"{group}:"))
        assert choice in line


def test_config_errors_do_not_import_torch():
    code = (
        "import sys\n"
        "from attnexp.cli import main\n"
        "try:\n"
        "    main(['optimizer.lr=abc'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 2\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().endswith("optimizer.lr=abc: expected a number")


def test_summary_prints_the_parameter_count_of_every_preset(workdir):
    reference = json.loads(REFERENCE.read_text())["models"]
    proc = attnexp_main("-m", "mode=summary", f"model={','.join(PRESETS)}", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = dict(re.findall(r"^(\w+): ([\d,]+) trainable parameters", proc.stdout, re.M))
    assert {k: int(v.replace(",", "")) for k, v in printed.items()} == {
        k: reference[v]["params"] for k, v in PRESETS.items()
    }
    (path,) = [p for p in (workdir / "multirun").rglob("summary.json") if p.parent.parent.name.endswith("model=cct7")]
    summary = json.loads(path.read_text())
    assert summary["tokens"] == 256 and summary["gflops_per_image"] > 1


def test_a_run_leaves_config_events_checkpoints_and_metrics(workdir):
    proc = run_cli(*TINY, "trainer.max_epochs=2", "model=cct2", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = run_dirs(workdir / "outputs")
    assert re.fullmatch(r"\d\d-\d\d-\d\d_cct2_softmax_x", run_dir.name)  # <time>_<model>_<attention>_<seqpool>
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", run_dir.parent.name)
    # console: the official per-epoch line, the closing line, where the logs are
    assert re.search(r"^\[Epoch 2\] Top-1 [\d.]+ Time: [\d.]+s$", proc.stdout, re.M)
    assert re.search(r"^best top-1: [\d.]+, final top-1: [\d.]+$", proc.stdout, re.M)
    assert f"tensorboard --logdir {run_dir}" in proc.stdout
    log = (run_dir / "console.log").read_text().splitlines()  # the console is kept in the folder too
    assert proc.stdout.splitlines() and all(line in log for line in proc.stdout.splitlines())

    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    m = json.loads((run_dir / "metrics.json").read_text())
    assert (
        m["status"] == "done" and m["epochs"] == 2 and m["params"] == 283_723
    )  # cct_2_3x2_32 on 3-channel 32×32 images
    assert (
        m["best_acc1"] == max(h["val_acc1"] for h in m["history"]) and m["final_acc1"] == m["history"][-1]["val_acc1"]
    )
    assert m["command"].startswith("attnexp data=fake") and torch.__version__.startswith(m["versions"]["torch"])
    assert "git_commit" in m and "git_dirty" in m and m["device"].startswith("cpu")
    assert "inference_ms_per_batch" not in m  # timed only when a config asks (timing.inference: seed 003)

    from tbparse import SummaryReader

    scalars = SummaryReader(str(run_dir / "tb")).scalars
    tags = set(scalars.tag)
    assert {
        "train/loss",
        "train/acc1",
        "val/loss",
        "val/acc1",
        "val/acc5",
        "lr-AdamW",  # Lightning's LearningRateMonitor, at each epoch's first step
        "time/epoch_s",
        "hp/best_acc1",
        "hp/final_acc1",
    } <= tags
    val = scalars[scalars.tag == "val/acc1"]["value"].tolist()
    assert val == pytest.approx([h["val_acc1"] for h in m["history"]])
    hp = scalars[scalars.tag == "hp/best_acc1"]["value"].tolist()
    assert hp == pytest.approx([m["best_acc1"]])

    # the checkpoint carries its config: eval (its data too: data=fake is not repeated) and
    # load_run rebuild the model from it alone
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    ev = attnexp_main("mode=eval", f"ckpt_path={ckpt}", cwd=workdir)
    assert ev.returncode == 0, ev.stderr[-2000:]
    eval_dir = [d for d in run_dirs(workdir / "outputs") if d != run_dir][0]
    evm = json.loads((eval_dir / "metrics.json").read_text())
    assert evm["test_acc1"] == pytest.approx(m["best_acc1"])  # fake data: val is the test split
    run = attnexp.load_run(run_dir)
    assert run.metrics["status"] == "done" and run.config.model.dim == 128
    x = torch.randn(2, 3, 32, 32)
    assert run.model(x).shape == (2, 10)


def test_a_second_run_in_the_same_second_gets_its_own_folder(workdir):
    from attnexp.train.rundir import claim_dir

    first = claim_dir(str(workdir / "03-04-05_cct2_softmax_x"))
    second = claim_dir(str(workdir / "03-04-05_cct2_softmax_x"))
    assert first.endswith("03-04-05_cct2_softmax_x") and second == first + "_1"


def test_val_split_holds_out_part_of_train_and_reports_test_at_best_val(tmp_path):
    from attnexp.data.datamodule import ImageDataModule

    dm = ImageDataModule("fake", train_size=200, test_size=50, val_split=0.25)
    dm.setup()
    assert (len(dm.train), len(dm.val), len(dm.test)) == (150, 50, 50)
    assert not torch.equal(dm.val.images, dm.test.images)
    # a run whose best validation epoch is not its last: the test score is best.ckpt's, not last.ckpt's
    run = [*TINY, "data.val_split=0.25", "trainer.max_epochs=3", "optimizer.lr=1e-2", "scheduler.warmup_epochs=0"]
    metrics = run_in(tmp_path / "run", *run)
    val = [h["val_acc1"] for h in metrics["history"]]
    assert metrics["status"] == "done" and max(val) > val[-1], val  # best ≠ last
    ckpts = tmp_path / "run" / "checkpoints"
    best, last = (
        run_in(tmp_path / n, *run, "mode=eval", f"ckpt_path={ckpts / n}.ckpt")["test_acc1"] for n in ("best", "last")
    )
    assert metrics["test_acc1_at_best_val"] == pytest.approx(best) and best != pytest.approx(last), (best, last)


def test_cct_learns_real_mnist(mnist_root, tmp_path):
    """150 steps of 32 real training digits, no warmup: far above chance (10 %) on 2,000 held-out
    digits (81 % when written; the official recipe's 5 warmup epochs need ~3 epochs for 73 %)."""
    metrics = run_in(
        tmp_path,
        "data=mnist",
        f"data.root={mnist_root}",
        "model=cct2",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "scheduler.warmup_epochs=0",
        "optimizer.lr=1e-3",
        "data.batch_size=32",
        "trainer.limit_train_batches=150",
        "label_smoothing=0",
    )
    assert metrics["status"] == "done"
    assert metrics["best_acc1"] > 70, metrics["best_acc1"]


@pytest.mark.slow
def test_demo_reaches_90_percent_on_digits(workdir):
    """What `make demo` runs (about a minute on 2 cores)."""
    proc = run_cli("experiment=demo", "trainer.enable_progress_bar=false", cwd=workdir, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = float(re.search(r"^best top-1: ([\d.]+)", proc.stdout, re.M).group(1))
    assert best >= 90
