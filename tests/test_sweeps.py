"""Sweeps through the real CLI: basic and joblib launchers, a failing job, resume, dry run, submitit.

Every CLI process pays ~5 s of imports, so each test runs one small sweep (TINY:
fake data, one short epoch) and checks as much as it can on it.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TINY, attnexp_main
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnexp.config.compose import compose
from attnexp.sweep import manifest
from attnexp.sweep.plan import plan
from attnexp.tools import report

BASE = [o for o in TINY if not o.startswith("trainer.max_epochs")]  # tests that set the epochs themselves
REPORT = Path(sys.executable).parent / "attnexp-report"


def multirun(sweep_dir: Path, *args: str, cwd: Path):
    return attnexp_main("-m", *args, f"hydra.sweep.dir={sweep_dir}", cwd=cwd)


def job_dirs(sweep_dir: Path) -> list[str]:
    return sorted(str(p.parent.parent.relative_to(sweep_dir)) for p in sweep_dir.rglob(".hydra/config.yaml"))


def logged(run_dir: Path, tag: str = "val/acc1") -> list[float]:
    """A tag's values in step order, read with TensorBoard's own reader (the report uses tbparse)."""
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    by_step = {e.step: e.value for e in sorted(events.Scalars(tag), key=lambda e: e.wall_time)}
    return [by_step[s] for s in sorted(by_step)]


def check_report(sweep_dir: Path, out: Path) -> dict:
    """Run the report on a 2 seqpool × 2 seed sweep; its means and stds must match the event files."""
    assert report.main([str(sweep_dir), "--baseline", "seqpool=x", "--out", str(out)]) == 0
    with open(out / "report.csv") as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"seqpool=x", "seqpool=softmax"}
    for seqpool in ("x", "softmax"):
        runs = sorted(sweep_dir.glob(f"*seqpool={seqpool},*/seed_*"))
        assert [r.name for r in runs] == ["seed_0", "seed_1"]
        best = [max(logged(r)) for r in runs]
        final = [logged(r)[-1] for r in runs]
        row = rows[f"seqpool={seqpool}"]
        assert int(row["n"]) == 2
        assert float(row["best_mean"]) == pytest.approx(statistics.mean(best))
        assert float(row["best_std"]) == pytest.approx(statistics.stdev(best))
        assert float(row["final_mean"]) == pytest.approx(statistics.mean(final))
        assert float(row["final_std"]) == pytest.approx(statistics.stdev(final))
    assert "| seqpool=x |" in (out / "report.md").read_text()
    png = (out / "curves.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000
    return rows


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory) -> tuple[Path, object]:
    cwd = tmp_path_factory.mktemp("basic")
    sweep_dir = cwd / "sweep"
    result = multirun(sweep_dir, *TINY, "seqpool=x,softmax", "seed=0,1", cwd=cwd)
    return sweep_dir, result


def test_basic_launcher_sweep_and_report(basic_sweep, tmp_path):
    sweep_dir, result = basic_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sweep {sweep_dir}: 4 done, 0 skipped, 0 failed, 0 incomplete (of 4 jobs)" in result.stdout
    # the planned folders (sweep.json) are the ones Hydra made: named by the overrides, then the seed
    planned = sorted(j.dir for j in manifest.read_manifest(sweep_dir))
    assert planned == job_dirs(sweep_dir) and len(planned) == 4
    for d in planned:
        name, seed = d.split("/")
        assert seed in ("seed_0", "seed_1") and "seed=" not in name and "hydra" not in name and "sweep." not in name
        assert ("seqpool=x," in name) != ("seqpool=softmax," in name)
    check_report(sweep_dir, tmp_path / "report")
    # the console script itself
    out = run_cli_report(str(sweep_dir), "--anchors", "seed000", "--out", str(tmp_path / "cli"))
    assert out.returncode == 0, out.stderr
    # fake data for one epoch is not the published setting: the number is left out, with the reason
    assert "88.34 / 88.34 (seed 000) not beside" in out.stdout and (tmp_path / "cli" / "report.md").is_file()


def run_cli_report(*args: str):
    import subprocess

    return subprocess.run([str(REPORT), *args], capture_output=True, text=True, timeout=120)


def test_joblib_launcher_with_dataloader_workers(tmp_path):
    # loky workers would hand DataLoader workers loky's own start method, which cannot start them
    sweep_dir = tmp_path / "sweep"
    result = multirun(
        sweep_dir,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *TINY,
        "data.num_workers=1",
        "seqpool=x,softmax",
        "seed=0,1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 done, 0 skipped, 0 failed, 0 incomplete" in result.stdout
    assert sorted(j.dir for j in manifest.read_manifest(sweep_dir)) == job_dirs(sweep_dir)
    check_report(sweep_dir, tmp_path / "report")


def test_a_failing_job_does_not_stop_the_others(tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")  # exists, so start-up checks pass; loading fails in the job
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, *TINY, f"model.pretrained=null,{bad}", cwd=tmp_path)
    assert result.returncode == 1  # a job not done fails the sweep
    assert "1 done, 0 skipped, 1 failed, 0 incomplete (of 2 jobs)" in result.stdout
    assert "sweep.resume=true" in result.stderr  # how to re-run what is left
    states = {d: s for d, s, _ in manifest.sweep_states(sweep_dir)}
    failed = next(d for d in states if "corrupt.pth" in d)
    assert states[failed] == "failed" and list(states.values()).count("done") == 1
    reason = json.loads((sweep_dir / failed / "metrics.json").read_text())["reason"]
    assert "model.pretrained" in reason
    out = tmp_path / "report"
    assert report.main([str(sweep_dir), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    line = next(line for line in text.splitlines() if "corrupt.pth" in line and line.startswith("|"))
    assert "| failed |" in line and "model.pretrained" in line
    assert "| 1 |" in text  # the finished job is the one in the statistics


def test_resume_skips_done_jobs_and_continues_the_others_from_last_ckpt(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = [*BASE, "trainer.max_epochs=2", "seed=0,1"]
    _, jobs, _ = plan(args + [f"hydra.sweep.dir={sweep_dir}"])
    done, unfinished = (sweep_dir / folder for _, folder, _ in jobs)
    # seed 0: finished earlier
    done.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({"status": "done", "best_acc1": 42.0}))
    before = (done / "metrics.json").read_text()
    # seed 1: killed after its first epoch (a real 1-epoch run in the job's folder, marked running)
    run_dir = f"hydra.run.dir='{unfinished}'"  # quoted: the folder name holds = and ,
    first = attnexp_main(*BASE, "trainer.max_epochs=1", "seed=1", run_dir, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((unfinished / "metrics.json").read_text())
    epoch1 = metrics["history"][0]
    (unfinished / "metrics.json").write_text(json.dumps(metrics | {"status": "running"}))
    assert (unfinished / "checkpoints" / "last.ckpt").is_file()

    result = multirun(sweep_dir, *args, "sweep.resume=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"[skip] {done}: done" in result.stdout
    assert f"[resume] {unfinished} from {unfinished / 'checkpoints' / 'last.ckpt'}" in result.stdout
    assert [line.split(" Top-1")[0] for line in result.stdout.splitlines() if line.startswith("[Epoch")] == [
        "[Epoch 2]"
    ]
    assert "1 done, 1 skipped, 0 failed, 0 incomplete (of 2 jobs)" in result.stdout
    assert (done / "metrics.json").read_text() == before and not (done / "tb").exists()
    resumed = json.loads((unfinished / "metrics.json").read_text())
    assert resumed["status"] == "done" and resumed["epochs"] == 2
    assert [h["epoch"] for h in resumed["history"]] == [1, 2] and resumed["history"][0] == epoch1
    assert len(logged(unfinished)) == 2  # one val/acc1 per epoch in TensorBoard, across both processes


def test_dry_run_lists_jobs_folders_and_times_without_running(basic_sweep, tmp_path):
    result = attnexp_main("-m", *TINY, "seqpool=x,softmax", "sweep.dry_run=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "multirun").exists()  # nothing written
    rows = [line.split() for line in result.stdout.splitlines() if "/seed_0" in line]
    assert len(rows) == 2 and "seqpool=x," in rows[0][1] and "seqpool=softmax," in rows[1][1]
    # params agree with what the real run of the same job recorded; a time per job is given
    sweep_dir, _ = basic_sweep
    ran = next(sweep_dir.glob("*seqpool=x,*/seed_0"))
    assert int(rows[0][2].replace(",", "")) == json.loads((ran / "metrics.json").read_text())["params"]
    assert rows[0][-1].endswith(("s", "min")) and "total ≈" in result.stdout


def test_summary_states_and_exit_code(tmp_path, capsys):
    root = tmp_path / "sweep"
    cases = {  # folder → (metrics.json body or None, expected state)
        "a/seed_0": ({"status": "done"}, "skipped"),
        "a/seed_1": ({"status": "done"}, "done"),
        "b/seed_0": ({"status": "failed", "reason": "CheckpointError: bad"}, "failed"),
        "b/seed_1": ({"status": "diverged", "reason": "non-finite loss at step 3"}, "failed"),
        "c/seed_0": ({"status": "interrupted", "reason": "signal 15"}, "incomplete"),
        "c/seed_1": ({"status": "running", "epochs": 4}, "incomplete"),
        "d/seed_0": (None, "incomplete"),  # never started: no folder
    }
    since = time.time()
    for d, (body, _) in cases.items():
        if body is not None:
            (root / d).mkdir(parents=True)
            (root / d / "metrics.json").write_text(json.dumps(body))
    os.utime(root / "a/seed_0/metrics.json", (since - 60, since - 60))  # done before this invocation
    (root / "e/seed_0").mkdir(parents=True)
    (root / "e/seed_0/summary.json").write_text("{}")  # a mode=summary job
    jobs = [manifest.Job([f"x={d}"], d) for d in [*cases, "e/seed_0"]]
    manifest.write_manifest(str(root), jobs, command="attnexp -m ...")
    states = {d: (s, why) for d, s, why in manifest.sweep_states(root, since)}
    assert {d: s for d, (s, _) in states.items()} == {d: s for d, (_, s) in cases.items()} | {"e/seed_0": "done"}
    assert states["b/seed_1"][1] == "diverged: non-finite loss at step 3"
    assert "after epoch 4" in states["c/seed_1"][1] and states["d/seed_0"][1] == "never started"
    assert manifest.finish(str(root), since, "attnexp -m ... sweep.resume=true") == 1
    out = capsys.readouterr()
    assert "2 done, 1 skipped, 2 failed, 3 incomplete (of 8 jobs)" in out.out
    assert "5 of 8 jobs not done" in out.err and "sweep.resume=true" in out.err


def test_requeued_slurm_job_resumes(monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert not manifest.requeued()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert not manifest.requeued()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert manifest.requeued()


def test_launcher_configs_compose(monkeypatch):
    monkeypatch.setenv("ATTNEXP_SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("ATTNEXP_SLURM_GPUS_PER_NODE", "4")
    monkeypatch.setenv("ATTNEXP_SLURM_ARRAY_PARALLELISM", "6")
    cfg = compose(
        ["hydra/launcher=slurm", "hydra.sweep.dir=/scratch/s", "hydra.launcher.timeout_min=30"],
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.array_parallelism) == ("gpu-long", 4, 6)
    assert launcher.timeout_min == 30 and launcher.max_num_timeout > 0  # requeue on time-out: jobs resume
    assert launcher.submitit_folder == "/scratch/s/.submitit/%j"
    assert launcher.account is None  # unset in the environment: sbatch's default
    for name, target in [
        ("submitit_local", "LocalLauncher"),
        ("submitit_slurm", "SlurmLauncher"),
        ("joblib", "JoblibLauncher"),
    ]:
        assert compose([f"hydra/launcher={name}"], return_hydra_config=True).hydra.launcher._target_.endswith(target)


@pytest.mark.slow
def test_submitit_local_runs_a_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 done, 0 skipped, 0 failed, 0 incomplete (of 1 jobs)" in result.stdout
    (job,) = manifest.read_manifest(sweep_dir)
    assert json.loads((sweep_dir / job.dir / "metrics.json").read_text())["status"] == "done"
    assert any((sweep_dir / ".submitit").iterdir())  # submitit's own logs stay inside the sweep


def test_repo_ships_the_report_script():
    assert REPORT.is_file(), "run `pip install -e .` so the attnexp-report console script exists"
    assert 'attnexp-report = "attnexp.tools.report:main"' in (REPO / "pyproject.toml").read_text()


def test_long_job_names_fit_the_file_system():
    from attnexp.config.compose import NAME_MAX
    from attnexp.config.compose import job_dir as _job_dir

    a, b = _job_dir("model.pretrained=/x/" + "a" * 300), _job_dir("model.pretrained=/x/" + "a" * 299 + "b")
    assert len(a.encode()) <= NAME_MAX and len(b.encode()) <= NAME_MAX and a != b
    assert a.startswith("model.pretrained=_x_aaa") and "/" not in a
    assert _job_dir("seqpool=x,data=fake") == "seqpool=x,data=fake"  # short names stay as Hydra made them


def test_one_bookkeeping_list_names_the_job_folders_and_groups_the_report(tmp_path):
    """data.root, threads, progress bars, the seed... never tell two variants apart: neither in a
    job's folder name nor in the report's grouping (attnexp/config/compose.py BOOKKEEPING_KEYS)."""
    from attnexp.config.compose import BOOKKEEPING_KEYS

    noise = [
        "data.root=/data/cifar",
        "compute.num_threads=1",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
    ]
    _, jobs, _ = plan(["debug=tiny", "seqpool=x,softmax", *noise, f"hydra.sweep.dir={tmp_path}"])
    assert sorted(folder for _, folder, _ in jobs) == [
        "debug=tiny,seqpool=softmax/seed_0",
        "debug=tiny,seqpool=x/seed_0",
    ]
    for overrides, folder, _ in jobs:
        assert report.group_key(overrides) == (("debug", "tiny"), ("seqpool", folder.split("seqpool=")[1][:-7]))
    assert {"data.root", "compute.num_threads", "seed"} <= set(BOOKKEEPING_KEYS)


def hparam_columns(run_dir: Path) -> list[str]:
    """The HParams table's columns of a run, in order, from its event file."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/experiment"]
    return [info.name for info in HParamsPluginData.FromString(content).experiment.hparam_infos]


def test_the_hparams_of_a_sweep_show_its_swept_choices_first(basic_sweep):
    sweep_dir, result = basic_sweep
    assert result.returncode == 0, result.stderr[-3000:]
    for run in sorted(sweep_dir.glob("*/seed_*")):
        columns = hparam_columns(run)
        assert columns[0] == "choice/seqpool", columns  # what the sweep varies comes first
        assert not any(c.endswith(("_target_", "_partial_")) or c in ("seed", "data.root") for c in columns), columns
        assert {"choice/model", "choice/attention", "params", "threads"} <= set(columns)


def test_a_dry_run_plans_on_a_machine_without_the_dataset(tmp_path, monkeypatch, capsys):
    from attnexp.cli import main

    monkeypatch.chdir(tmp_path)
    main(["-m", "model=cct2", "seqpool=x,softmax", "data.root=nowhere", "sweep.dry_run=true"])
    out = capsys.readouterr()
    assert "(2 jobs; nothing is run or written)" in out.out and "est. time" in out.out
    warning = [line for line in out.err.splitlines() if line.startswith("attnexp: warning:")]
    assert len(warning) == 1 and "cifar-10-batches-py" in warning[0]  # said once, not per job
    assert not (tmp_path / "multirun").exists()


def test_each_job_is_composed_once_in_the_cli_process(tmp_path, monkeypatch, capsys):
    """A single run: one composition. A sweep: one for the sweep itself, then one per job (the plan
    the checks, the folders and the dry run all read); launchers compose again in their workers."""
    from attnexp.cli import main
    from attnexp.sweep import launch, plan

    calls = []
    real = launch.compose
    for module in (launch, plan):  # a run is composed in launch, a sweep's jobs in plan
        monkeypatch.setattr(module, "compose", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    monkeypatch.chdir(tmp_path)
    main(["-m", "debug=tiny", "seqpool=x,softmax", "seed=0,1", "sweep.dry_run=true"])
    assert "(4 jobs; nothing is run or written)" in capsys.readouterr().out
    assert len(calls) == 1 + 4
    calls.clear()
    main(["debug=tiny", "mode=summary"])
    assert len(calls) == 1
    from hydra.core.hydra_config import HydraConfig

    assert not HydraConfig.initialized()  # no job's config is left behind for the next caller


def test_hydra_is_driven_through_its_public_api_only():
    sources = {p: p.read_text() for p in (REPO / "attnexp").rglob("*.py")}
    assert not [p for p, text in sources.items() if "_internal" in text]
    assert "sys.argv =" not in sources[REPO / "attnexp" / "cli.py"]
