"""The `attnexp` console script.

Composes and checks the job before handing over to Hydra, so a bad override ends
with one line (`attnexp: error: key=value: reason`), exit code 2, no traceback
and no run directory: types, unknown keys and choices without importing torch
(the schemas), values by building every object on the meta device (the
preflight). Then it names the run (or sweep) folder and lets Hydra run the job(s).
"""

from __future__ import annotations

import os
import shlex
import sys
import traceback
from datetime import datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from attnexp.config.compose import compose, group_options, groups, split_hydra
from attnexp.config.validate import validate
from attnexp.errors import ConfigError, StartupError
from attnexp.rundir import read_metrics, single_run_dir, sweep_dir, update_metrics

PASS_THROUGH = {
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--version",
    "--resolve",
    "-p",
    "--package",
}
EXIT_CONFIG = 2


NAME_MAX = 255  # bytes in one path component (Linux and macOS file systems)


def _job_dir(override_dirname: str) -> str:
    """A job's folder name from its overrides; path separators in values must not nest folders.
    A name too long for the file system keeps its start and ends in a hash of the whole."""
    name = override_dirname.replace("/", "_").replace(os.sep, "_") or "default"
    if len(name.encode()) <= NAME_MAX:
        return name
    import hashlib

    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return name.encode()[: NAME_MAX - len(digest) - 1].decode(errors="ignore") + "~" + digest


def _groups_help() -> str:
    """`--help`'s group list: conf/'s folders (Hydra's own list would show the schema/ tree too)."""
    return "\n".join(f"{group}: {', '.join(group_options(group))}" for group in groups())


OmegaConf.register_new_resolver("attnexp_job_dir", _job_dir, replace=True)
OmegaConf.register_new_resolver("attnexp_groups", _groups_help, replace=True)


def fail(message: str, code: int = EXIT_CONFIG) -> None:
    print(f"attnexp: error: {message}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------- checks


def parse_overrides(overrides: list[str]) -> list:
    """Hydra's parse of each override; a syntax error names the override it is in."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, parsed = OverridesParser.create(), []
    for text in overrides:
        try:
            parsed += parser.parse_overrides([text])
        except Exception as exc:
            reason = str(exc).splitlines()[0]
            raise ConfigError(text, ..., f"cannot parse this override ({reason})") from None
    return parsed


def first_job(parsed: list) -> list[str]:
    """The overrides of a sweep's first job: each sweep override at its first value."""
    return [
        f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else o.input_line
        for o in parsed
    ]


def check_job(cfg: DictConfig) -> DictConfig:
    """Everything that can be known before a job starts: the cross-object rules (torch-free),
    then every object the job will use, built on the meta device (attnexp.preflight).
    Returns the job's config without the hydra node."""
    body, choices = split_hydra(cfg)
    validate(body, choices)
    from attnexp.preflight import check_built  # torch: only once the torch-free checks passed

    check_built(body, choices)
    return body


def preflight(overrides: list[str], multirun: bool) -> DictConfig:
    """Parse every override and check the (first) job; return its config with the hydra node.
    A sweep's other jobs are checked once they are planned (run_sweep), before any job runs."""
    parsed = parse_overrides(overrides)
    first = compose(first_job(parsed) if multirun else overrides, return_hydra_config=True)
    check_job(first)
    return first


# ---------------------------------------------------------------- folders


def _has(overrides: list[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def resume_overrides(ckpt_path: str) -> tuple[str, list[str]]:
    """The run folder of a checkpoint and the overrides that made it (from its .hydra/overrides.yaml)."""
    run_dir = Path(ckpt_path).resolve().parent.parent
    saved = run_dir / ".hydra" / "overrides.yaml"
    original = list(OmegaConf.load(saved)) if saved.is_file() else []
    return str(run_dir), [o for o in original if not _has([o], "ckpt_path") and not o.startswith("hydra.")]


def plan_folders(overrides: list[str], multirun: bool) -> list[str]:
    """A checkpoint's run lends its own overrides (the command's win): resuming continues in its
    folder; evaluating scores it on the data it was trained with, in a folder of its own."""
    ckpt = next((o.split("=", 1)[1] for o in overrides if _has([o], "ckpt_path")), None)
    mode = next((o.split("=", 1)[1] for o in overrides if _has([o], "mode")), "train")
    if multirun or not ckpt or ckpt == "null" or mode not in ("train", "eval"):
        return overrides
    run_dir, original = resume_overrides(ckpt)
    keep = [o for o in original if not _has(overrides, o.lstrip("+~").split("=", 1)[0])]
    if mode == "eval":
        return keep + overrides
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return keep + overrides + [f"hydra.run.dir={run_dir}", f"hydra.output_subdir=.hydra/resume_{stamp}"]


def swept_keys(overrides: list[str], cfg: DictConfig) -> list[str]:
    """The keys a sweep varies: its comma/range overrides, then a preset's hydra.sweeper.params."""
    keys = [o.get_key_element() for o in parse_overrides(overrides) if o.is_sweep_override()]
    preset = cfg.hydra.sweeper.get("params") or {}
    return keys + [k for k in preset if k not in keys]


def name_folders(overrides: list[str], cfg: DictConfig, multirun: bool) -> list[str]:
    choices = cfg.hydra.runtime.choices
    if multirun:  # every job records what the sweep varies (its HParams show those first)
        overrides = overrides + [f"sweep.swept=[{','.join(swept_keys(overrides, cfg))}]"]
    if multirun and not _has(overrides, "hydra.sweep.dir"):
        name = choices.get("experiment") or "sweep"
        return overrides + [f"hydra.sweep.dir={sweep_dir('multirun', name)}"]
    if not multirun and not _has(overrides, "hydra.run.dir"):
        # <model>_<attention>, plus the SeqPool line when it is not the official one
        attention = choices.attention + (f"_seqpool-{choices.seqpool}" if choices.get("seqpool", "x") != "x" else "")
        return overrides + [f"hydra.run.dir={single_run_dir('outputs', choices.model, attention)}"]
    return overrides


# ---------------------------------------------------------------- the Hydra task


@hydra.main(config_path="pkg://attnexp.conf", config_name="config", version_base="1.3")
def task(cfg: DictConfig):
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        from attnexp import sweep

        sweep.use_platform_start_method()  # joblib's loky workers: DataLoader workers need it
        if cfg.sweep.dry_run:  # main() answers dry runs before Hydra; never train in one
            return None
        if cfg.sweep.resume or sweep.requeued():
            status = read_metrics(run_dir).get("status")
            if status == "done":
                print(f"[skip] {run_dir}: done")
                return None
            last = Path(run_dir) / "checkpoints" / "last.ckpt"
            if last.is_file():
                cfg.ckpt_path = str(last)
                print(f"[resume] {run_dir} from {last}")
    return run_task(cfg, run_dir, multirun)


def run_task(cfg: DictConfig, run_dir: str, multirun: bool):
    from attnexp.build import CheckpointError
    from attnexp.run import RunFailed, run_job

    try:
        return run_job(cfg, run_dir)
    except RunFailed as e:
        message, code = str(e), e.exit_code
        if multirun and e.status == "interrupted":
            # Ctrl-C / SIGTERM stops the whole sweep, not just this job; sweep.resume picks it up
            fail(f"sweep interrupted in {run_dir}: {message}; re-run with sweep.resume=true", code)
    except (CheckpointError, StartupError, ValueError) as e:
        message, code = str(e).splitlines()[0], 1
        update_metrics(run_dir, status="failed", reason=message)
    except Exception as e:
        (Path(run_dir) / "error.txt").write_text(traceback.format_exc())
        message, code = f"{type(e).__name__}: {e}".splitlines()[0] + f" (traceback in {run_dir}/error.txt)", 1
        update_metrics(run_dir, status="failed", reason=message)
    if multirun:  # the other jobs go on; the sweep's summary reports this one
        print(f"attnexp: job failed: {run_dir}: {message}", file=sys.stderr)
        return None
    fail(message, code)


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the command as typed, for provenance (jobs in other processes inherit it)
    os.environ.setdefault("ATTNEXP_COMMAND", " ".join(["attnexp"] + argv))
    if any(a.split("=", 1)[0] in PASS_THROUGH for a in argv):
        sys.argv = [sys.argv[0]] + argv
        task()
        return
    multirun = any(a in ("-m", "--multirun") for a in argv)
    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        overrides = plan_folders(overrides, multirun)
        cfg = preflight(overrides, multirun)
    except StartupError as e:
        fail(str(e))
    overrides = name_folders(overrides, cfg, multirun)
    sys.argv = [sys.argv[0]] + flags + overrides
    if not multirun:
        task()
        return
    code = run_sweep(argv, overrides, cfg)
    if code:
        sys.exit(code)


def _release(folder: str) -> None:
    """Give back a sweep folder this command claimed (created empty) but will not use."""
    try:
        os.removedirs(folder)
    except OSError:
        pass


def run_sweep(argv: list[str], overrides: list[str], cfg: DictConfig) -> int:
    """Plan the jobs (sweep.json), answer a dry run, or launch; 1 when any job is not done."""
    import time

    from attnexp import sweep

    started = time.time()
    try:
        sweep_dir, jobs = sweep.plan(overrides, compose)
        for _, job_cfg in jobs:
            check_job(job_cfg)
    except StartupError as e:
        if not any(_has([a], "hydra.sweep.dir") for a in argv):
            _release(next(o.split("=", 1)[1] for o in overrides if _has([o], "hydra.sweep.dir")))
        fail(str(e))
    if cfg.sweep.dry_run:
        sweep.dry_run(sweep_dir, jobs)
        if not any(_has([a], "hydra.sweep.dir") for a in argv):
            _release(sweep_dir)
        return 0
    again = [a for a in argv if not _has([a], "hydra.sweep.dir") and not _has([a], "sweep.resume")]
    resume = shlex.join(["attnexp"] + again + [f"hydra.sweep.dir={sweep_dir}", "sweep.resume=true"])
    sweep.write_manifest(sweep_dir, [job for job, _ in jobs], command=os.environ["ATTNEXP_COMMAND"])
    launcher_failed = False
    try:
        task()
    except SystemExit as e:  # Hydra exits 1 when a launcher raised (a pool killed by SIGKILL)
        launcher_failed = e.code not in (0, None)
    if launcher_failed:
        print("attnexp: the launcher stopped early; jobs it did not finish are incomplete", file=sys.stderr)
    return sweep.finish(sweep_dir, started, resume) or int(launcher_failed)


if __name__ == "__main__":
    main()
