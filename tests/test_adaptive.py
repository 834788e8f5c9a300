"""sweep.seeds=auto: Stein's two-stage sweep on debug=tiny data, its resume, its refusals, its dry run."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
from conftest import attnexp_main
from scipy.stats import t

from attnexp.sweep import launch
from attnexp.tools import report

PILOT, MAX_SEEDS = 3, 4
# baseline seqpool=x (log every step); seqpool=x logging every 2nd step trains identically: its paired
# differences are all 0; seqpool=softmax changes the model: its differences spread (16 validation images)
AUTO = [
    "debug=tiny", "seqpool=x,softmax", "trainer.log_every_n_steps=1,2", "sweep.seeds=auto", "sweep.precision=0.5",
    f"sweep.pilot={PILOT}", f"sweep.max_seeds={MAX_SEEDS}", "sweep.baseline={seqpool:x,trainer.log_every_n_steps:1}",
]  # fmt: skip


def adaptive_sweep(sweep_dir: Path, *extra: str) -> tuple[dict, dict[str, float]]:
    """(sweep.json's adaptive record, each job folder → its metrics.json best_acc1)."""
    done = attnexp_main("-m", *AUTO, *extra, f"hydra.sweep.dir={sweep_dir}", cwd=sweep_dir.parent)
    assert done.returncode == 0, done.stderr
    body = json.loads((sweep_dir / "sweep.json").read_text())
    best = {
        j["dir"]: json.loads((sweep_dir / j["dir"] / "metrics.json").read_text())["best_acc1"] for j in body["jobs"]
    }
    return body["adaptive"], best


def by_variant(record: dict) -> dict[str, dict]:
    return {c["variant"]: c for c in record["comparisons"]}


def test_adaptive_sweep_sizes_each_variant_and_resumes_to_the_same_seeds(tmp_path, monkeypatch):
    record, best = adaptive_sweep(tmp_path / "whole")
    variants = by_variant(record)
    same = variants["seqpool=x,trainer.log_every_n_steps=2"]  # identical in effect: no second stage
    assert (same["s0"], same["n"], same["pairs"], same["stopped"]) == (0.0, PILOT, PILOT, "precision")
    moved = variants["seqpool=softmax,trainer.log_every_n_steps=1"]
    assert moved["s0"] > 0 and moved["n"] > PILOT
    wanted = math.ceil((t.ppf(0.975, PILOT - 1) * moved["s0"] / 0.5) ** 2)
    assert moved["n"] == min(MAX_SEEDS, max(PILOT, wanted))
    assert moved["stopped"] == ("max_seeds" if wanted > MAX_SEEDS else "precision")
    seeds: dict[str, set] = {}
    for folder in best:
        config, seed = folder.rsplit("/seed_", 1)
        seeds.setdefault(config.split("seqpool=")[1], set()).add(int(seed))
    # each variant to its N; the baseline to the largest N among its variants
    assert seeds["x,trainer.log_every_n_steps=2"] == set(range(PILOT))
    assert seeds["softmax,trainer.log_every_n_steps=1"] == set(range(moved["n"]))
    assert seeds["x,trainer.log_every_n_steps=1"] == set(range(max(c["n"] for c in variants.values())))

    # the report's interval for the sized statistic is Stein's, around the mean of the N differences
    assert report.main([str(tmp_path / "whole"), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "report.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["group"] == "seqpool=softmax, trainer.log_every_n_steps=1")
    pairs = [
        best[f"debug=tiny,seqpool=softmax,trainer.log_every_n_steps=1/seed_{s}"]
        - best[f"debug=tiny,seqpool=x,trainer.log_every_n_steps=1/seed_{s}"]
        for s in range(moved["n"])
    ]
    half = t.ppf(0.975, moved["pairs"] - 1) * moved["s0"] / math.sqrt(moved["n"])
    assert float(row["d_best"]) == pytest.approx(sum(pairs) / len(pairs))
    assert float(row["d_best_high"]) - float(row["d_best"]) == pytest.approx(half)
    assert row["stopped"] == moved["stopped"] and int(row["n_pairs"]) == moved["n"]

    # interrupted after stage 1, then resumed: the same seeds and results as uninterrupted
    stage = launch.launch_stage

    def stop_before_stage_two(launcher, sweep_dir, jobs, grouped, first):
        if first:
            raise KeyboardInterrupt
        return stage(launcher, sweep_dir, jobs, grouped, first)

    monkeypatch.setattr(launch, "launch_stage", stop_before_stage_two)
    with pytest.raises(KeyboardInterrupt):
        adaptive_sweep(tmp_path / "cut")
    assert len(list((tmp_path / "cut").rglob("metrics.json"))) == 4 * PILOT
    monkeypatch.undo()
    resumed, resumed_best = adaptive_sweep(tmp_path / "cut", "sweep.resume=true")
    decided = ("variant", "baseline", "pairs", "dropped", "s0", "n", "stopped")
    assert [{k: c[k] for k in decided} for c in resumed["comparisons"]] == [
        {k: c[k] for k in decided} for c in record["comparisons"]
    ]
    assert resumed_best == best


@pytest.mark.parametrize(
    "override, says",
    [
        ("sweep.pilot=2", "sweep.pilot=2: at least 3"),
        ("sweep.max_seeds=2", "sweep.max_seeds=2: at least sweep.pilot (3)"),
        ("sweep.precision=null", "sweep.precision=null: sweep.seeds=auto needs the half-width"),
        ("seed=0,1", "seed=...: sweep.seeds=auto chooses the seeds"),
        ("sweep.baseline=null", "sweep.baseline=null: the baseline's choices"),
        ("sweep.baseline={seqpool:softmax_plus_x}", "no configuration of this sweep has these choices"),
    ],
)
def test_what_cannot_be_sized_is_refused_at_start_up(tmp_path, override, says):
    done = attnexp_main("-m", *AUTO, override, cwd=tmp_path)
    assert done.returncode == 2
    line = done.stderr.strip()
    assert "\n" not in line and says in line, line
    assert not (tmp_path / "multirun").exists() or not any((tmp_path / "multirun").rglob("*.json"))


def test_a_single_run_with_auto_seeds_is_refused(tmp_path):
    done = attnexp_main("debug=tiny", "sweep.seeds=auto", "sweep.precision=1", cwd=tmp_path)
    assert done.returncode == 2 and "an adaptive sweep runs with -m" in done.stderr
    assert not (tmp_path / "outputs").exists()


def test_dry_run_shows_stage_one_and_the_worst_case(tmp_path):
    done = attnexp_main("-m", *AUTO, "sweep.dry_run=true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"({4 * PILOT} jobs; nothing is run or written)" in done.stdout
    assert f"sweep.max_seeds={MAX_SEEDS} seeds: {4 * MAX_SEEDS} jobs" in done.stdout
    assert not list(tmp_path.rglob("sweep.json"))


def test_a_failed_pilot_run_drops_its_pair_and_the_seed_is_not_replaced(tmp_path, monkeypatch):
    """Stage 2's decision from the pilot's results alone (the runs' values stubbed): pairs, s₀ with
    pairs − 1 degrees of freedom, N, why each variant stopped, the pairs dropped and the new jobs."""
    from omegaconf import OmegaConf

    from attnexp.sweep import adaptive

    pilot, precision = 4, 1.0
    best = {  # line → best top-1 at seeds 0..3; None: the run failed
        "x": [80.0, None, 82.0, 83.0],
        "a": [81.0, 84.0, None, 86.5],  # seed 1: the baseline failed; seed 2: a itself
        "b": [None, None, None, 85.0],  # one usable pair (seed 3): cannot size; seed 1: both failed
    }
    jobs = [
        ([f"seqpool={line}", f"seed={s}"], f"seqpool={line}/seed_{s}", OmegaConf.create({"seed": s}))
        for line in best
        for s in range(pilot)
    ]
    monkeypatch.setattr(adaptive, "baselines", lambda jobs, spec: {(f"seqpool={k}",): ("seqpool=x",) for k in best})
    monkeypatch.setattr(
        adaptive,
        "value",
        lambda run_dir, sw: (best[run_dir.parent.name[8:]][int(run_dir.name[5:])], "failed: boom"),
    )
    sweep = {"pilot": pilot, "max_seeds": 12, "precision": precision, "metric": "val/acc1", "statistic": "best"}
    master = OmegaConf.create({"sweep": sweep | {"baseline": {"seqpool": "x"}}})
    record, more = adaptive.decide(str(tmp_path), master, jobs)
    a, b = record["comparisons"]
    diffs = [81.0 - 80.0, 86.5 - 83.0]
    assert a["pairs"] == 2 and a["s0"] == pytest.approx(statistics.stdev(diffs))
    wanted = math.ceil((t.ppf(0.975, 1) * a["s0"] / precision) ** 2)  # t with pairs − 1 = 1 df
    assert a["n"] == min(12, max(pilot, wanted)) and a["stopped"] == ("max_seeds" if wanted > 12 else "precision")
    assert [d["seed"] for d in a["dropped"]] == [1, 2]
    assert a["dropped"][0]["why"] == "seqpool=x: failed: boom"
    assert b["pairs"] == 1 and (b["s0"], b["n"], b["stopped"]) == (None, pilot, "failed")
    assert b["dropped"][1] == {"seed": 1, "why": "seqpool=b: failed: boom; seqpool=x: failed: boom"}
    seeds = sorted((o[0], int(o[1][5:])) for o in more)
    assert seeds == sorted([(f"seqpool={k}", s) for k in ("a", "x") for s in range(pilot, a["n"])])
    assert json.loads((tmp_path / "sweep.json").read_text())["adaptive"] == record


def test_a_baseline_is_found_however_its_values_are_spelled():
    """sweep.baseline's values arrive parsed (0.001, True), a job's overrides as typed (1e-3, true)."""
    from attnexp.sweep.compare import pick_baselines

    items = [{"optimizer.lr": "1e-3", "flag": "true"}, {"optimizer.lr": "3e-3", "flag": "true"}]
    assert pick_baselines(items, {"optimizer.lr": 0.001, "flag": True}, ["optimizer.lr"]) == [0, 0]
    assert pick_baselines(items, {"optimizer.lr": 0.002}, ["optimizer.lr"]) == [None, None]
