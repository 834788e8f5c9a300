"""What a run leaves behind: metrics.json (atomically), provenance, the run-directory naming. No torch here."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from attnexp.errors import StartupError

STATUSES = ("running", "done", "failed", "diverged", "interrupted")
# whose versions a run records (what decides its numbers, and where it ran)
RECORDED_PACKAGES = "attnexp torch torchvision pytorch-lightning hydra-core omegaconf tensorboard timm".split()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file in the same folder, fsync, rename: a kill leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metrics(run_dir: str | os.PathLike, /) -> dict:
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def source(run_dir: str | os.PathLike) -> Path:
    """The folder that holds a run's checkpoints: its own, or the run it reused (StartupError when gone)."""
    reused = read_metrics(run_dir).get("reused_from")
    if not reused:
        return Path(run_dir)
    if not (Path(reused) / "metrics.json").is_file():
        raise StartupError(f"reused run missing: {reused}")
    return Path(reused)


class RunRecord:
    """The one writer of a run's metrics.json: each update merges fields into what the file holds
    and replaces it atomically (a kill leaves the previous version)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)

    def read(self) -> dict:
        return read_metrics(self.run_dir)

    def update(self, **fields) -> dict:
        metrics = self.read() | fields
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
        return metrics


def claim_dir(path: str) -> str:
    """Create and return path, or path_1, path_2, ...: the first that did not exist.

    mkdir is atomic, so two runs started in the same second never share a folder.
    """
    candidate, n = path, 0
    while True:
        try:
            os.makedirs(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{path}_{n}"


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def provenance(run_dir: str | os.PathLike) -> dict:
    """Command, git commit and dirtiness (diff saved beside), versions, host. Cheap enough for every run."""
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    diff = _git("diff", "HEAD") if commit else None
    if diff:
        atomic_write_text(Path(run_dir) / "git.diff", diff)
    versions = {}
    for pkg in RECORDED_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "command": os.environ.get("ATTNEXP_COMMAND") or " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "git_commit": commit,
        "git_dirty": bool(diff),
        "versions": {"python": platform.python_version(), **versions},
        "host": platform.node(),
    }


class _Tee:
    """A text stream that writes to the console stream and to a log file."""

    def __init__(self, stream, log):
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._log.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._log.flush()
        self._stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding...: the console's
        return getattr(self._stream, name)


@contextmanager
def console_log(run_dir: str | os.PathLike, /):
    """Copy what the job prints (stdout and stderr) to <run_dir>/console.log, appending on resume."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    saved = sys.stdout, sys.stderr
    with open(Path(run_dir) / "console.log", "a", buffering=1) as log:
        sys.stdout, sys.stderr = _Tee(saved[0], log), _Tee(saved[1], log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved


def read_curves(tb_dir: str | os.PathLike, tags: tuple[str, ...]) -> dict[str, dict[int, float]]:
    """Each tag's values by epoch (1-based), from every event file of a run's tb/ folder."""
    if not Path(tb_dir).is_dir():
        return {}
    from tbparse import SummaryReader

    df = SummaryReader(str(tb_dir), extra_columns={"wall_time"}).scalars
    if df.empty:
        return {}
    # a resumed run logs the steps after its checkpoint again: the latest write wins
    df = df.sort_values("wall_time").drop_duplicates(["tag", "step"], keep="last")
    epoch_at = df[df.tag == "epoch"].groupby("step").value.max()  # Lightning logs the 0-based epoch with every write
    curves = {}
    for tag in tags:
        rows = df[df.tag == tag].sort_values("step")
        if rows.empty:
            continue
        epochs = [int(epoch_at[s]) + 1 if s in epoch_at.index else i + 1 for i, s in enumerate(rows.step)]
        curves[tag] = dict(zip(epochs, rows.value.astype(float)))
    return curves
