"""attnexp-report on run folders written here with known numbers (no training, no torch).

Each fake run holds what a real one leaves: .hydra/{config,overrides,hydra}.yaml,
metrics.json and TensorBoard event files (written with tensorboard's own writer).
Expected statistics are computed in the test from the numbers it wrote.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from scipy.stats import t as student_t
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from attnexp.tools import report

# val/acc1 per epoch for each seed: group x is the baseline, softmax clearly better, shift overlaps it
CURVES = {
    "x": {0: [60.0, 70.0, 69.0], 1: [61.0, 72.0, 71.5], 2: [59.0, 71.0, 70.0]},
    "softmax": {0: [70.0, 80.0, 79.0], 1: [71.0, 81.0, 80.5], 2: [72.0, 82.5, 82.0]},
    "shift": {0: [58.0, 73.0, 72.0], 1: [60.0, 68.0, 67.0], 2: [61.0, 71.0, 70.0]},
}
LOSS = [2.0, 1.5, 1.2]


def write_events(tb: Path, scalars: list[tuple[str, int, float]], wall: float = 1000.0) -> None:
    """(tag, step, value) rows as one event file; wall_time rises with each row."""
    tb.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(tb), filename_suffix=f".{wall}")
    for i, (tag, step, value) in enumerate(scalars):
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        writer.add_event(Event(wall_time=wall + i, step=step, summary=summary))
    writer.close()


def lightning_rows(accs: list[float], losses: list[float], steps_per_epoch: int = 10) -> list[tuple[str, int, float]]:
    """What Lightning logs per epoch: the 0-based `epoch` with every write, train/loss and val/acc1."""
    rows = []
    for e, (acc, loss) in enumerate(zip(accs, losses)):
        step = (e + 1) * steps_per_epoch - 1
        rows += [("epoch", step, float(e)), ("train/loss", step, loss), ("val/acc1", step, acc)]
    return rows


def make_run(
    root: Path,
    overrides: list[str],
    seed: int,
    accs: list[float] | None,
    status: str = "done",
    choices: dict | None = None,
    metrics: dict | None = None,
    config: dict | None = None,
) -> Path:
    key = ",".join(sorted(overrides)) or "default"
    run = root / key / f"seed_{seed}"
    (run / ".hydra").mkdir(parents=True)
    body = {"mode": "train", "seed": seed, "alpha": {"value": None}} | (config or {})
    for o in overrides:
        k, v = o.split("=", 1)
        if "." in k:
            head, tail = k.split(".", 1)
            body.setdefault(head, {})[tail] = yaml.safe_load(v)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(body))
    (run / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(overrides + [f"seed={seed}", "trainer.enable_progress_bar=false"])
    )
    all_choices = {"model": "cct2", "data": "fake", "seqpool": "x"} | (choices or {})
    all_choices |= {k: v for k, v in (o.split("=", 1) for o in overrides) if "." not in k}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": all_choices}}}))
    if accs is not None:
        write_events(run / "tb", lightning_rows(accs, LOSS[: len(accs)]))
    m = {"status": status, "epochs": len(accs or []), "wall_time_s": 3.0 * len(accs or []), "params": 283_723}
    (run / "metrics.json").write_text(json.dumps(m | (metrics or {})))
    return run


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for seqpool, seeds in CURVES.items():
        for seed, accs in seeds.items():
            make_run(root, ["data=fake", f"seqpool={seqpool}"], seed, accs)
    return root


def read_csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {row["group"]: row for row in csv.DictReader(f)}


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Welch's interval for mean(a) − mean(b), written out: Satterthwaite df, Student t quantile."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = student_t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = statistics.mean(a) - statistics.mean(b)
    return diff, diff - half, diff + half


def test_table_statistics_and_welch_interval(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.main([str(sweep), "--baseline", "seqpool=x", "--out", str(out)]) == 0
    rows = read_csv(out / "report.csv")
    assert set(rows) == {"seqpool=x", "seqpool=softmax", "seqpool=shift"}
    base_best = [max(c) for c in CURVES["x"].values()]
    for seqpool, seeds in CURVES.items():
        row = rows[f"seqpool={seqpool}"]
        best, final = [max(c) for c in seeds.values()], [c[-1] for c in seeds.values()]
        assert int(row["n"]) == 3 and row["epochs"] == "3" and row["params"] == "283,723"
        assert float(row["best_mean"]) == pytest.approx(statistics.mean(best))
        assert float(row["best_std"]) == pytest.approx(statistics.stdev(best))
        assert (float(row["best_min"]), float(row["best_max"])) == (min(best), max(best))
        assert float(row["final_mean"]) == pytest.approx(statistics.mean(final))
        assert float(row["final_std"]) == pytest.approx(statistics.stdev(final))
        assert float(row["s_per_epoch"]) == pytest.approx(3.0)
        if seqpool != "x":
            diff, low, high = welch(best, base_best)
            assert float(row["d_best"]) == pytest.approx(diff)
            assert float(row["d_best_low"]) == pytest.approx(low, rel=1e-6)
            assert float(row["d_best_high"]) == pytest.approx(high, rel=1e-6)
    assert rows["seqpool=x"]["verdict_best"] == "baseline"
    assert rows["seqpool=softmax"]["verdict_best"] == "better"  # ~10 points apart, stds ~1
    assert rows["seqpool=shift"]["verdict_best"] == "can't tell"  # means 71.0 vs 71.3, stds ~2
    text = (out / "report.md").read_text()
    assert "Welch" in text and "95" in text
    assert text.index("| seqpool=x |") < text.index("| seqpool=softmax |")  # the baseline row leads
    assert capsys.readouterr().out.startswith("# attnexp report")
    png = out / "curves.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_worse_verdict_and_loss_metric_direction(tmp_path):
    root = tmp_path / "s"
    for seed, (a, b) in enumerate([(80.0, 70.0), (81.0, 71.0), (82.5, 70.5)]):
        make_run(root, ["seqpool=x"], seed, [a])
        make_run(root, ["seqpool=softmax"], seed, [b])
    assert report.main([str(root), "--baseline", "seqpool=x", "--out", str(tmp_path / "o")]) == 0
    assert read_csv(tmp_path / "o" / "report.csv")["seqpool=softmax"]["verdict_best"] == "worse"
    # a loss goes down: the lower group is the better one, and "best" is its minimum
    assert (
        report.main([str(root), "--baseline", "seqpool=x", "--metric", "train/loss", "--out", str(tmp_path / "l")]) == 0
    )
    row = read_csv(tmp_path / "l" / "report.csv")["seqpool=x"]
    assert float(row["best_mean"]) == pytest.approx(LOSS[0])


def test_partial_sweep_lists_unfinished_jobs(sweep, tmp_path):
    make_run(
        sweep,
        ["data=fake", "seqpool=x"],
        7,
        [50.0],
        status="failed",
        metrics={"reason": "CheckpointError: model.pretrained=bad.pth: not a checkpoint"},
    )
    make_run(sweep, ["data=fake", "seqpool=softmax"], 8, [55.0, 60.0], status="running")
    make_run(
        sweep,
        ["data=fake", "seqpool=softmax"],
        9,
        [1e9],
        status="diverged",
        metrics={"reason": "non-finite loss at step 12"},
    )
    started = make_run(sweep, ["data=fake", "seqpool=shift"], 5, None, status="running")
    (started / "metrics.json").unlink()  # started, killed before it wrote anything
    planned = [
        {"overrides": ["data=fake", "seqpool=x", f"seed={s}"], "dir": f"data=fake,seqpool=x/seed_{s}"} for s in (0, 11)
    ]
    (sweep / "sweep.json").write_text(json.dumps({"command": "attnexp -m ...", "jobs": planned}))

    out = tmp_path / "out"
    assert report.main([str(sweep), "--baseline", "seqpool=x", "--out", str(out)]) == 0
    rows = read_csv(out / "report.csv")
    assert [int(rows[g]["n"]) for g in ("seqpool=x", "seqpool=softmax", "seqpool=shift")] == [3, 3, 3]
    text = (out / "report.md").read_text()
    section = text[text.index("## Not in the statistics (5 jobs)") :]
    for job, status, reason in [
        ("seqpool=x/seed_7", "failed", "CheckpointError: model.pretrained=bad.pth"),
        ("seqpool=softmax/seed_8", "running", ""),
        ("seqpool=softmax/seed_9", "diverged", "non-finite loss at step 12"),
        ("seqpool=shift/seed_5", "started", ""),
        ("seqpool=x/seed_11", "not started", "never started"),
    ]:
        line = next(line for line in section.splitlines() if job in line)
        assert f"| {status} |" in line and reason in line


SEED000_SETTING = {"model": "cct2", "data": "cifar10", "optimizer": "adamw", "scheduler": "warmup_cosine"}


def test_anchors_column_from_the_shipped_seed000_file(tmp_path):
    root = tmp_path / "sweep"
    for seqpool, seeds in CURVES.items():
        for seed, accs in seeds.items():
            make_run(root, [f"seqpool={seqpool}"], seed, accs, choices=SEED000_SETTING,
                     config={"trainer": {"max_epochs": 200}})  # fmt: skip
    out = tmp_path / "out"
    assert report.main([str(root), "--baseline", "seqpool=x", "--anchors", "seed000", "--out", str(out)]) == 0
    rows = read_csv(out / "report.csv")
    assert rows["seqpool=x"]["published"] == "88.34 / 88.34 (seed 000); 89.17 (official README)"
    assert rows["seqpool=softmax"]["published"] == "87.10 / 86.99 (seed 000)"
    assert rows["seqpool=shift"]["published"] == ""  # the seed has no plain `shift` line
    shipped = yaml.safe_load(files("attnexp.conf").joinpath("anchors", "seed000.yaml").read_text())
    assert shipped["published"]["x_minus_softmax"] == [
        {"best": 88.20, "final": 88.12, "source": "later log"},
        {"best": 88.67, "final": 88.67, "source": "later log"},
    ]
    assert {k: v[0]["best"] for k, v in shipped["published"].items()} == {
        "x": 88.34,
        "softmax_dim0": 84.61,
        "softmax": 87.10,
        "softmax_x10": 85.77,
        "softmax_plus_x": 88.49,
        "x_minus_softmax": 88.20,
    }


def test_anchors_sit_only_beside_runs_of_their_setting(sweep, tmp_path, capsys):
    """Fake-data, 3-epoch runs get no CIFAR-10 200-epoch number, and the report says why."""
    out = tmp_path / "out"
    assert report.main([str(sweep), "--anchors", "seed000", "--out", str(out)]) == 0
    rows = read_csv(out / "report.csv")
    assert all(row["published"] == "" for row in rows.values())
    text = (out / "report.md").read_text()
    assert "88.34 / 88.34 (seed 000) not beside seqpool=x: data=fake (published: cifar10)" in text


def test_runs_of_different_recipes_are_not_compared_unless_asked(tmp_path, capsys):
    root = tmp_path / "mixed"
    make_run(root, ["seqpool=x"], 0, [60.0], metrics={"recipe": "fast", "numerics": {"precision": "bf16-mixed"}})
    make_run(root, ["seqpool=softmax"], 0, [61.0], metrics={"recipe": "official", "numerics": {"precision": "32-true"}})
    assert report.main([str(root), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "mix recipes or precisions" in err and "recipe=official precision=32-true: 1 runs" in err
    assert report.main([str(root), "--out", str(tmp_path / "b"), "--mix-recipes"]) == 0
    # precision alone differs too (fast on a GPU vs fast on the CPU); a run without a record is `fast`
    root2 = tmp_path / "precision"
    make_run(root2, ["seqpool=x"], 0, [60.0], metrics={"recipe": "fast", "numerics": {"precision": "bf16-mixed"}})
    make_run(root2, ["seqpool=x"], 1, [60.0], metrics={"numerics": {"precision": "32-true"}})
    assert report.main([str(root2), "--out", str(tmp_path / "c")]) == 2
    root3 = tmp_path / "old"
    make_run(root3, ["seqpool=x"], 0, [60.0], metrics={"recipe": "fast", "numerics": {"precision": "32-true"}})
    make_run(root3, ["seqpool=x"], 1, [60.0])  # from before the record: the default recipe
    assert report.main([str(root3), "--out", str(tmp_path / "d")]) == 0


def test_trend_against_a_numeric_choice(tmp_path):
    root = tmp_path / "grid"
    for alpha, level in [(-1.0, 60.0), (0.0, 65.0), (1.0, 70.0)]:
        for seed in range(2):
            make_run(
                root, ["seqpool=shift", f"alpha.value={alpha}"], seed, [level + seed], choices={"alpha": "constant"}
            )
    for seed in range(2):
        make_run(root, ["seqpool=x"], seed, [64.0 + seed])
    out = tmp_path / "out"
    assert report.main([str(root), "--baseline", "seqpool=x", "--x", "alpha.value", "--out", str(out)]) == 0
    assert (out / "trend.png").stat().st_size > 10_000
    rows = read_csv(out / "report.csv")
    assert float(rows["alpha.value=1.0, seqpool=shift"]["best_mean"]) == pytest.approx(70.5)
    assert "trend.png" in (out / "report.md").read_text()


def test_resumed_run_keeps_the_latest_value_of_a_relogged_step(tmp_path):
    run = make_run(tmp_path / "r", ["seqpool=x"], 0, [50.0, 60.0])
    # the killed run had logged epoch 3 (step 29) = 99; the resumed one logs it again as 65, later
    write_events(run / "tb", [("epoch", 29, 2.0), ("val/acc1", 29, 99.0)], wall=500.0)
    write_events(run / "tb", [("epoch", 29, 2.0), ("val/acc1", 29, 65.0)], wall=time.time())
    curves = report.read_curves(run / "tb", ("val/acc1",))
    assert curves["val/acc1"] == {1: 50.0, 2: 60.0, 3: 65.0}


def test_seed003_table_in_the_seeds_column_order(tmp_path, capsys):
    root = tmp_path / "dd"
    cells = [
        ("vit", "cifar10", 51.0, 9.88, 1_288_330),
        ("cnn", "mnist", 97.05, 1.33, 1_199_882),
        ("cnn", "cifar10", 57.78, 1.33, 1_626_442),
        ("hybrid", "mnist", 99.2, 10.4, 1_506_826),
    ]
    for model, data, acc, ms, params in cells:
        make_run(
            root,
            [f"model={model}", f"data={data}"],
            0,
            [acc - 5, acc, acc - 1],
            metrics={"params": params, "inference_ms_per_batch": ms, "inference_batch_size": 1000},
        )
    assert report.main([str(root), "--table", "seed003", "--out", str(tmp_path / "o")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert lines[0] == "| Model Type | Dataset | Max Accuracy | Average Inference Time (ms) | Parameters |"
    assert lines[2:] == [
        "| CNN | MNIST | 97.05 | 1.33 | 1,199,882 |",
        "| CNN | CIFAR10 | 57.78 | 1.33 | 1,626,442 |",
        "| ViT | CIFAR10 | 51.00 | 9.88 | 1,288,330 |",
        "| Hybrid | MNIST | 99.20 | 10.40 | 1,506,826 |",
    ]
    assert (tmp_path / "o" / "seed003.csv").read_text().startswith("Model Type,Dataset,Max Accuracy")


def test_bad_input_is_one_line(tmp_path, sweep, capsys):
    assert report.main([str(tmp_path / "missing")]) == 2
    assert report.main([str(sweep), "--baseline", "seqpool=nope"]) == 2
    assert report.main([str(sweep), "--anchors", "nope"]) == 2
    assert report.main([str(tmp_path / "sweep" / "data=fake,seqpool=x"), "--baseline", "seqpool"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("attnexp-report: error: ") for line in err)
    assert "no such folder" in err[0] and "no group matches" in err[1] and "seed000" in err[2] and "KEY=VALUE" in err[3]
