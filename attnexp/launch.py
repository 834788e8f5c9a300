"""Hydra, driven through its public API: each job is composed once, checked, then run.

A single run: `compose` → `check_job` → Hydra's `run_job` (which makes the
folder, saves `.hydra/` and calls `job`). A sweep: the sweep's own config is
composed, its jobs are expanded by Hydra's override parser (the basic sweeper's
order), each job is composed once as the launcher will compose it and checked,
`sweep.json` lists them, and the configured Hydra launcher (basic, joblib,
submitit) runs them; launchers compose each job again in their workers.
Nothing here imports torch: `job` does, inside the job.
"""

from __future__ import annotations

import itertools
import os
import shlex
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, read_write

from attnexp.config.compose import compose, config_loader, split_hydra
from attnexp.errors import ConfigError, JobExit, StartupError
from attnexp.rundir import claim_dir, console_log, read_metrics

# ---------------------------------------------------------------- overrides


def parse_overrides(overrides: list[str]) -> list:
    """Hydra's parse of each override; a syntax error names the override it is in."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, parsed = OverridesParser.create(config_loader=config_loader()), []
    for text in overrides:
        try:
            parsed += parser.parse_overrides([text])
        except Exception as exc:
            reason = str(exc).splitlines()[0]
            raise ConfigError(text, ..., f"cannot parse this override ({reason})") from None
    return parsed


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _given(overrides: list[str], key: str) -> bool:
    return any(_key(o) == key for o in overrides)


def checkpoint_overrides(overrides: list[str]) -> list[str]:
    """A checkpoint's run lends its own overrides (the command's win): resuming continues in its
    folder; evaluating scores it on the data it was trained with, in a folder of its own."""
    # the parsed value: a path holding '=' (a sweep job's folder) must be quoted on the command line
    ckpt = next((parse_overrides([o])[0].value() for o in overrides if _key(o) == "ckpt_path"), None)
    mode = next((o.split("=", 1)[1] for o in overrides if _key(o) == "mode"), "train")
    if not ckpt or ckpt == "null" or mode not in ("train", "eval"):
        return overrides
    run_dir = Path(ckpt).resolve().parent.parent
    saved = run_dir / ".hydra" / "overrides.yaml"
    original = list(OmegaConf.load(saved)) if saved.is_file() else []
    packing = ("sweep.pack", "sweep.members")  # a packed member's checkpoint resumes as a single run
    keep = [
        o for o in original if not o.startswith("hydra.") and _key(o) not in packing and not _given(overrides, _key(o))
    ]
    if mode == "eval":
        return keep + overrides
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return keep + overrides + [f"hydra.run.dir={quoted(str(run_dir))}", f"hydra.output_subdir=.hydra/resume_{stamp}"]


def quoted(value: str) -> str:
    """A value for Hydra's override grammar whatever it holds (a sweep job's folder holds '=' and ',')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---------------------------------------------------------------- checks


@contextmanager
def hydra_config(cfg: DictConfig):
    """Hydra's global config set to `cfg` (what `${hydra:...}` values read), then put back."""
    from hydra.core.hydra_config import HydraConfig

    holder = HydraConfig.instance()
    saved = holder.cfg
    holder.set_config(cfg)
    try:
        yield
    finally:
        holder.cfg = saved


def check_job(cfg: DictConfig) -> DictConfig:
    """Everything that can be known before a job starts: the cross-object rules (torch-free),
    then every object the job will use, built on the meta device (attnexp.preflight).
    Returns the job's config without the hydra node."""
    from attnexp.config.validate import validate

    with hydra_config(cfg):
        body, choices = split_hydra(cfg)
        validate(body, choices)
        from attnexp.preflight import check_built  # torch: only once the torch-free checks passed

        check_built(body, choices)
    return body


def _context():
    from hydra.experimental.callback import Callback
    from hydra.types import HydraContext

    return HydraContext(config_loader=config_loader(), callbacks=Callback())  # no Hydra callbacks of ours


def _set(cfg: DictConfig, key: str, value) -> None:
    """Set a key of Hydra's (read-only) node in the composed config."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent)
    with read_write(node):
        node[leaf] = value


# ---------------------------------------------------------------- one run


def run(overrides: list[str]) -> dict | None:
    """`attnexp <overrides>`: compose once, check, run in its folder (named by conf/hydra)."""
    from hydra.core.utils import configure_log, run_job

    parse_overrides(overrides)  # a syntax error names its override
    overrides = checkpoint_overrides(overrides)
    cfg = compose(overrides, return_hydra_config=True, mode="RUN")
    check_job(cfg)
    if not _given(overrides, "hydra.run.dir"):  # two runs started in the same second get _1, _2...
        with hydra_config(cfg):  # the name reads ${hydra:runtime.choices...}
            _set(cfg, "hydra.run.dir", claim_dir(str(cfg.hydra.run.dir)))
    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    ret = run_job(job, cfg, "hydra.run.dir", None, _context())
    return ret.return_value  # re-raises what the job raised


# ---------------------------------------------------------------- a sweep


def expand(parsed: list) -> list[list[str]]:
    """Every job's overrides: the cartesian product of the sweeps, in the basic sweeper's order
    (a key keeps the position of its first mention and the value of its last)."""
    columns: dict[str, list[str]] = {}
    for o in parsed:
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        columns[key] = [f"{key}={v}" for v in values]
    return [list(job) for job in itertools.product(*columns.values())]


def plan(overrides: list[str]) -> tuple[DictConfig, list[tuple[list[str], str, DictConfig]]]:
    """(the sweep's own config, [(job overrides, job folder relative to the sweep, job config)]).
    The command's sweeps first, then a preset's `hydra.sweeper.params`; each job records the keys
    the sweep varies (`sweep.swept`: its HParams show them first). Each job is composed once and
    checked (check_job) before any runs; a StartupError gives back the folder claimed for it."""
    parse_overrides(overrides)  # a syntax error names its override
    master = compose(overrides, return_hydra_config=True, mode="MULTIRUN")
    params = master.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params) if params else {}
    task = [f"{k}={v}" for k, v in params.items()] + list(master.hydra.overrides.task)
    parsed = parse_overrides(task)
    swept = [o.get_key_element() for o in parsed[len(params) :] if o.is_sweep_override()]
    swept += [o.get_key_element() for o in parsed[: len(params)] if o.get_key_element() not in swept]
    if not _given(list(master.hydra.overrides.hydra), "hydra.sweep.dir"):
        with hydra_config(master):  # the folder's name reads ${hydra:runtime.choices...}
            folder = claim_dir(str(master.hydra.sweep.dir))
        _set(master, "hydra.sweep.dir", folder)
        with read_write(master.hydra.overrides):  # the jobs are composed with the sweep's hydra.* overrides
            master.hydra.overrides.hydra.append(f"hydra.sweep.dir={folder}")
    jobs = []
    try:
        for job_overrides in expand(parsed):
            job_overrides.append(f"sweep.swept=[{','.join(swept)}]")
            cfg = compose(job_overrides, return_hydra_config=True, master=master)
            with hydra_config(cfg):  # the subdir reads ${hydra:job.override_dirname}
                jobs.append((job_overrides, str(cfg.hydra.sweep.subdir), cfg))
            check_job(cfg)
    except StartupError:
        if not _given(overrides, "hydra.sweep.dir"):
            _release(str(master.hydra.sweep.dir))
        raise
    return master, jobs


def packs(master: DictConfig, jobs: list) -> list[list[int]] | None:
    """sweep.pack: which jobs train together (each pack checked: attnexp.packrun.refusal)."""
    from attnexp.packrun import PACKABLE, group, refusal

    pack = master.sweep.pack
    if not pack:
        return None
    if pack not in PACKABLE:
        raise ConfigError("sweep.pack", pack, f"one of {', '.join(PACKABLE)} (or null)")
    grouped = group([o for o, _, _ in jobs], pack)
    for members in grouped:
        _, _, cfg = jobs[members[0]]
        with hydra_config(cfg):
            body, _ = split_hydra(cfg)
            why = refusal(body)
        if why:
            raise ConfigError("sweep.pack", pack, why)
    return grouped


def pack_jobs(sweep_dir: str, jobs: list, grouped: list[list[int]]) -> list[list[str]]:
    """One launched job per pack: its first member's overrides, naming the members (their places
    in sweep.json); packs whose members are all done (sweep.resume) are left out, done members too."""
    from attnexp.sweep import read_manifest

    places = {j.dir: i for i, j in enumerate(read_manifest(sweep_dir))}
    launched = []
    for members in grouped:
        left = [m for m in members if read_metrics(Path(sweep_dir) / jobs[m][1]).get("status") != "done"]
        if left:
            overrides, _, _ = jobs[left[0]]
            launched.append([*overrides, f"sweep.members=[{','.join(str(places[jobs[m][1]]) for m in left)}]"])
    return launched


def _release(folder: str) -> None:
    """Give back a sweep folder this command claimed (created empty) but will not use."""
    try:
        os.removedirs(folder)
    except OSError:
        pass


def sweep(overrides: list[str]) -> int:
    """`attnexp -m <overrides>`: plan and check every job, answer a dry run, or launch them;
    returns 1 when any job is not done."""
    from hydra.core.plugins import Plugins
    from hydra.core.utils import configure_log

    from attnexp import sweep as sweeps

    started = time.time()
    master, jobs = plan(overrides)
    with hydra_config(master):
        sweep_dir = str(master.hydra.sweep.dir)
    try:
        grouped = packs(master, jobs)
    except StartupError:
        if not _given(overrides, "hydra.sweep.dir"):
            _release(sweep_dir)
        raise
    if master.sweep.dry_run:
        sweeps.dry_run(sweep_dir, [(sweeps.Job(o, d), cfg) for o, d, cfg in jobs], grouped)
        if not _given(overrides, "hydra.sweep.dir"):
            _release(sweep_dir)
        return 0
    again = [o for o in overrides if _key(o) not in ("hydra.sweep.dir", "sweep.resume")]
    resume = shlex.join(["attnexp", "-m"] + again + [f"hydra.sweep.dir={sweep_dir}", "sweep.resume=true"])
    sweeps.write_manifest(sweep_dir, [sweeps.Job(o, d) for o, d, _ in jobs], command=os.environ["ATTNEXP_COMMAND"])
    OmegaConf.save(master, Path(sweep_dir) / "multirun.yaml")
    launched = pack_jobs(sweep_dir, jobs, grouped) if grouped else [o for o, _, _ in jobs]
    configure_log(master.hydra.hydra_logging, master.hydra.verbose)
    launcher = Plugins.instance().instantiate_launcher(hydra_context=_context(), task_function=job, config=master)
    launcher_failed = False
    try:
        launcher.launch(launched, initial_job_idx=0)
    except Exception as e:  # a pool killed by SIGKILL: the summary says which jobs it did not finish
        print(f"attnexp: the launcher stopped early ({type(e).__name__}); jobs it did not finish are incomplete",
              file=sys.stderr)  # fmt: skip
        launcher_failed = True
    return sweeps.finish(sweep_dir, started, resume) or int(launcher_failed)


# ---------------------------------------------------------------- inside a job


def job(cfg: DictConfig) -> dict | None:
    """What Hydra runs in the job's folder (in a launcher's worker for joblib and submitit):
    the run, its console copied to console.log, its failure recorded in metrics.json."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN
    with console_log(run_dir):
        try:
            return _resume_or_run(cfg, run_dir, multirun)
        except JobExit as e:  # its line goes to console.log too
            print(f"attnexp: error: {e.message}", file=sys.stderr)
            raise


def _resume_or_run(cfg: DictConfig, run_dir: str, multirun: bool) -> dict | None:
    if multirun:
        from attnexp import sweep as sweeps

        sweeps.use_platform_start_method()  # joblib's loky workers: DataLoader workers need it
        if (cfg.sweep.resume or sweeps.requeued()) and not cfg.sweep.members:  # a pack retrains its members left
            if read_metrics(run_dir).get("status") == "done":
                print(f"[skip] {run_dir}: done")
                return None
            last = Path(run_dir) / "checkpoints" / "last.ckpt"
            if last.is_file():
                cfg.ckpt_path = str(last)
                print(f"[resume] {run_dir} from {last}")
    return _run_recorded(cfg, run_dir, multirun)


def _run_recorded(cfg: DictConfig, run_dir: str, multirun: bool) -> dict | None:
    from attnexp.run import RunFailed, run_mode

    try:
        if cfg.sweep.members:
            from attnexp.packrun import train_pack

            return train_pack(cfg)
        return run_mode(cfg)
    except RunFailed as e:
        if multirun and e.status == "interrupted":
            # Ctrl-C / SIGTERM stops the whole sweep, not just this job; sweep.resume picks it up
            raise JobExit(f"sweep interrupted in {run_dir}: {e}; re-run with sweep.resume=true", e.exit_code) from None
        if not multirun:
            raise JobExit(str(e), e.exit_code) from None
        print(f"attnexp: job failed: {run_dir}: {e}", file=sys.stderr)  # the sweep's summary reports it
        return None
