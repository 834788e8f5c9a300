"""Shared fixtures: composed configs, the CLI in a subprocess, real MNIST images (tests/data)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
# facts of the official Compact-Transformers code (tests/reference/README.md names the commit)
REFERENCE = TESTS / "reference" / "official_cct_state_dicts.json"
TEXT_REFERENCE = TESTS / "reference" / "official_text_cct.json"
MNIST_T10K = TESTS / "data" / "mnist-t10k"  # the official MNIST test set (tests/data/README.md)
ATTNEXP = Path(sys.executable).parent / "attnexp"

# CPU tests: few threads, no GPU even if one is present
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# no test reaches the network: timm / Hugging Face weights come from local files or fail fast
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under CI=true (CI sets it; .ci/run too) a skip is a failure, except a test marked `gpu` (CUDA-only):
# everything the tests read lives in the repository and CI has every dev extra, so a skip there is a
# test that silently did not run. A user's `make test` without a dev extra keeps skipping politely.
STRICT_SKIPS = os.environ.get("CI") == "true"


def _fail_skip(report, node) -> None:
    if STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail") and node.get_closest_marker("gpu") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (only `gpu` tests may skip there): {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_skip(report, item)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield  # a module-level skip (importorskip): a collection error under CI
    _fail_skip(report, collector)
    return report


def compose(*overrides: str):
    """The config `attnexp <overrides>` would run with (types and cross-object rules checked)."""
    from attnexp.api import compose_config

    return compose_config(list(overrides))


def run_in(folder, *overrides: str) -> dict:
    """attnexp.train.modes.run_mode of `overrides` with its files in `folder` (what a Hydra job does)."""
    from attnexp.api import compose_config
    from attnexp.train.modes import run_mode

    return run_mode(compose_config([*overrides, f"paths.output_dir={folder}"]))


def check(*overrides: str):
    """What the CLI checks before a job starts (every object built on the meta device)."""
    from attnexp.api import check as check_config

    return check_config(list(overrides))


# small and quick: fake data, CPU, a couple of batches
TINY = [
    "data=fake",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "data.train_size=64",
    "data.test_size=32",
]


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `attnexp` console script; outputs land under cwd."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([str(ATTNEXP), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def attnexp_main(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`attnexp <args>` in this process (attnexp.cli.main): what run_cli checks, without paying
    the torch + Lightning import of a new process (tens of seconds on a slow 2-core machine)."""
    import contextlib
    import io

    import torch

    from attnexp.cli import main

    out, err, here, threads = io.StringIO(), io.StringIO(), os.getcwd(), torch.get_num_threads()
    code = 0
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)  # compute.num_threads applies to the whole process
    return subprocess.CompletedProcess(["attnexp", *args], code, out.getvalue(), err.getvalue())


def run_dirs(root: Path) -> list[Path]:
    """Every run folder (one holding metrics.json or .hydra) below root."""
    return sorted({p.parent for p in root.rglob("metrics.json")} | {p.parent for p in root.rglob(".hydra")})


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """The official MNIST test set laid out as torchvision expects: its first 8,000 images
    as the train files and the last 2,000 as the test files, under <root>/MNIST/raw/."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = gzip.decompress((MNIST_T10K / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((MNIST_T10K / "t10k-labels-idx1-ubyte.gz").read_bytes())
    n_train = 8000

    def idx(header: bytes, body: bytes, count: int, item: int, start: int) -> bytes:
        # IDX header: magic, count, then dims; rewrite the count
        return header[:4] + count.to_bytes(4, "big") + header[8:] + body[start * item : (start + count) * item]

    img_h, lab_h = images[:16], labels[:8]
    img_b, lab_b = images[16:], labels[8:]
    (raw / "train-images-idx3-ubyte").write_bytes(idx(img_h, img_b, n_train, 784, 0))
    (raw / "train-labels-idx1-ubyte").write_bytes(idx(lab_h, lab_b, n_train, 1, 0))
    (raw / "t10k-images-idx3-ubyte").write_bytes(idx(img_h, img_b, 10000 - n_train, 784, n_train))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx(lab_h, lab_b, 10000 - n_train, 1, n_train))
    return root


@pytest.fixture
def workdir(tmp_path) -> Path:
    """An empty folder to run the CLI in (its outputs/ and multirun/ land here)."""
    return tmp_path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
