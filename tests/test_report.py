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

import numpy as np
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
    accs = None if accs is None else [float(np.float32(a)) for a in accs]  # what TensorBoard keeps
    if accs is not None:
        write_events(run / "tb", lightning_rows(accs, LOSS[: len(accs)]))
    m = {"status": status, "epochs": len(accs or []), "wall_time_s": 3.0 * len(accs or []), "params": 283_723}
    m |= {"best_acc1": max(accs), "final_acc1": accs[-1]} if accs else {}  # as a real run: the curve's max and last
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


def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """The paired t-interval for mean(a − b), written out: n − 1 degrees of freedom."""
    d = np.subtract(a, b)
    half = student_t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def from_metrics(root: Path, group: str, seeds) -> dict[str, list[float]]:
    """best_acc1 and final_acc1 of a group's runs at the seeds, from their metrics.json."""
    got = [json.loads((root / group / f"seed_{s}" / "metrics.json").read_text()) for s in seeds]
    return {which: [m[f"{which}_acc1"] for m in got] for which in ("best", "final")}


def assert_interval(row: dict, which: str, expected: tuple[float, float, float]) -> None:
    got = [float(row[f"d_{which}{end}"]) for end in ("", "_low", "_high")]
    assert got == pytest.approx(list(expected), rel=1e-6), which


def test_table_statistics_and_paired_interval(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.main([str(sweep), "--baseline", "seqpool=x", "--out", str(out)]) == 0
    rows = read_csv(out / "report.csv")
    assert set(rows) == {"seqpool=x", "seqpool=softmax", "seqpool=shift"}
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
        areas = [statistics.mean(np.float32(c).tolist()) for c in seeds.values()]  # the mean over epochs
        assert float(row["mean_mean"]) == pytest.approx(statistics.mean(areas))
        assert row["baseline"] == "seqpool=x"
        if seqpool != "x":  # the runs share seeds 0-2: paired, from each run's metrics.json
            mine, base = (
                from_metrics(sweep, f"data=fake,seqpool={seqpool}", (0, 1, 2)),
                from_metrics(sweep, "data=fake,seqpool=x", (0, 1, 2)),
            )
            for which in ("best", "final"):
                assert_interval(row, which, paired(mine[which], base[which]))
                assert row[f"interval_{which}"] == "t" and row[f"no_spread_{which}"] == "false"
            theirs = [statistics.mean(np.float32(c).tolist()) for c in CURVES["x"].values()]
            assert_interval(row, "mean", paired(areas, theirs))
            assert (row["pairing"], row["n_pairs"], row["stopped"]) == ("paired", "3", "")
    assert rows["seqpool=x"]["verdict_best"] == "baseline" and rows["seqpool=x"]["pairing"] == ""
    assert rows["seqpool=softmax"]["verdict_best"] == "better"  # ~10 points apart, stds ~1
    assert rows["seqpool=shift"]["verdict_best"] == "can't tell"  # means 71.0 vs 71.3, stds ~2
    text = (out / "report.md").read_text()
    assert "| seqpool=x | paired, 3 seeds |" in text and "2 comparisons: each interval covers 95 % on its own" in text
    assert (
        "final top-1 [test]" in text
        and "best top-1 [test]" in text
        and "selected on the test split: optimistic" in text
    )
    assert "Welch" not in text and "Stein" not in text
    assert text.index("| seqpool=x |") < text.index("| seqpool=softmax |")  # the baseline row leads
    assert capsys.readouterr().out.startswith("# attnexp report")
    for png in (out / "curves.png", out / "diff.png"):
        assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "![diff](diff.png)" in text


def test_groups_without_shared_seeds_get_welch(tmp_path):
    root = tmp_path / "s"
    base = {0: [60.0, 70.0], 1: [62.0, 71.0], 2: [59.0, 69.5]}
    other = {3: [64.0, 73.0], 4: [61.0, 74.5], 5: [65.0, 72.0]}
    for seqpool, seeds in (("x", base), ("softmax", other)):
        for seed, accs in seeds.items():
            make_run(root, [f"seqpool={seqpool}"], seed, accs)
    out = tmp_path / "out"
    assert report.main([str(root), "--baseline", "seqpool=x", "--out", str(out)]) == 0
    row = read_csv(out / "report.csv")["seqpool=softmax"]
    mine, theirs = from_metrics(root, "seqpool=softmax", other), from_metrics(root, "seqpool=x", base)
    for which in ("best", "final"):
        assert_interval(row, which, welch(mine[which], theirs[which]))
        assert row[f"interval_{which}"] == "welch"
    assert (row["pairing"], row["n_pairs"], row["stopped"]) == ("welch", "0", "")
    text = (out / "report.md").read_text()
    assert "| Welch |" in text and "Welch-t interval" in text and "paired:" not in text
    assert not (out / "diff.png").exists()  # nothing paired


def test_a_run_that_did_not_finish_drops_its_pair_and_the_report_says_so(tmp_path):
    root = tmp_path / "s"
    x = {0: [60.0, 70.0], 1: [62.0, 71.0], 2: [59.0, 69.5], 3: [1e9], 5: [61.0, 70.0]}
    softmax = {0: [64.0, 73.0], 1: [50.0], 2: [65.0, 70.0], 3: [61.0, 72.5], 6: [60.0, 75.0]}
    for seed, accs in x.items():
        make_run(root, ["seqpool=x"], seed, accs, **({"status": "diverged", "metrics": {"reason": "loss is NaN"}} if seed == 3 else {}))  # fmt: skip
    for seed, accs in softmax.items():
        make_run(root, ["seqpool=softmax"], seed, accs, **({"status": "failed", "metrics": {"reason": "OOM"}} if seed == 1 else {}))  # fmt: skip
    # softmax seed 4 was planned, never started; x seed 4 finished
    make_run(root, ["seqpool=x"], 4, [63.0, 72.0])
    jobs = [{"overrides": ["seqpool=softmax", "seed=4"], "dir": "seqpool=softmax/seed_4"}]
    (root / "sweep.json").write_text(json.dumps({"command": "attnexp -m ...", "jobs": jobs}))
    out = tmp_path / "out"
    assert report.main([str(root), "--baseline", "seqpool=x", "--out", str(out)]) == 0
    row = read_csv(out / "report.csv")["seqpool=softmax"]
    # pairs at the seeds both finished (0, 2); 5 and 6 are on one side only: no pair, none dropped
    mine, theirs = from_metrics(root, "seqpool=softmax", (0, 2)), from_metrics(root, "seqpool=x", (0, 2))
    for which in ("best", "final"):
        assert_interval(row, which, paired(mine[which], theirs[which]))
    assert (row["pairing"], row["n_pairs"]) == ("paired", "2")
    text = (out / "report.md").read_text()
    assert "| paired, 2 seeds, 3 pairs dropped |" in text
    section = text[text.index("## Pairs dropped (3)") :]
    for seed, why in [(1, "seqpool=softmax: failed: OOM"), (3, "seqpool=x: diverged: loss is NaN"),
                      (4, "seqpool=softmax: not started: the launcher never started it")]:  # fmt: skip
        assert f"| seqpool=softmax | seqpool=x | {seed} | {why} |" in section


def adaptive_sweep(root: Path, metric: str = "val/acc1") -> dict[str, dict]:
    """seqpool=x the baseline to 7 seeds; softmax sized to N = 7 (s₀ = 0.8 from 5 pilot pairs); shift
    stopped at the pilot, its pilot's differences in best without spread (s₀ = 0)."""
    rng = np.random.default_rng(0)
    auto = "sweep.seeds=auto"
    for seed in range(7):
        base = [60.0 + rng.normal(), 70.0 + rng.normal(), 69.0]
        make_run(root, ["seqpool=x", auto], seed, base)
        make_run(root, ["seqpool=softmax", auto], seed, [b + rng.normal(1, 2) for b in base])
        if seed < 5:  # best 0.5 above the baseline's at every seed; final spreads
            make_run(root, ["seqpool=shift", auto], seed, [base[0], base[1] + 0.5, 69.0 - 0.3 * seed])
    comparison = {"baseline_overrides": ["seqpool=x", auto], "pairs": 5, "stopped": "precision", "dropped": []}
    adaptive = {"pilot": 5, "max_seeds": 20, "precision": 1.0, "metric": "val/acc1", "statistic": "best"}
    adaptive |= {"baseline": {"seqpool": "x"}, "comparisons": [
        comparison | {"overrides": ["seqpool=softmax", auto], "s0": 0.8, "n": 7, "no_spread": False},
        comparison | {"overrides": ["seqpool=shift", auto], "s0": 0.0, "n": 5, "no_spread": True},
    ]}  # fmt: skip
    (root / "sweep.json").write_text(json.dumps({"command": "attnexp -m ...", "jobs": [], "adaptive": adaptive}))
    # no --baseline: sweep.json's
    assert report.main([str(root), "--metric", metric, "--out", str(root / f"out_{metric[:3]}")]) == 0
    return read_csv(root / f"out_{metric[:3]}" / "report.csv")


def test_stein_interval_on_the_sized_statistic_of_an_adaptive_sweep(tmp_path):
    root = tmp_path / "auto"
    rows = adaptive_sweep(root)
    base = from_metrics(root, "seqpool=x,sweep.seeds=auto", range(7))
    sized = rows["seqpool=softmax"]
    mine = from_metrics(root, "seqpool=softmax,sweep.seeds=auto", range(7))
    d = np.mean(np.subtract(mine["best"], base["best"]))
    half = student_t.ppf(0.975, 5 - 1) * 0.8 / math.sqrt(7)  # pilot pairs − 1 df, sweep.json's s₀, √N
    assert_interval(sized, "best", (d, d - half, d + half))
    assert_interval(sized, "final", paired(mine["final"], base["final"]))  # not sized: ordinary paired t
    assert [sized[k] for k in ("interval_best", "interval_final", "n_pairs", "stopped", "no_spread_best")] == [
        "stein", "t", "7", "precision", "false"]  # fmt: skip
    flat = rows["seqpool=shift"]
    mine = from_metrics(root, "seqpool=shift,sweep.seeds=auto", range(5))
    assert float(flat["d_best"]) == pytest.approx(0.5) and flat["d_best_low"] == "nan"  # no spread: no interval
    assert flat["verdict_best"] == "can't tell"
    assert_interval(flat, "final", paired(mine["final"], base["final"][:5]))
    assert (flat["interval_best"], flat["no_spread_best"], flat["n_pairs"]) == ("stein", "true", "5")
    text = (root / "out_val" / "report.md").read_text()
    assert "| paired t on final and mean, Stein on best, 7 seeds, stopped: precision |" in text
    assert (
        "| paired t on final and mean, Stein on best, 5 seeds, stopped: precision, no spread on best (5 equal differences) |"
        in text
    )
    assert "averaged over the pilot's outcomes" in text and "not for one variant taken alone given its N" in text
    # the sweep sized val/acc1: on another metric its intervals are ordinary paired t
    other = adaptive_sweep(tmp_path / "loss", "train/loss")["seqpool=softmax"]
    assert (other["interval_best"], other["interval_final"], other["stopped"]) == ("t", "t", "precision")
    # sized per comparison, reported family-wise: Bonferroni over the 2 rows, the sweep's s₀ and N
    assert report.main([str(root), "--family", "--out", str(root / "fam")]) == 0
    fam = read_csv(root / "fam" / "report.csv")["seqpool=softmax"]
    wide = student_t.ppf(1 - 0.05 / 4, 5 - 1) * 0.8 / math.sqrt(7)
    assert_interval(fam, "best", (d, d - wide, d + wide))
    assert (
        fam["family_k"] == "2"
        and "family-wise (k = 2), sized per comparison" in (root / "fam" / "report.md").read_text()
    )


def test_diff_band_per_epoch_is_a_paired_t_over_the_pairs_that_reached_it():
    def run(*accs):
        return report.ReportRun(Path("r"), "done", curves={"val/acc1": dict(enumerate(accs, 1))})

    variant = [run(60.0, 71.0, 72.0), run(61.0, 70.0), run(59.5, 72.5, 71.0)]  # the 2nd stopped after epoch 2
    base = [run(58.0, 70.0, 70.5), run(60.0, 68.5, 69.0), run(59.0, 70.0, 70.0)]
    epochs, bands, simultaneous = report.epoch_differences(list(zip(variant, base)), "val/acc1")
    assert epochs == [1, 2, 3] and simultaneous is None  # 3 pairs: too few for a sign-flip band
    for e, band in zip(epochs, bands.T):
        reached = [
            (a.curves["val/acc1"][e], b.curves["val/acc1"][e])
            for a, b in zip(variant, base)
            if e in a.curves["val/acc1"]
        ]
        assert list(band) == pytest.approx(paired(*zip(*reached)))


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


def test_every_comparison_names_its_own_baseline(tmp_path):
    """No fallback to another row's baseline: vit/softmax has no vit/x, and says why."""
    items = [{"seqpool": "x", "model": "cnn"}, {"seqpool": "softmax", "model": "cnn"}, {"seqpool": "softmax", "model": "vit"}]  # fmt: skip
    assert report.pick_baselines(items, {"seqpool": "x"}, ["seqpool", "model"]) == [0, 0, None]
    root = tmp_path / "grid"
    for seed in range(3):
        make_run(root, ["model=cnn", "seqpool=x"], seed, [60.0 + seed, 70.0 + seed])
        make_run(root, ["model=cnn", "seqpool=softmax"], seed, [61.0 + seed, 72.0 + seed * 1.1])
        make_run(root, ["model=vit", "seqpool=softmax"], seed, [50.0 + seed, 55.0])
    assert report.main([str(root), "--baseline", "seqpool=x", "--out", str(tmp_path / "a")]) == 0
    rows = read_csv(tmp_path / "a" / "report.csv")
    vit = rows["model=vit, seqpool=softmax"]
    assert vit["baseline"] == "no baseline: seqpool=x, model=vit never ran"
    assert all(vit[f"d_{w}"] == "" and vit[f"verdict_{w}"] == "" for w in ("final", "mean", "best"))
    assert rows["model=cnn, seqpool=softmax"]["baseline"] == "model=cnn, seqpool=x"
    assert "| no baseline: seqpool=x, model=vit never ran |" in (tmp_path / "a" / "report.md").read_text()
    # vit/x ran, and every run of it failed: the seeds and why
    for seed in range(2):
        make_run(root, ["model=vit", "seqpool=x"], seed, [10.0], status="failed", metrics={"reason": "OOM"})
    assert report.main([str(root), "--baseline", "seqpool=x", "--out", str(tmp_path / "b")]) == 0
    vit = read_csv(tmp_path / "b" / "report.csv")["model=vit, seqpool=softmax"]
    assert vit["baseline"] == "no baseline: no usable run of seqpool=x, model=vit (seed 0: failed: OOM, 1: failed: OOM)"


def test_a_non_finite_metric_takes_its_run_out_with_its_reason(tmp_path):
    """NaN at the first epoch, inf at a later one: both runs out of the statistics, nothing crashes."""
    root = tmp_path / "s"
    x = {0: [60.0, 70.0, 69.0], 1: [61.0, 72.0, 71.5], 2: [59.0, 71.0, 70.0], 3: [58.0, 69.0, math.inf]}
    softmax = {0: [70.0, 80.0, 79.0], 1: [math.nan, 81.0, 80.5], 2: [72.0, 82.5, 82.0], 3: [71.0, 80.0, 81.0]}
    for seqpool, seeds in (("x", x), ("softmax", softmax)):
        for seed, accs in seeds.items():
            make_run(root, [f"seqpool={seqpool}"], seed, accs)
    out = tmp_path / "out"
    assert report.main([str(root), "--baseline", "seqpool=x", "--out", str(out)]) == 0
    rows = read_csv(out / "report.csv")
    assert rows["seqpool=x"]["n"] == "3" and rows["seqpool=softmax"]["n"] == "3"
    assert float(rows["seqpool=x"]["best_mean"]) == pytest.approx(statistics.mean([70.0, 72.0, 71.0]))
    row = rows["seqpool=softmax"]
    mine, theirs = from_metrics(root, "seqpool=softmax", (0, 2)), from_metrics(root, "seqpool=x", (0, 2))
    assert_interval(row, "final", paired(mine["final"], theirs["final"]))
    text = (out / "report.md").read_text()
    section = text[text.index("## Pairs dropped (2)") :]
    assert "| seqpool=softmax | seqpool=x | 1 | seqpool=softmax: non-finite val/acc1 at epoch 1 |" in section
    assert "| seqpool=softmax | seqpool=x | 3 | seqpool=x: non-finite val/acc1 at epoch 3 |" in section
    # sizing refuses a non-finite s₀ rather than plan a negative N
    from attnexp.sweep.compare import stein_seeds

    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            stein_seeds(bad, 5, 0.5, 5, 20)


def test_differences_without_spread_give_no_verdict(tmp_path):
    """Two seeds each 3 test images (0.03 points) ahead: float32 makes the differences 0.0300064 and
    0.0299988, not an interval [0.02995, 0.03005] and "better"."""
    from attnexp.sweep.compare import paired_interval

    d, low, high = paired_interval([0.1, 0.1])
    assert d == pytest.approx(0.1) and math.isnan(low) and math.isnan(high)
    root = tmp_path / "s"
    for seed, acc in enumerate([71.23, 55.55]):
        make_run(root, ["seqpool=x"], seed, [acc])
        make_run(root, ["seqpool=softmax"], seed, [acc + 0.03])
    diffs = [float(np.float32(a + 0.03)) - float(np.float32(a)) for a in (71.23, 55.55)]
    assert diffs[0] != diffs[1] and max(diffs) - min(diffs) < 1e-4  # "equal" only up to float32
    assert report.main([str(root), "--baseline", "seqpool=x", "--out", str(tmp_path / "o")]) == 0
    row = read_csv(tmp_path / "o" / "report.csv")["seqpool=softmax"]
    assert (row["no_spread_final"], row["verdict_final"], row["d_final_low"]) == ("true", "can't tell", "nan")
    assert "no spread on final (2 equal differences)" in (tmp_path / "o" / "report.md").read_text()


def test_mean_drops_pairs_whose_epochs_differ(tmp_path):
    root = tmp_path / "s"
    x = {0: [60.0, 70.0, 69.0], 1: [61.0, 72.0, 71.5], 2: [59.0, 71.0, 70.0]}
    softmax = {0: [62.0, 71.0, 70.0], 1: [64.0, 73.0], 2: [61.0, 73.0, 73.0]}  # seed 1 logged 2 epochs
    for seqpool, seeds in (("x", x), ("softmax", softmax)):
        for seed, accs in seeds.items():
            make_run(root, [f"seqpool={seqpool}"], seed, accs)
    assert report.main([str(root), "--baseline", "seqpool=x", "--out", str(tmp_path / "o")]) == 0
    row = read_csv(tmp_path / "o" / "report.csv")["seqpool=softmax"]
    areas = {s: statistics.mean(c) for s, c in softmax.items()}
    assert_interval(row, "mean", paired([areas[0], areas[2]], [statistics.mean(x[0]), statistics.mean(x[2])]))
    assert_interval(row, "final", paired([70.0, 73.0, 73.0], [69.0, 71.5, 70.0]))  # final keeps all three
    assert (
        "| seqpool=softmax | seqpool=x | 1 | epochs differ (out of mean) |"
        in (tmp_path / "o" / "report.md").read_text()
    )


def test_a_held_out_split_scores_best_on_the_test_split_at_best_validation(tmp_path, capsys):
    root = tmp_path / "s"
    held = {"data": {"val_split": 0.1}}
    test_at_best = {"x": [68.0, 69.5, 67.0], "softmax": [70.0, 72.5, None]}  # softmax seed 2: no best checkpoint
    for seqpool, seeds in CURVES.items():
        if seqpool == "shift":
            continue
        for seed, accs in seeds.items():
            score = test_at_best[seqpool][seed]
            make_run(root, [f"seqpool={seqpool}"], seed, accs, config=held, metrics={"test_acc1_at_best_val": score})
    out = tmp_path / "o"
    assert report.main([str(root), "--baseline", "seqpool=x", "--out", str(out)]) == 0
    rows = read_csv(out / "report.csv")
    assert float(rows["seqpool=x"]["best_mean"]) == pytest.approx(statistics.mean(test_at_best["x"]))
    assert rows["seqpool=softmax"]["n"] == "3" and float(rows["seqpool=softmax"]["best_mean"]) == pytest.approx(71.25)
    assert float(rows["seqpool=softmax"]["d_best"]) == pytest.approx(statistics.mean([70.0 - 68.0, 72.5 - 69.5]))
    text = (out / "report.md").read_text()
    assert "final top-1 [validation]" in text and "best top-1 [test]" in text and "test_acc1_at_best_val" in text
    assert "| seqpool=softmax | seqpool=x | 2 | no test_acc1_at_best_val (out of best) |" in text
    # best exists for top-1 only: another metric leaves the column empty
    assert (
        report.main([str(root), "--baseline", "seqpool=x", "--metric", "train/loss", "--out", str(tmp_path / "l")]) == 0
    )
    loss = read_csv(tmp_path / "l" / "report.csv")["seqpool=softmax"]
    assert loss["best_mean"] == "" and loss["d_best"] == "" and loss["d_final"] != ""
    # runs of both kinds of split are refused in one table
    make_run(root, ["seqpool=shift"], 0, [50.0])
    capsys.readouterr()
    assert report.main([str(root), "--out", str(tmp_path / "m")]) == 2
    assert "mix data.val_split = 0 (1 runs" in capsys.readouterr().err


def test_the_simultaneous_band_is_the_sign_flip_max_t_quantile():
    """The critical value against every sign flip written out, and what the band buys: under no
    difference, the simultaneous band covers 0 at every epoch in ≥ 90 % of simulated sweeps, where
    the pointwise bands all cover far less often."""
    import itertools

    from attnexp.sweep.compare import simultaneous_band, t_quantile

    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4))
    stats = []
    for signs in itertools.product([1, -1], repeat=6):
        y = np.array(signs)[:, None] * (x - x.mean(axis=0))
        stats.append(max(abs(y[:, e].mean()) / (y[:, e].std(ddof=1) / math.sqrt(6)) for e in range(4)))
    assert simultaneous_band(x) == pytest.approx(sorted(stats)[math.ceil(0.95 * 64) - 1])
    assert simultaneous_band(x[:5]) is None

    sims, n, epochs = 300, 8, 30
    both, pointwise = 0, 0
    for _ in range(sims):  # differences that drift slowly over epochs (AR(1)), true mean 0
        z = rng.normal(size=(n, epochs))
        d = np.empty_like(z)
        d[:, 0] = z[:, 0]
        for e in range(1, epochs):
            d[:, e] = 0.8 * d[:, e - 1] + 0.6 * z[:, e]
        se = d.std(axis=0, ddof=1) / math.sqrt(n)
        both += bool((np.abs(d.mean(axis=0)) <= simultaneous_band(d) * se).all())
        pointwise += bool((np.abs(d.mean(axis=0)) <= t_quantile(n - 1) * se).all())
    assert both / sims >= 0.90 and pointwise / sims < 0.80, (both / sims, pointwise / sims)
