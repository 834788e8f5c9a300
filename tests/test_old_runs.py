"""Run folders written before a refactor keep working: `tests/fixtures/run_cda3209` was written by
commit cda3209 (`attnexp debug=tiny model=cct2 model.dim=16 model.num_layers=1 model.num_heads=2
callbacks=attention_stats trainer.max_epochs=2`), its folder's path replaced by @RUN_DIR@.

Lightning restores a callback's state by its `state_key` (class name, and arguments for
ModelCheckpoint): a renamed callback class loses its state on resume with only a warning."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from conftest import attnexp_main

FIXTURE = Path(__file__).parent / "fixtures" / "run_cda3209"
PLACEHOLDER = "@RUN_DIR@"


def _placed(obj, run_dir: str):
    if isinstance(obj, str):
        return obj.replace(PLACEHOLDER, run_dir)
    if isinstance(obj, dict):
        return {_placed(k, run_dir): _placed(v, run_dir) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_placed(v, run_dir) for v in obj)
    return obj


def install(tmp_path: Path) -> Path:
    """The fixture as it lay on its machine: at `tmp_path/run`, its paths naming that folder."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        torch.save(_placed(torch.load(ckpt, weights_only=False), str(run)), ckpt)
    metrics = run / "metrics.json"
    metrics.write_text(metrics.read_text().replace(PLACEHOLDER, str(run)))
    return run


def test_fixture_has_no_absolute_paths():
    for path in FIXTURE.rglob("*"):
        if path.is_file() and path.suffix != ".ckpt" and "tfevents" not in path.name:
            assert "/tmp/" not in path.read_text() and "/work/" not in path.read_text(), path


def test_load_run_and_its_saved_targets(tmp_path):
    from hydra.utils import get_class

    import attnexp

    run = attnexp.load_run(install(tmp_path))
    assert run.metrics["status"] == "done" and [h["epoch"] for h in run.metrics["history"]] == [1, 2]
    assert run.model is not None and sum(p.numel() for p in run.model.parameters()) == run.metrics["params"]
    saved = torch.load(run.run_dir / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, saved[f"model.{name}"]), name
    # every _target_ the saved config names still imports (callbacks=attention_stats included)
    targets = []

    def walk(node):
        if isinstance(node, dict):
            targets.extend([node["_target_"]] if "_target_" in node else [])
            for value in node.values():
                walk(value)

    from omegaconf import OmegaConf

    walk(OmegaConf.to_container(run.config))
    assert "attnexp.callbacks.AttentionStats" in targets
    for target in targets:
        assert get_class(target) is not None, target


def test_eval_and_resume_keep_the_history(tmp_path):
    run = install(tmp_path)
    scored = attnexp_main("mode=eval", f"ckpt_path={run}/checkpoints/best.ckpt", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    evaluated = [json.loads(p.read_text()) for p in (tmp_path / "outputs").rglob("metrics.json")]
    assert len(evaluated) == 1 and evaluated[0]["mode"] == "eval" and 0 <= evaluated[0]["test_acc1"] <= 100

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = attnexp_main(f"ckpt_path={run}/checkpoints/last.ckpt", "trainer.max_epochs=3", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    # Lightning's words for a callback state it skipped ("Please add the following callbacks") or
    # a ModelCheckpoint whose folder moved ("won't be reloaded")
    lost = [str(w.message) for w in caught if "callbacks" in str(w.message) or "reloaded" in str(w.message)]
    assert not lost, lost
    assert "Please add the following callbacks" not in resumed.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "done"
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]  # the epochs before the resume are kept
    assert "[Epoch 3]" in resumed.stdout and "[Epoch 1]" not in resumed.stdout  # resumed, not retrained
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    # best.ckpt holds the best epoch (the fixture's, or epoch 3's if it beat them): the best so far
    # is the restored history's, not a ModelCheckpoint state's
    saved = best["callbacks"]["RunRecorder"]["history"]
    assert (
        saved[-1]["val_acc1"] == max(h["val_acc1"] for h in metrics["history"])
        and saved == metrics["history"][: len(saved)]
    )
