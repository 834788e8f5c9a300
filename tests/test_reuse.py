"""A sweep reuses the finished runs it would repeat (attnexp/sweep/reuse.py), through the real CLI.

One module-scoped series in one folder, as a researcher works: sweep A (seqpool=x,softmax × 2
seeds), the same sweep again (B), then seqpool=x,softmax_plus_x (C)."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, attnexp_main, compose

from attnexp.api import load_run
from attnexp.errors import StartupError
from attnexp.sweep import manifest
from attnexp.sweep.plan import quoted
from attnexp.tools import report
from attnexp.train.identity import code_part
from attnexp.train.rundir import read_metrics

SEEDS = "seed=0,1"


def sweep(cwd: Path, name: str, *args: str):
    result = attnexp_main("-m", *TINY, *args, SEEDS, f"hydra.sweep.dir=multirun/{name}", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "multirun" / name, result


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("reuse")
    a = sweep(cwd, "a", "seqpool=x,softmax")
    b = sweep(cwd, "b", "seqpool=x,softmax")
    c = sweep(cwd, "c", "seqpool=x,softmax_plus_x")
    return cwd, a, b, c


def jobs(sweep_dir: Path) -> dict[str, dict]:
    return {j.dir: read_metrics(sweep_dir / j.dir) for j in manifest.read_manifest(sweep_dir)}


def named(job: str) -> str:
    """A job folder by its seqpool choice and seed (the folder names hold every TINY override too)."""
    choice = next(part for part in job.split("/")[0].split(",") if part.startswith("seqpool="))
    return f"{choice}/{job.split('/')[-1]}"


def table(sweep_dir: Path, out: Path) -> list[dict]:
    assert report.main([str(sweep_dir), "--baseline", "seqpool=x", "--out", str(out)]) == 0
    with open(out / "report.csv") as f:
        return list(csv.DictReader(f))


def test_the_same_sweep_twice_trains_nothing_the_second_time(series, tmp_path):
    cwd, (a, first), (b, second), _ = series
    trained = jobs(a)
    assert len(trained) == 4 and all(m["status"] == "done" and "reused_from" not in m for m in trained.values())
    assert all(m["identity"]["key"] and m["finished_at"] for m in trained.values())
    assert "[reuse]" not in first.stdout

    records = jobs(b)
    assert sorted(records) == sorted(trained)  # the same jobs, in folders of the same names
    for job, m in records.items():
        assert m["reused_from"] == str((a / job).resolve()) and m["run_dir"] == str(b / job)
        assert m["identity"] == trained[job]["identity"] and m["history"] == trained[job]["history"]
        assert not (b / job / "checkpoints").exists() and (b / job / ".hydra" / "config.yaml").is_file()
        events = sorted(p.name for p in (b / job / "tb").iterdir())
        assert events == sorted(p.name for p in (a / job / "tb").iterdir()) and events
    saved = sum(m["wall_time_s"] for m in trained.values())
    assert ": 0 done, 4 reused, 0 skipped, 0 failed, 0 incomplete (of 4 jobs)" in second.stdout
    assert f"training time saved by reuse: {saved:.1f} s" in second.stdout
    assert second.stdout.count("[reuse]") == 4 and "[Epoch" not in second.stdout

    assert table(b, tmp_path / "b") == table(a, tmp_path / "a")
    # over both sweeps each run counts once, not once more for its record
    assert report.main([str(a), str(b), "--baseline", "seqpool=x", "--out", str(tmp_path / "ab")]) == 0
    with open(tmp_path / "ab" / "report.csv") as f:
        assert [r["n"] for r in csv.DictReader(f)] == ["2", "2"]


def test_a_new_variant_trains_only_itself_and_pairs_with_the_reused_baseline(series, tmp_path):
    cwd, (a, _), _, (c, third) = series
    runs = jobs(c)
    reused = {job: m["reused_from"] for job, m in runs.items() if m.get("reused_from")}
    assert sorted(named(job) for job in reused) == ["seqpool=x/seed_0", "seqpool=x/seed_1"]
    assert all(source == str((a / job).resolve()) for job, source in reused.items())  # A's, the earliest
    fresh = [job for job in runs if job not in reused]
    assert sorted(named(job) for job in fresh) == ["seqpool=softmax_plus_x/seed_0", "seqpool=softmax_plus_x/seed_1"]
    assert all((c / job / "checkpoints" / "last.ckpt").is_file() for job in fresh)
    assert third.stdout.count("[Epoch") == 2 and "2 done, 2 reused" in third.stdout
    rows = {r["group"]: r for r in table(c, tmp_path / "c")}
    assert rows["seqpool=softmax_plus_x"]["n_pairs"] == "2"


def test_load_run_and_ckpt_path_follow_the_reused_run(series, tmp_path):
    cwd, (a, _), (b, _), _ = series
    job = next(j for j in jobs(b) if named(j) == "seqpool=x/seed_1")
    record, original = load_run(b / job), load_run(a / job)
    assert record.run_dir == b / job and record.metrics["reused_from"]
    state, expected = record.model.state_dict(), original.model.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    scored = attnexp_main(
        *TINY, "mode=eval", f"ckpt_path={quoted(str(b / job / 'checkpoints' / 'best.ckpt'))}", cwd=cwd
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert f"test top-1: {original.metrics['test_acc1_at_best_val']:.2f}" in scored.stdout

    gone = tmp_path / "gone"  # a record whose run was deleted
    shutil.copytree(b / job, gone)
    missing = tmp_path / "deleted_run"
    (gone / "metrics.json").write_text(json.dumps(read_metrics(gone) | {"reused_from": str(missing)}))
    with pytest.raises(StartupError, match=f"^reused run missing: {missing}$"):
        load_run(gone)
    refused = attnexp_main("mode=eval", f"ckpt_path={gone / 'checkpoints' / 'best.ckpt'}", cwd=cwd)
    assert refused.returncode == 2 and refused.stderr.strip() == f"attnexp: error: reused run missing: {missing}"


@pytest.mark.numeric  # two trainings on this machine agree bit for bit
def test_verify_passes_on_an_unchanged_tree_and_catches_what_the_key_missed(tmp_path, monkeypatch):
    """pkg_a's callback (a `_target_`, so its module is in the key) reads pkg_b's factor through
    importlib, which `ast` cannot see: editing pkg_b leaves the key as it was, and verify finds it."""
    code = tmp_path / "code"
    for pkg in ("pkg_a", "pkg_b"):
        (code / pkg).mkdir(parents=True)
        (code / pkg / "__init__.py").write_text("")
    (code / "pkg_a" / "scale.py").write_text(
        "import importlib\n\nimport pytorch_lightning as pl\nimport torch\n\n\n"
        "class Scale(pl.Callback):\n"
        "    def on_train_start(self, trainer, module):\n"
        "        factor = importlib.import_module('pkg_b.factor').FACTOR\n"
        "        with torch.no_grad():\n"
        "            for p in module.parameters():\n"
        "                p.mul_(factor)\n"
    )
    factor = code / "pkg_b" / "factor.py"
    factor.write_text("FACTOR = 1.0\n")
    monkeypatch.syspath_prepend(str(code))
    cwd = tmp_path / "work"
    cwd.mkdir()
    args = ("-m", *TINY, "+callbacks.scale._target_=pkg_a.scale.Scale", "seed=0")

    def run(name: str, *extra: str):
        return attnexp_main(*args, *extra, f"hydra.sweep.dir=multirun/{name}", cwd=cwd)

    first = run("first")
    assert first.returncode == 0, first.stderr[-3000:]
    (job,) = jobs(cwd / "multirun" / "first")
    modules = code_part(compose(*TINY, "+callbacks.scale._target_=pkg_a.scale.Scale"))
    assert "pkg_a.scale" in modules and "pkg_b.factor" not in modules

    same = run("same", "sweep.reuse=verify")
    assert same.returncode == 0, same.stderr[-3000:]
    assert "[verify]" in same.stdout and "identical to" in same.stdout and "[Epoch" in same.stdout
    assert read_metrics(cwd / "multirun" / "same" / job)["status"] == "done"

    factor.write_text("FACTOR = 0.5\n")
    monkeypatch.delitem(sys.modules, "pkg_b.factor")  # the job imports the edited module, as a new process would
    edited = run("edited", "sweep.reuse=verify")
    assert edited.returncode == 1
    record = read_metrics(cwd / "multirun" / "edited" / job)
    assert record["status"] == "failed" and record["reason"].startswith("sweep.reuse=verify: differs from ")
    assert "history" in record["reason"] and "tensors of last.ckpt" in record["reason"]


def test_an_adaptive_sweep_after_a_fixed_one_reuses_its_seeds_and_says_how_many(series):
    cwd, (a, _), _, _ = series
    adaptive = attnexp_main(
        "-m", *TINY, "seqpool=x,softmax", "sweep.seeds=auto", "sweep.precision=0.5", "sweep.pilot=3",
        "sweep.max_seeds=3", "sweep.baseline={seqpool:x}", "hydra.sweep.dir=multirun/d", cwd=cwd,
    )  # fmt: skip
    assert adaptive.returncode == 0, adaptive.stderr[-3000:]
    d = cwd / "multirun" / "d"
    runs = jobs(d)  # the pilot's seeds 0-2: A has 0 and 1 of both configurations
    reused = sorted(named(j) for j, m in runs.items() if m.get("reused_from", "").startswith(str(a.resolve())))
    assert reused == ["seqpool=softmax/seed_0", "seqpool=softmax/seed_1", "seqpool=x/seed_0", "seqpool=x/seed_1"]
    assert len(runs) == 6 and adaptive.stdout.count("[Epoch") == 2  # only seed 2 of each trained
    counts = manifest.read_adaptive(d)["reused_seeds"]
    assert sorted((named(c + "/x"), n) for c, n in counts.items()) == [("seqpool=softmax/x", 2), ("seqpool=x/x", 2)]
    assert "reused seeds: " in adaptive.stdout


def test_the_dry_run_names_the_run_it_would_reuse_or_the_part_that_differs(series, monkeypatch):
    cwd, (a, _), _, _ = series
    args = ("-m", *TINY, "seqpool=x", "seed=0", "sweep.dry_run=true")
    same = attnexp_main(*args, cwd=cwd)
    assert same.returncode == 0, same.stderr[-3000:]
    (job,) = [j for j in jobs(a) if named(j) == "seqpool=x/seed_0"]
    assert f"    0  reuses {(a / job).resolve()}\n" in same.stdout
    monkeypatch.setattr(torch, "__version__", torch.__version__ + ".faked")
    other = attnexp_main(*args, cwd=cwd)
    assert f"    0  trains: {(a / job).resolve()} has its config but another versions\n" in other.stdout
    fresh = attnexp_main(*args[:-1], "seed=7", args[-1], cwd=cwd)
    assert "    0  trains: no finished run of its config\n" in fresh.stdout


def test_a_pack_trains_only_its_members_that_are_not_reusable(tmp_path):
    def packed(name: str, seeds: str):
        result = attnexp_main("-m", *TINY, "sweep.pack=seed", seeds, f"hydra.sweep.dir=multirun/{name}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return tmp_path / "multirun" / name, result

    first, _ = packed("first", "seed=0,1")
    again, result = packed("again", "seed=0,1")
    assert "[Epoch" not in result.stdout and ": 0 done, 2 reused" in result.stdout
    wider, result = packed("wider", "seed=0,1,2")
    runs = jobs(wider)
    reused = sorted(Path(j).name for j, m in runs.items() if m.get("reused_from"))
    assert reused == ["seed_0", "seed_1"] and ": 1 done, 2 reused" in result.stdout
    assert all(m["reused_from"].startswith(str(first.resolve())) for m in runs.values() if m.get("reused_from"))
    assert all((wider / j / ".hydra" / "config.yaml").is_file() for j in runs)
    trained = next(m for m in runs.values() if not m.get("reused_from"))
    assert trained["status"] == "done" and trained["packed_with"] == []


def test_jobs_differing_only_in_bookkeeping_keys_each_train_and_say_so(tmp_path):
    # their folders are named without bookkeeping keys, so the two jobs share one
    result = attnexp_main("-m", *TINY, "data.download=false,true", "hydra.sweep.dir=multirun/s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = jobs(tmp_path / "multirun" / "s").values()
    assert "reused_from" not in run and result.stdout.count("[Epoch") == 2
    assert result.stdout.count("[train] ") == 1 and "share a folder): trained again" in result.stdout
