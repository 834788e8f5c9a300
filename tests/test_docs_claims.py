"""Two documented commands no other test runs: `attnexp-bench --pack` (step 2 of `make gpu-check`) and `~logger` (no logger)."""

from __future__ import annotations

import json

import pytest
from conftest import attnexp_main


def test_bench_pack_times_a_packed_step_against_k_unpacked_ones(tmp_path, monkeypatch, capsys):
    from attnexp.sweep import estimate
    from attnexp.tools.bench import main

    packs, measure = [], estimate.measure

    def spy(cfg, pack=1, probe_batch=None):
        packs.append((pack, probe_batch))
        return measure(cfg, pack=pack, probe_batch=probe_batch)

    monkeypatch.setattr(estimate, "measure", spy)
    monkeypatch.setattr(estimate, "TIMED_STEPS", 1)  # a timing's size, not what this test checks
    out = tmp_path / "pack.json"
    assert main(["--models", "cct2", "--pack", "1,2", "--batch-size", "2", "--out", str(out)]) == 0
    assert packs == [(1, 2), (2, 2)]  # K=1 is the unpacked step itself; K=2 a PackedModule of two members
    one, two = json.loads(out.read_text())["pack"]
    assert (one["model"], one["k"], two["model"], two["k"]) == ("cct2", 1, "cct2", 2)
    assert one["packed_step_s"] == one["unpacked_steps_s"] > 0
    assert two["unpacked_steps_s"] == pytest.approx(2 * one["unpacked_steps_s"]) and two["packed_step_s"] > 0
    assert f"{two['unpacked_steps_s'] / two['packed_step_s']:.2f}×" in capsys.readouterr().out


def test_no_logger_trains_without_tensorboard_files(workdir):
    proc = attnexp_main("debug=tiny", "~logger", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = {p.parent for p in (workdir / "outputs").rglob("metrics.json")}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "done" and metrics["epochs"] == 1
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "tb").exists() and not list(run.rglob("events.out.tfevents.*"))
    assert f"run directory: {run}" in proc.stdout and "tensorboard --logdir" not in proc.stdout  # none to point at
