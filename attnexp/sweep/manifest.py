"""Sweeps that survive real clusters: the job list, job states, resuming, the end-of-sweep summary.

Hydra launches the jobs (basic, joblib, submitit). Before it does,
attnexp.sweep.launch plans every job and its folder and writes them to
`<sweep>/sweep.json` (here), so a job that never started — its pool was killed
before dispatching it — is still reported, and `sweep.resume=true` knows what
is left. No torch at import.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from attnexp.train.rundir import atomic_write_text, read_metrics

MANIFEST = "sweep.json"
DONE_STATES = ("done", "skipped", "reused")


@dataclass
class Job:
    overrides: list[str]  # this job's task overrides, as the sweeper hands them to the launcher
    dir: str  # its folder, relative to the sweep folder


# ---------------------------------------------------------------- the plan


def write_manifest(sweep_dir: str, jobs: list[Job], command: str) -> None:
    """The sweep's job list; a resumed sweep with new jobs keeps the old ones too (and its other keys)."""
    known = {j.dir: j for j in read_manifest(sweep_dir)}
    known.update({j.dir: j for j in jobs})
    _update(sweep_dir, command=command, jobs=[asdict(j) for j in known.values()])


def write_adaptive(sweep_dir: str, record: dict) -> None:
    """sweep.seeds=auto's record: its settings, and per variant s₀, N and why it stopped."""
    _update(sweep_dir, adaptive=record)


def _update(sweep_dir: str, **keys) -> None:
    atomic_write_text(Path(sweep_dir) / MANIFEST, json.dumps(_read(sweep_dir) | keys, indent=2) + "\n")


def _read(sweep_dir: str | os.PathLike) -> dict:
    try:
        return json.loads((Path(sweep_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def read_manifest(sweep_dir: str | os.PathLike) -> list[Job]:
    return [Job(**j) for j in _read(sweep_dir).get("jobs", [])]


def read_adaptive(sweep_dir: str | os.PathLike) -> dict | None:
    return _read(sweep_dir).get("adaptive")


# ---------------------------------------------------------------- job states


def job_state(run_dir: Path, since: float | None = None) -> tuple[str, str]:
    """(done | skipped | reused | failed | incomplete, reason) of one job folder.

    skipped: done before this invocation started (a resumed sweep left it alone).
    reused: a record of an identical run that had finished (attnexp/sweep/reuse.py).
    incomplete: never started, killed (still `running` on disk), or interrupted —
    what `sweep.resume=true` picks up.
    """
    try:
        return _job_state(run_dir, since)
    except OSError as e:  # e.g. a folder name the file system refused
        return "incomplete", f"unreadable folder ({e.strerror})"


def _job_state(run_dir: Path, since: float | None) -> tuple[str, str]:
    metrics = read_metrics(run_dir)
    status = metrics.get("status")
    if status is None and (run_dir / "summary.json").is_file():  # mode=summary jobs write no metrics.json
        return "done", ""
    if status == "done":
        stamp = (run_dir / "metrics.json").stat().st_mtime
        if since is not None and stamp < since:
            return "skipped", ""
        reused = metrics.get("reused_from")
        return ("reused", f"from {reused}") if reused else ("done", "")
    reason = str(metrics.get("reason") or "")
    if status in ("failed", "diverged"):
        return "failed", f"{status}: {reason}" if status == "diverged" else reason
    if status == "interrupted":
        return "incomplete", f"interrupted ({reason})" if reason else "interrupted"
    if status == "running":
        last = metrics.get("epochs")
        return "incomplete", f"stopped while running (killed?) after epoch {last or 0}"
    if not run_dir.is_dir():
        return "incomplete", "never started"
    return "incomplete", "started, no metrics.json yet"


def sweep_states(sweep_dir: str | os.PathLike, since: float | None = None) -> list[tuple[str, str, str]]:
    """(job folder, state, reason) for every job of the manifest (or every folder holding .hydra)."""
    root = Path(sweep_dir)
    dirs = [j.dir for j in read_manifest(root)]
    if not dirs:
        dirs = sorted(str(p.parent.relative_to(root)) for p in root.rglob(".hydra") if p.parent != root)
    return [(d, *job_state(root / d, since)) for d in dirs]


def format_summary(sweep_dir: str, states: list[tuple[str, str, str]]) -> str:
    kinds = ("done", "reused", "skipped", "failed", "incomplete")
    counts = {s: sum(1 for _, state, _ in states if state == s) for s in kinds}
    reused = [d for d, state, _ in states if state == "reused"]
    if reused:
        saved = sum(read_metrics(Path(sweep_dir) / d).get("wall_time_s") or 0 for d in reused)
    else:
        del counts["reused"]  # a sweep that reused nothing reads as before
    lines = [f"sweep {sweep_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" (of {len(states)} jobs)"]
    if reused:  # on SLURM a reused job still costs its allocation's start
        lines.append(f"  training time saved by reuse: {saved:.1f} s (the reused runs' wall_time_s)")
    width = max((len(d) for d, _, _ in states), default=0)
    for d, state, reason in states:
        lines.append(f"  {state:<10} {d:<{width}}  {reason}".rstrip())
    return "\n".join(lines)


def finish(sweep_dir: str, started: float, resume_command: str) -> int:
    """The sweep's exit code: 1 when any job is not done (failed or incomplete), printing how to resume."""
    states = sweep_states(sweep_dir, started)
    print(format_summary(sweep_dir, states), flush=True)
    left = [s for s in states if s[1] not in DONE_STATES]
    if not left:
        return 0
    print(f"attnexp: {len(left)} of {len(states)} jobs not done; to re-run them:\n  {resume_command}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------- inside a job


def requeued() -> bool:
    """A SLURM job started again after preemption or a time-out (submitit requeues the same overrides)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def use_platform_start_method() -> None:
    """Inside a joblib (loky) worker the default multiprocessing context is loky's, which cannot
    start DataLoader workers; put back the platform's own (fork on Linux) for this job's process."""
    if multiprocessing.get_start_method(allow_none=True) == "loky":
        multiprocessing.set_start_method(multiprocessing.get_all_start_methods()[0], force=True)
