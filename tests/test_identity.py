"""A run's identity (attnexp/train/identity.py): which edits change which part of the key."""

from __future__ import annotations

import shutil

import pytest
import torch

from attnexp.errors import ConfigError
from attnexp.train import identity as ident
from tests.conftest import REPO, TINY, attnexp_main, compose


def copy_of_attnexp(tmp_path):
    """A copy of the package where a test may edit modules (the key reads files, not imported code)."""
    shutil.copytree(REPO / "attnexp", tmp_path / "attnexp", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def code(cfg, root) -> str:
    return ident.digest(ident.code_part(cfg, root))


def test_editing_a_variants_module_changes_only_its_jobs_code_digest(tmp_path):
    root = copy_of_attnexp(tmp_path)
    softmax, sigmoid = compose(*TINY), compose(*TINY, "attention=sigmoid")
    before = {name: code(cfg, root) for name, cfg in (("softmax", softmax), ("sigmoid", sigmoid))}
    assert before == {"softmax": code(softmax, ident.ATTNEXP_ROOT), "sigmoid": code(sigmoid, ident.ATTNEXP_ROOT)}
    assert "attnexp.layers.sigmoid" in ident.code_part(sigmoid, root)
    assert "attnexp.layers.sigmoid" not in ident.code_part(softmax, root)

    with open(root / "attnexp" / "layers" / "sigmoid.py", "a") as f:
        f.write("\n# an edit\n")
    assert code(sigmoid, root) != before["sigmoid"]
    assert code(softmax, root) == before["softmax"]

    edited_sigmoid = code(sigmoid, root)
    with open(root / "attnexp" / "layers" / "value_maps.py", "a") as f:
        f.write("\n# an edit every job imports\n")
    assert code(softmax, root) != before["softmax"]
    assert code(sigmoid, root) != edited_sigmoid


def test_the_closure_follows_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg_x"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def lazy():\n    from pkg_x import never  # an entry point of the package\n")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (pkg / "b.py").write_text("from .c import g\n")
    (pkg / "c.py").write_text("g = 1\n")
    (pkg / "never.py").write_text("")
    found = ident.closure(["pkg_x.a"], tmp_path)
    # b through a function-level relative import, c through b's; the package's own lazy import not followed
    assert sorted(found) == ["pkg_x", "pkg_x.a", "pkg_x.b", "pkg_x.c"]


def test_another_torch_version_changes_only_the_versions_part(monkeypatch):
    cfg = compose(*TINY)
    before = ident.identity(cfg)
    monkeypatch.setattr(torch, "__version__", torch.__version__ + ".faked")
    after = ident.identity(cfg)
    changed = [p for p in before["parts"] if before["parts"][p] != after["parts"][p]]
    assert changed == ["versions"] and before["key"] != after["key"]


def test_bookkeeping_keys_leave_the_key_alone_and_the_seed_does_not():
    base = ident.identity(compose(*TINY))
    same = ident.identity(compose(*TINY, "data.num_workers=2", "trainer.enable_progress_bar=true", "sweep.resume=true"))
    assert same == base
    seeded = ident.identity(compose(*TINY, "seed=1"))
    assert [p for p in base["parts"] if base["parts"][p] != seeded["parts"][p]] == ["config"]


def test_cfg_key_prints_the_key_and_names_its_parts(tmp_path):
    shown = attnexp_main(*TINY, "--cfg", "key", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    expected = ident.identity(compose(*TINY))
    lines = shown.stdout.splitlines()
    assert lines[0] == f"key: {expected['key']}"
    assert lines[1:6] == [f"  {part}: {d}" for part, d in expected["parts"].items()]
    assert list(tmp_path.iterdir()) == []  # no run folder


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_sweep_reuse_takes_true_false_or_verify(value):
    for ok in ("true", "false", "verify"):
        compose(*TINY, f"sweep.reuse={ok}")
    with pytest.raises(ConfigError, match=f"sweep.reuse={value}: true, false or verify"):
        compose(*TINY, f"sweep.reuse={value}")


def test_a_job_has_the_same_key_with_or_without_hydras_node():
    from attnexp.config.compose import compose as compose_with_hydra
    from attnexp.config.compose import split_hydra

    full = compose_with_hydra([*TINY], return_hydra_config=True)
    assert ident.identity(full) == ident.identity(split_hydra(full)[0])
