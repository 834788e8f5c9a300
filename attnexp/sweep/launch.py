"""Hydra, driven through its public API: each job is composed once, checked, then run.

A single run: `compose` → `check_job` (attnexp.sweep.plan) → Hydra's `run_job` (which makes the
folder, saves `.hydra/` and calls `job`). A sweep: the sweep's own config is
composed, its jobs are expanded by Hydra's override parser (the basic sweeper's
order), each job is composed once as the launcher will compose it and checked,
`sweep.json` lists them, and the configured Hydra launcher (basic, joblib,
submitit) runs them; launchers compose each job again in their workers.
Nothing here imports torch: `job` does, inside the job.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from attnexp.config.compose import compose, config_loader, hydra_config, set_hydra_key
from attnexp.errors import ConfigError, JobExit
from attnexp.sweep import adaptive, manifest, reuse
from attnexp.sweep.plan import (
    check_job,
    checkpoint_overrides,
    compose_jobs,
    given,
    override_key,
    pack_jobs,
    packs,
    parse_overrides,
    plan,
    release_dir,
)
from attnexp.train.rundir import claim_dir, console_log, read_metrics


def _context():
    from hydra.experimental.callback import Callback
    from hydra.types import HydraContext

    return HydraContext(config_loader=config_loader(), callbacks=Callback())  # no Hydra callbacks of ours


# ---------------------------------------------------------------- one run


def run(overrides: list[str]) -> dict | None:
    """`attnexp <overrides>`: compose once, check, run in its folder (named by conf/hydra)."""
    from hydra.core.utils import configure_log, run_job

    parse_overrides(overrides)  # a syntax error names its override
    overrides = checkpoint_overrides(overrides)
    cfg = compose(overrides, return_hydra_config=True, mode="RUN")
    if cfg.sweep.seeds:
        raise ConfigError("sweep.seeds", cfg.sweep.seeds, "an adaptive sweep runs with -m")
    check_job(cfg)
    if not given(overrides, "hydra.run.dir"):  # two runs started in the same second get _1, _2...
        with hydra_config(cfg):  # the name reads ${hydra:runtime.choices...}
            set_hydra_key(cfg, "hydra.run.dir", claim_dir(str(cfg.hydra.run.dir)))
    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    ret = run_job(job, cfg, "hydra.run.dir", None, _context())
    return ret.return_value  # re-raises what the job raised


# ---------------------------------------------------------------- a sweep


def sweep(overrides: list[str]) -> int:
    """`attnexp -m <overrides>`: plan and check every job, answer a dry run, or launch them;
    returns 1 when any job is not done."""
    from hydra.core.plugins import Plugins
    from hydra.core.utils import configure_log

    from attnexp.sweep.estimate import dry_run, duration

    started = time.time()
    master, jobs, grouped = plan(overrides)
    with hydra_config(master):
        sweep_dir = str(master.hydra.sweep.dir)
    if master.sweep.dry_run:
        one_at_a_time = dry_run(sweep_dir, [(manifest.Job(o, d), cfg) for o, d, cfg in jobs], grouped)
        if master.sweep.reuse is not False:
            print(reuse.dry_run([cfg for _, _, cfg in jobs]))
        if master.sweep.seeds:
            sw = master.sweep
            print(f"  sweep.seeds=auto: above is stage 1 (seeds 0-{sw.pilot - 1}); in the worst case every "
                  f"configuration runs sweep.max_seeds={sw.max_seeds} seeds: {len(jobs) * sw.max_seeds // sw.pilot} "
                  f"jobs, ≈ {duration(one_at_a_time * sw.max_seeds / sw.pilot)} one job at a time")  # fmt: skip
            if sw.family:
                print("\n".join(adaptive.family_cost(jobs, sw)))
        if not given(overrides, "hydra.sweep.dir"):
            release_dir(sweep_dir)
        return 0
    again = [o for o in overrides if override_key(o) not in ("hydra.sweep.dir", "sweep.resume")]
    resume = shlex.join(["attnexp", "-m"] + again + [f"hydra.sweep.dir={sweep_dir}", "sweep.resume=true"])
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(master, Path(sweep_dir) / "multirun.yaml")
    configure_log(master.hydra.hydra_logging, master.hydra.verbose)
    launcher = Plugins.instance().instantiate_launcher(hydra_context=_context(), task_function=job, config=master)
    if master.sweep.seeds:
        manifest.write_adaptive(sweep_dir, (manifest.read_adaptive(sweep_dir) or {}) | adaptive.settings(master, jobs))
    stopped = launch_stage(launcher, sweep_dir, jobs, grouped, 0)
    if master.sweep.seeds and not stopped:
        stopped = stage_two(launcher, sweep_dir, master, jobs)
    return manifest.finish(sweep_dir, started, resume) or int(stopped)


def stage_two(launcher, sweep_dir: str, master: DictConfig, jobs: list) -> bool:
    """Round after round, the seeds each variant and its baseline still need; whether the launcher stopped early."""
    record, stopped = None, False
    while not stopped and (decided := adaptive.decide(sweep_dir, master, jobs)):
        record, more = decided
        if not more:
            break
        added = compose_jobs(master, more)
        stopped = launch_stage(launcher, sweep_dir, added, packs(master, added), len(jobs))
        jobs = jobs + added
    if record:
        record["reused_seeds"] = reuse.seeds_reused(sweep_dir)
        manifest.write_adaptive(sweep_dir, record)
        print(adaptive.summary(record) + reuse.seeds_line(record["reused_seeds"]))
    return stopped


def launch_stage(launcher, sweep_dir: str, jobs: list, grouped: list | None, first: int) -> bool:
    """Add the jobs to sweep.json and run them (their packs with sweep.pack); whether the launcher stopped early."""
    manifest.write_manifest(sweep_dir, [manifest.Job(o, d) for o, d, _ in jobs], command=os.environ["ATTNEXP_COMMAND"])
    launched = pack_jobs(sweep_dir, jobs, grouped) if grouped else [o for o, _, _ in jobs]
    try:
        launcher.launch(launched, initial_job_idx=first)
    except Exception as e:  # a pool killed by SIGKILL: the summary says which jobs it did not finish
        print(f"attnexp: the launcher stopped early ({type(e).__name__}); jobs it did not finish are incomplete",
              file=sys.stderr)  # fmt: skip
        return True
    return False


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
        manifest.use_platform_start_method()  # joblib's loky workers: DataLoader workers need it
        if (cfg.sweep.resume or manifest.requeued()) and not cfg.sweep.members:  # a pack retrains its members left
            if read_metrics(run_dir).get("status") == "done":
                print(f"[skip] {run_dir}: done")
                return None
            last = Path(run_dir) / "checkpoints" / "last.ckpt"
            if last.is_file():
                cfg.ckpt_path = str(last)
                print(f"[resume] {run_dir} from {last}")
    from attnexp.train.lifecycle import RunFailed
    from attnexp.train.modes import run_mode

    try:
        reused, compare_with = reuse.in_job(cfg, run_dir) if multirun else (None, None)
        if reused is not None:
            return reused
        if cfg.sweep.members:
            from attnexp.pack.run import train_pack
            from attnexp.sweep.plan import compose_members

            return train_pack(compose_members(cfg))  # the members left after reuse.in_job
        metrics = run_mode(cfg)
        if compare_with is not None:
            reuse.verify(run_dir, compare_with)
        return metrics
    except RunFailed as e:
        if multirun and e.status == "interrupted":
            # Ctrl-C / SIGTERM stops the whole sweep, not just this job; sweep.resume picks it up
            raise JobExit(f"sweep interrupted in {run_dir}: {e}; re-run with sweep.resume=true", e.exit_code) from None
        if not multirun:
            raise JobExit(str(e), e.exit_code) from None
        print(f"attnexp: job failed: {run_dir}: {e}", file=sys.stderr)  # the sweep's summary reports it
        return None
