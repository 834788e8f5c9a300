"""sweep.seeds=auto: Stein's two-stage sweep on debug=tiny data, its resume, its refusals, its dry run."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np
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


def by_variant(record: dict) -> dict[str, dict]:
    return {c["variant"]: c for c in record["comparisons"]}


FAILS = ("log_every_n_steps=2", 1)  # the pilot run that fails on purpose: seqpool=x logging every 2nd step, seed 1


def fail_one_pilot_run(monkeypatch) -> None:
    """The job of FAILS ends as a failed run does: metrics.json says failed, the job raises RunFailed."""
    from hydra.core.hydra_config import HydraConfig

    from attnexp.train import modes
    from attnexp.train.lifecycle import RunFailed

    real = modes.run_mode

    def run_mode(cfg):
        if cfg.trainer.log_every_n_steps == 2 and cfg.seed == FAILS[1]:
            folder = Path(HydraConfig.get().runtime.output_dir)
            (folder / "metrics.json").write_text(json.dumps({"status": "failed", "reason": "failed on purpose"}))
            raise RunFailed("failed", "failed on purpose")
        return real(cfg)

    monkeypatch.setattr(modes, "run_mode", run_mode)


def test_adaptive_sweep_replaces_a_failed_pilot_run_and_resumes_to_the_same_seeds(tmp_path, monkeypatch):
    """One end-to-end sweep (debug=tiny) whose pilot loses a run: N usable pairs and, where it says
    `stopped: precision`, a half-width ≤ precision; interrupted after stage 1 and resumed, the same."""
    fail_one_pilot_run(monkeypatch)
    done = attnexp_main("-m", *AUTO, f"hydra.sweep.dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert done.returncode == 1  # a job failed: the sweep says so
    assert "failed, replaced: variant seeds 1" in done.stdout and "unrelated to its outcome" in done.stdout
    body = json.loads((tmp_path / "whole" / "sweep.json").read_text())
    record = body["adaptive"]
    assert (record["statistic"], record["held_out"]) == ("final", False)  # val/* is the test split: no selection
    best = {}
    for j in body["jobs"]:
        m = json.loads((tmp_path / "whole" / j["dir"] / "metrics.json").read_text())
        best[j["dir"]] = m.get("final_acc1")
    variants = by_variant(record)
    same = variants["seqpool=x,trainer.log_every_n_steps=2"]  # identical in effect, one pilot run failed
    assert (same["pairs"], same["s0"], same["no_spread"], same["n"]) == (PILOT - 1, 0.0, True, PILOT)
    assert (same["usable"], same["seeds"], same["stopped"]) == (PILOT, [0, 2, PILOT], "precision")
    assert same["replaced"] == {"variant": [1], "baseline": []}
    moved = variants["seqpool=softmax,trainer.log_every_n_steps=1"]
    wanted = math.ceil((t.ppf(0.975, PILOT - 1) * moved["s0"] / 0.5) ** 2)
    assert moved["n"] == min(MAX_SEEDS, max(PILOT, wanted)) and moved["usable"] == moved["n"]
    assert moved["stopped"] == ("max_seeds" if wanted > MAX_SEEDS else "precision")
    seeds: dict[str, set] = {}
    for folder in best:
        config, seed = folder.rsplit("/seed_", 1)
        seeds.setdefault(config.split("seqpool=")[1], set()).add(int(seed))
    assert seeds["x,trainer.log_every_n_steps=2"] == set(range(PILOT + 1))  # seed 1 replaced by seed 3
    assert seeds["softmax,trainer.log_every_n_steps=1"] == set(range(moved["n"]))
    assert seeds["x,trainer.log_every_n_steps=1"] == set(range(max(moved["n"], PILOT + 1)))

    # the report: Stein's interval on the sized statistic over the first N usable pairs
    assert report.main([str(tmp_path / "whole"), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "report.csv") as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    row = rows["seqpool=softmax, trainer.log_every_n_steps=1"]
    pairs = [
        best[f"debug=tiny,seqpool=softmax,trainer.log_every_n_steps=1/seed_{s}"]
        - best[f"debug=tiny,seqpool=x,trainer.log_every_n_steps=1/seed_{s}"]
        for s in range(moved["n"])
    ]
    half = t.ppf(0.975, moved["pairs"] - 1) * moved["s0"] / math.sqrt(moved["n"])
    assert float(row["d_final"]) == pytest.approx(sum(pairs) / len(pairs))
    if moved["s0"] > 0:
        assert float(row["d_final_high"]) - float(row["d_final"]) == pytest.approx(half)
    assert row["stopped"] == moved["stopped"] and row["interval_final"] == "stein"
    flat = rows["seqpool=x, trainer.log_every_n_steps=2"]
    assert (flat["stopped"], flat["no_spread_final"], flat["verdict_final"]) == ("precision", "true", "can't tell")

    # interrupted after stage 1, then resumed: the same seeds and results as uninterrupted
    stage = launch.launch_stage

    def stop_before_stage_two(launcher, sweep_dir, jobs, grouped, first):
        if first:
            raise KeyboardInterrupt
        return stage(launcher, sweep_dir, jobs, grouped, first)

    monkeypatch.setattr(launch, "launch_stage", stop_before_stage_two)
    with pytest.raises(KeyboardInterrupt):
        attnexp_main("-m", *AUTO, f"hydra.sweep.dir={tmp_path / 'cut'}", cwd=tmp_path)
    assert len(list((tmp_path / "cut").rglob("metrics.json"))) == 4 * PILOT
    monkeypatch.setattr(launch, "launch_stage", stage)
    # a resumed sweep keeps sweep.json's statistic; another one on the command line is refused
    refused = attnexp_main("-m", *AUTO, "sweep.statistic=mean", f"hydra.sweep.dir={tmp_path / 'cut'}", "sweep.resume=true", cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2 and "sized on final (sweep.json): a resumed sweep keeps it" in refused.stderr
    attnexp_main("-m", *AUTO, f"hydra.sweep.dir={tmp_path / 'cut'}", "sweep.resume=true", cwd=tmp_path)
    resumed = json.loads((tmp_path / "cut" / "sweep.json").read_text())["adaptive"]
    decided = ("variant", "baseline", "pairs", "dropped", "s0", "n", "usable", "seeds", "replaced", "stopped")
    assert [{k: c[k] for k in decided} for c in resumed["comparisons"]] == [
        {k: c[k] for k in decided} for c in record["comparisons"]
    ]


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
    done = attnexp_main("-m", *AUTO, "sweep.dry_run=true", "sweep.family=true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"({4 * PILOT} jobs; nothing is run or written)" in done.stdout
    assert f"sweep.max_seeds={MAX_SEEDS} seeds: {4 * MAX_SEEDS} jobs" in done.stdout
    # what family-wise costs: 3 variants against the baseline, t with pilot − 1 df at 1 − 0.05/6
    one, three = t.ppf(0.975, PILOT - 1), t.ppf(1 - 0.05 / 6, PILOT - 1)
    assert (
        f"3 variants against seqpool=x,trainer.log_every_n_steps=1: t({PILOT - 1} df) {one:.2f} → {three:.2f}"
        in done.stdout
    )
    assert f"N × {(three / one) ** 2:.2f}" in done.stdout
    assert not list(tmp_path.rglob("sweep.json"))


def decide_in_rounds(tmp_path, monkeypatch, results: dict, sweep: dict) -> tuple[dict, list[list[tuple]]]:
    """adaptive.decide round after round on stubbed run values (`results`: line → seed → value, None
    for a failed run; the baseline is seqpool=x), as launch.stage_two drives it: (the last record,
    each round's (line, seed) jobs)."""
    from omegaconf import OmegaConf

    from attnexp.sweep import adaptive

    def job(line, s):
        return [f"seqpool={line}", f"seed={s}"], f"seqpool={line}/seed_{s}", OmegaConf.create({"seed": s})

    jobs = [job(line, s) for line in results for s in range(sweep["pilot"])]
    monkeypatch.setattr(adaptive, "baselines", lambda jobs, spec: {(f"seqpool={k}",): ("seqpool=x",) for k in results})

    def value(run_dir, sw, held):
        got = results[run_dir.parent.name[8:]][int(run_dir.name[5:])]
        return got, "" if got is not None else "failed: boom", (1,)

    monkeypatch.setattr(adaptive, "value", value)
    master = OmegaConf.create({"sweep": {"family": False, "statistic": "final", "metric": "val/acc1"} | sweep})
    master.sweep.baseline = {"seqpool": "x"}
    rounds = []
    while True:
        record, more = adaptive.decide(str(tmp_path), master, jobs)
        if not more:
            return record, rounds
        rounds.append(sorted((o[0][8:], int(o[1][5:])) for o in more))
        jobs += [job(line, s) for line, s in rounds[-1]]


def test_a_failed_run_is_replaced_until_n_pairs_are_usable(tmp_path, monkeypatch):
    """The issue's case: pilot 5 with one pair dropped, s₀ = 0.35, precision 0.5. N counts usable
    pairs (t with 4 − 1 df), the failed seed is replaced by the next one, again when that fails too,
    and the interval's half-width is ≤ precision: `stopped: precision` holds."""
    pilot, precision = 5, 0.5
    diffs = [0.1, 0.6, None, -0.2, 0.4]  # seed 2: the variant failed
    s0 = statistics.stdev([d for d in diffs if d is not None])
    n = max(pilot, math.ceil((t.ppf(0.975, 3) * s0 / precision) ** 2))
    results = {
        "x": {s: 80.0 for s in range(12)} | {6: None},  # seed 6: the baseline failed
        "a": {s: 80.0 + (d or 0) for s, d in enumerate(diffs)} | {s: 80.3 for s in range(5, 12)} | {2: None, 5: None},
    }
    record, rounds = decide_in_rounds(
        tmp_path, monkeypatch, results, {"pilot": pilot, "max_seeds": 12, "precision": precision}
    )
    (a,) = record["comparisons"]
    assert (a["pairs"], a["s0"], a["n"]) == (4, pytest.approx(s0), n)
    usable = [0, 1, 3, 4] + [s for s in range(5, 12) if s not in (5, 6)][: n - 4]
    assert (a["usable"], a["seeds"], a["stopped"]) == (n, usable, "precision")
    assert a["replaced"] == {"variant": [2, 5], "baseline": [6]}
    assert [d["seed"] for d in a["dropped"]] == [2, 5, 6] and a["dropped"][2]["why"] == "seqpool=x: failed: boom"
    assert t.ppf(0.975, 3) * s0 / math.sqrt(a["usable"]) <= precision  # what `stopped: precision` claims
    # rounds: the seeds each still needs; a failure in a round is replaced in the next
    assert rounds[0] == [("a", 5), ("x", 5)] and rounds[1] == [("a", 6), ("x", 6)] and rounds[2] == [("a", 7), ("x", 7)]
    assert json.loads((tmp_path / "sweep.json").read_text())["adaptive"] == record
    # the second case: s₀ = 0.6 → N = 15 wanted; with max_seeds 12 it is capped, max_seeds wins over failures
    results["a"] = {s: 80.0 + d for s, d in enumerate([0.1, 1.2, 0.0, -0.3, 0.9])} | {s: 80.3 for s in range(5, 12)}
    results["a"][2] = None
    record, _ = decide_in_rounds(
        tmp_path, monkeypatch, results, {"pilot": pilot, "max_seeds": 12, "precision": precision}
    )
    (a,) = record["comparisons"]
    assert a["stopped"] == "max_seeds" and a["n"] == 12 and a["usable"] == 10  # seeds 2 and 6 failed


def test_failures_and_a_failed_pilot_are_told_apart(tmp_path, monkeypatch):
    """`failures`: seeds up to max_seeds − 1 used up before N usable pairs; `failed`: fewer than 2
    usable pilot pairs (no sizing, no replacement)."""
    results = {
        "x": {s: 80.0 for s in range(8)},
        "a": {0: 80.5, 1: 79.0, 2: 81.2, 3: None, 4: None, 5: None, 6: 80.0, 7: None},
        "b": {0: None, 1: None, 2: 81.0},
    }
    record, rounds = decide_in_rounds(tmp_path, monkeypatch, results, {"pilot": 3, "max_seeds": 8, "precision": 0.5})
    a, b = record["comparisons"]
    assert a["n"] == 8 and a["stopped"] == "max_seeds"  # N capped: max_seeds wins
    results["a"] = {0: 80.5, 1: 80.0, 2: 80.3, 3: None, 4: None, 5: None, 6: None, 7: None}
    record, rounds = decide_in_rounds(tmp_path, monkeypatch, results, {"pilot": 3, "max_seeds": 8, "precision": 0.5})
    a, b = record["comparisons"]
    wanted = math.ceil((t.ppf(0.975, 2) * statistics.stdev([0.5, 0.0, 0.3]) / 0.5) ** 2)
    assert 3 < wanted < 8 and a["n"] == wanted
    assert (a["stopped"], a["usable"], a["replaced"]["variant"]) == ("failures", 3, [3, 4, 5, 6, 7])
    assert (b["pairs"], b["s0"], b["stopped"], b["usable"]) == (1, None, "failed", 1)
    assert not any(line == "b" for r in rounds for line, _ in r)  # a failed pilot runs no more seeds
    text = adaptive_summary(record)
    assert "stopped: failures" in text and "failed, replaced: variant seeds 3, 4, 5, 6, 7" in text
    assert "failure is unrelated to its outcome" in text


def adaptive_summary(record):
    from attnexp.sweep import adaptive

    return adaptive.summary(record)


def test_stopped_precision_holds_on_every_row_of_the_report(tmp_path):
    """Over the report's rows of a simulated adaptive sweep (run folders as make_run writes them, real
    decide rounds, failed runs among them): `stopped: precision` ⇒ the reported half-width ≤
    sweep.precision."""
    from omegaconf import OmegaConf
    from test_report import make_run

    from attnexp.sweep import adaptive

    rng = np.random.default_rng(7)
    lines, precision = {"x": 0.0, "a": 0.4, "b": -0.3, "c": 0.1, "d": 1.0}, 0.25
    spread = {"x": 0.0, "a": 0.3, "b": 0.5, "c": 0.2, "d": 0.9}
    failing = {("a", 1), ("b", 3), ("x", 5), ("c", 0), ("c", 6), ("d", 2)}
    root = tmp_path / "sweep"
    sweep = {"pilot": 4, "max_seeds": 12, "precision": precision, "metric": "val/acc1", "statistic": "final"}
    master = OmegaConf.create({"sweep": sweep | {"family": False, "baseline": {"seqpool": "x"}}})
    noise = rng.normal(size=(len(lines), 12))

    def job(line, s):
        value = 80.0 + lines[line] + spread[line] * noise[list(lines).index(line), s] + 2.0 * math.sin(s)
        make_run(root, [f"seqpool={line}"], s, [value], **({"status": "failed"} if (line, s) in failing else {}))
        return [f"seqpool={line}", f"seed={s}"], f"seqpool={line}/seed_{s}", OmegaConf.create({"seed": s})

    jobs = [job(line, s) for line in lines for s in range(sweep["pilot"])]
    bases = {(f"seqpool={k}",): ("seqpool=x",) for k in lines}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adaptive, "baselines", lambda jobs, spec: bases)
        while (decided := adaptive.decide(str(root), master, jobs))[1]:
            jobs += [job(o[0][8:], int(o[1][5:])) for o in decided[1]]
    record = decided[0]
    assert report.main([str(root), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "report.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["stopped"]]
    assert len(rows) == 4 and {r["stopped"] for r in rows} >= {"precision"}
    for row in rows:
        plan = next(c for c in record["comparisons"] if c["variant"] == row["group"])
        assert int(row["n_pairs"]) >= plan["usable"]
        if row["stopped"] == "precision" and row["no_spread_final"] == "false":
            assert float(row["d_final_high"]) - float(row["d_final"]) <= precision, row
    assert any(
        c["replaced"]["variant"] or c["replaced"]["baseline"]
        for c in record["comparisons"]
        if c["stopped"] == "precision"
    )


def test_a_baseline_is_found_however_its_values_are_spelled():
    """sweep.baseline's values arrive parsed (0.001, True), a job's overrides as typed (1e-3, true)."""
    from attnexp.sweep.compare import pick_baselines

    items = [{"optimizer.lr": "1e-3", "flag": "true"}, {"optimizer.lr": "3e-3", "flag": "true"}]
    assert pick_baselines(items, {"optimizer.lr": 0.001, "flag": True}, ["optimizer.lr"]) == [0, 0]
    assert pick_baselines(items, {"optimizer.lr": 0.002}, ["optimizer.lr"]) == [None, None]


@pytest.mark.parametrize(
    "val_split, metric, given, statistic, refused",
    [
        (0.0, "val/acc1", None, "final", None),  # val/* is the test split: no selection by default
        (0.0, "val/acc1", "best", "best", None),  # asked for: allowed, labelled optimistic
        (0.1, "val/acc1", None, "best", None),  # held out: test top-1 at the best validation epoch
        (0.1, "val/loss", None, "final", None),
        (0.1, "val/loss", "best", None, "best is test_acc1_at_best_val: top-1"),
        (0.0, "val/loss", "mean", "mean", None),
    ],
)
def test_the_default_statistic_selects_nothing_on_the_test_split(val_split, metric, given, statistic, refused):
    from omegaconf import OmegaConf

    from attnexp.errors import ConfigError
    from attnexp.sweep import adaptive

    jobs = [([], "", OmegaConf.create({"data": {"val_split": val_split}}))]
    master = OmegaConf.create({"sweep": {"statistic": given, "metric": metric, "pilot": 5, "max_seeds": 20,
                                         "precision": 0.5, "family": False}})  # fmt: skip
    if refused:
        with pytest.raises(ConfigError, match=refused):
            adaptive.settle(master, jobs, None)
        return
    adaptive.settle(master, jobs, None)
    assert master.sweep.statistic == statistic
    label = adaptive.settings(master, jobs)["statistic_label"]
    assert ("optimistic" in label) == (statistic == "best" and val_split == 0)
    assert ("test_acc1_at_best_val" in label) == (statistic == "best" and val_split > 0)
    # a resumed sweep keeps sweep.json's statistic, and refuses another one given
    master.sweep.statistic = None
    adaptive.settle(master, jobs, {"statistic": "mean"})
    assert master.sweep.statistic == "mean"
    master.sweep.statistic = "mean"  # on the command line of the resume
    with pytest.raises(ConfigError, match="sized on final .sweep.json.: a resumed sweep keeps it"):
        adaptive.settle(master, jobs, {"statistic": "final"})
    mixed = jobs + [([], "", OmegaConf.create({"data": {"val_split": 0.2 if val_split == 0 else 0.0}}))]
    with pytest.raises(ConfigError, match="one sweep sizes on one split"):
        adaptive.settle(master, mixed, None)


def test_a_variant_without_its_own_baseline_runs_its_pilot_only(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from attnexp.sweep import adaptive

    results = {"x": {s: 80.0 + s for s in range(3)}, "a": {s: 81.0 + 1.3 * s for s in range(3)}}
    bases = {("seqpool=x",): ("seqpool=x",), ("seqpool=a",): ("seqpool=x",), ("seqpool=b",): "no configuration of this sweep has seqpool=x,model=vit"}  # fmt: skip
    jobs = [
        ([f"seqpool={line}", f"seed={s}"], f"seqpool={line}/seed_{s}", OmegaConf.create({"seed": s}))
        for line in ("x", "a", "b")
        for s in range(3)
    ]
    monkeypatch.setattr(adaptive, "baselines", lambda jobs, spec: bases)
    monkeypatch.setattr(adaptive, "value", lambda d, sw, held: (results.get(d.parent.name[8:], {0: 1.0, 1: 2.0, 2: 3.0})[int(d.name[5:])], "", (1,)))  # fmt: skip
    sweep = {"pilot": 3, "max_seeds": 10, "precision": 0.5, "metric": "val/acc1", "statistic": "final", "family": True}
    master = OmegaConf.create({"sweep": sweep | {"baseline": {"seqpool": "x"}}})
    record, more = adaptive.decide(str(tmp_path), master, jobs)
    a, b = record["comparisons"]
    assert (b["stopped"], b["baseline"], b["n"]) == ("no baseline", None, 3)
    assert "seqpool=x,model=vit" in b["why"] and not any("seqpool=b" in o for o in map(str, more))
    # family-wise: k = 1 variant against x (b has no baseline), so N is the per-comparison N here
    assert a["k"] == 1 and a["n"] == min(10, max(3, math.ceil((t.ppf(0.975, 2) * a["s0"] / 0.5) ** 2)))
    assert "seqpool=b: no baseline (no configuration of this sweep has seqpool=x,model=vit)" in adaptive.summary(record)


def test_sizing_leaves_out_a_run_with_a_non_finite_metric(tmp_path):
    """A NaN at the first epoch or an inf at a later one: the run has no value to size on, and says why."""
    from omegaconf import OmegaConf
    from test_report import make_run

    from attnexp.sweep import adaptive

    sw = OmegaConf.create({"metric": "val/acc1", "statistic": "final"})
    first = make_run(tmp_path, ["seqpool=x"], 0, [math.nan, 70.0, 71.0])
    later = make_run(tmp_path, ["seqpool=x"], 1, [60.0, math.inf, 71.0])
    fine = make_run(tmp_path, ["seqpool=x"], 2, [60.0, 70.0, 71.5])
    assert adaptive.value(first, sw, False)[:2] == (None, "non-finite val/acc1 at epoch 1")
    assert adaptive.value(later, sw, False)[:2] == (None, "non-finite val/acc1 at epoch 2")
    assert adaptive.value(fine, sw, False) == (71.5, "", (1, 2, 3))
    sw.statistic = "mean"
    assert adaptive.value(fine, sw, False)[0] == pytest.approx((60.0 + 70.0 + 71.5) / 3)
