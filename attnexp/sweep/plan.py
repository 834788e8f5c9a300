"""A command's overrides → its jobs: each job's overrides, folder and composed config (checked
before any runs), the packs (`sweep.pack`), and a checkpoint's own overrides. Torch-free: a sweep
is planned, and a bad job refused, before torch is imported (a pack's refusal builds on meta)."""

from __future__ import annotations

import itertools
import os
from contextlib import suppress
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, read_write

from attnexp.config.blame import blamed
from attnexp.config.compose import compose, config_loader, hydra_config, set_hydra_key, split_hydra, split_override
from attnexp.errors import ConfigError, StartupError
from attnexp.sweep import adaptive
from attnexp.sweep.manifest import read_adaptive, read_manifest
from attnexp.train.rundir import claim_dir, read_metrics, source


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


def override_key(override: str) -> str:
    return split_override(override)[0]


def given(overrides: list[str], key: str) -> bool:
    return any(override_key(o) == key for o in overrides)


def checkpoint_overrides(overrides: list[str]) -> list[str]:
    """A checkpoint's run lends its own overrides (the command's win): resuming continues in its
    folder; evaluating scores it on the data it was trained with, in a folder of its own."""
    # the parsed value: a path holding '=' (a sweep job's folder) must be quoted on the command line
    ckpt = next((parse_overrides([o])[0].value() for o in overrides if override_key(o) == "ckpt_path"), None)
    mode = next((o.split("=", 1)[1] for o in overrides if override_key(o) == "mode"), "train")
    if not ckpt or ckpt == "null" or mode not in ("train", "eval"):
        return overrides
    run_dir = Path(ckpt).resolve().parent.parent
    if not Path(ckpt).is_file() and source(run_dir) != run_dir:  # a sweep's record of a reused run
        run_dir = source(run_dir)
        ckpt = str(run_dir / "checkpoints" / Path(ckpt).name)
        overrides = [f"ckpt_path={quoted(ckpt)}" if override_key(o) == "ckpt_path" else o for o in overrides]
    saved = run_dir / ".hydra" / "overrides.yaml"
    original = list(OmegaConf.load(saved)) if saved.is_file() else []
    packing = ("sweep.pack", "sweep.members")  # a packed member's checkpoint resumes as a single run
    keep = [
        o
        for o in original
        if not o.startswith("hydra.") and override_key(o) not in packing and not given(overrides, override_key(o))
    ]
    if mode == "eval":
        return keep + overrides
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return keep + overrides + [f"hydra.run.dir={quoted(str(run_dir))}", f"hydra.output_subdir=.hydra/resume_{stamp}"]


def quoted(value: str) -> str:
    """A value for Hydra's override grammar whatever it holds (a sweep job's folder holds '=' and ',')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def expand(parsed: list) -> list[list[str]]:
    """Every job's overrides: the cartesian product of the sweeps, in the basic sweeper's order
    (a key keeps the position of its first mention and the value of its last)."""
    columns: dict[str, list[str]] = {}
    for o in parsed:
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        columns[key] = [f"{key}={v}" for v in values]
    return [list(job) for job in itertools.product(*columns.values())]


def plan(overrides: list[str]) -> tuple[DictConfig, list[tuple[list[str], str, DictConfig]], list | None]:
    """(the sweep's own config, [(job overrides, job folder relative to the sweep, job config)], its
    packs). The command's sweeps first, then a preset's `hydra.sweeper.params`; each job records the
    keys the sweep varies (`sweep.swept`: its HParams show them first). Each job is composed once and
    checked (check_job), each pack too, before any runs; a StartupError gives back the folder claimed."""
    parse_overrides(overrides)  # a syntax error names its override
    master = compose(overrides, return_hydra_config=True, mode="MULTIRUN")
    params = master.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params) if params else {}
    task = [f"{k}={v}" for k, v in params.items()] + list(master.hydra.overrides.task)
    if master.sweep.seeds:  # stage 1 of an adaptive sweep: the pilot's seeds
        adaptive.check(master.sweep, [override_key(o) for o in task])
        task.append(adaptive.pilot_seeds(master.sweep))
    parsed = parse_overrides(task)
    swept = [o.get_key_element() for o in parsed[len(params) :] if o.is_sweep_override()]
    swept += [o.get_key_element() for o in parsed[: len(params)] if o.get_key_element() not in swept]
    if not given(list(master.hydra.overrides.hydra), "hydra.sweep.dir"):
        with hydra_config(master):  # the folder's name reads ${hydra:runtime.choices...}
            folder = claim_dir(str(master.hydra.sweep.dir))
        set_hydra_key(master, "hydra.sweep.dir", folder)
        with read_write(master.hydra.overrides):  # the jobs are composed with the sweep's hydra.* overrides
            master.hydra.overrides.hydra.append(f"hydra.sweep.dir={folder}")
    try:
        jobs = compose_jobs(master, [[*job, f"sweep.swept=[{','.join(swept)}]"] for job in expand(parsed)])
        if master.sweep.seeds:
            adaptive.baselines(jobs, OmegaConf.to_container(master.sweep.baseline))  # one must match
            with hydra_config(master):
                recorded = read_adaptive(str(master.hydra.sweep.dir)) if master.sweep.resume else None
            adaptive.settle(master, jobs, recorded)
        grouped = packs(master, jobs)
    except StartupError:
        if not given(overrides, "hydra.sweep.dir"):
            release_dir(str(master.hydra.sweep.dir))
        raise
    return master, jobs, grouped


def compose_jobs(master: DictConfig, job_overrides: list[list[str]]) -> list[tuple[list[str], str, DictConfig]]:
    """Each job composed as its launcher will compose it, its folder, and checked (check_job)."""
    jobs = []
    for overrides in job_overrides:
        cfg = compose(overrides, return_hydra_config=True, master=master)
        with hydra_config(cfg):  # the subdir reads ${hydra:job.override_dirname}
            jobs.append((overrides, str(cfg.hydra.sweep.subdir), cfg))
        check_job(cfg)
    return jobs


def packs(master: DictConfig, jobs: list) -> list[list[int]] | None:
    """sweep.pack (seed | alpha, refused otherwise while composing): which jobs train together (each
    pack checked: attnexp.pack.run.refusal)."""
    from attnexp.pack.run import refusal  # torch: only once every job passed its checks

    pack = master.sweep.pack
    if not pack:
        return None
    grouped = group([o for o, _, _ in jobs], pack)
    for members in grouped:
        _, _, cfg = jobs[members[0]]
        with hydra_config(cfg):
            body, _ = split_hydra(cfg)
            why = refusal(body)
        if why:
            raise ConfigError("sweep.pack", pack, why)
    return grouped


def compose_members(lead: DictConfig) -> list[tuple[DictConfig, DictConfig, list[str]]]:
    """(job config, its hydra node, overrides) of every member, composed as the sweep composed them."""
    from hydra.core.hydra_config import HydraConfig

    sweep_dir = HydraConfig.get().sweep.dir
    master = OmegaConf.load(Path(sweep_dir) / "multirun.yaml")
    jobs = read_manifest(sweep_dir)
    out = []
    for index in lead.sweep.members:
        job = jobs[index]
        cfg = compose(job.overrides, return_hydra_config=True, master=master)
        set_hydra_key(cfg, "hydra.runtime.output_dir", os.path.abspath(os.path.join(sweep_dir, job.dir)))
        with hydra_config(cfg):
            body, _ = split_hydra(cfg)
            OmegaConf.resolve(body)
        out.append((body, cfg.hydra, list(job.overrides)))
    return out


def pack_jobs(sweep_dir: str, jobs: list, grouped: list[list[int]]) -> list[list[str]]:
    """One launched job per pack: its first member's overrides, naming the members (their places
    in sweep.json); packs whose members are all done (sweep.resume) are left out, done members too."""
    places = {j.dir: i for i, j in enumerate(read_manifest(sweep_dir))}
    launched = []
    for members in grouped:
        left = [m for m in members if read_metrics(Path(sweep_dir) / jobs[m][1]).get("status") != "done"]
        if left:
            overrides, _, _ = jobs[left[0]]
            launched.append([*overrides, f"sweep.members=[{','.join(str(places[jobs[m][1]]) for m in left)}]"])
    return launched


def release_dir(folder: str) -> None:
    """Give back a sweep folder this command claimed (created empty) but will not use."""
    with suppress(OSError):  # no longer empty: not ours to remove
        os.removedirs(folder)


def varying(override: str, pack: str) -> bool:
    """Whether an override is one a pack's members may differ in."""
    key = override_key(override)
    return key == "seed" if pack == "seed" else key.startswith("alpha.")


def group(jobs: list[list[str]], pack: str) -> list[list[int]]:
    """Job indices packed together: jobs equal in every override except the packed key(s), in sweep order."""
    packs: dict[tuple, list[int]] = {}
    for i, overrides in enumerate(jobs):
        rest = tuple(o for o in overrides if not varying(o, pack) and not o.startswith("sweep."))
        packs.setdefault(rest, []).append(i)
    return list(packs.values())


def check_job(cfg: DictConfig) -> DictConfig:
    """Everything that can be known before a job starts: the cross-object rules (torch-free),
    then every object the job will use, built on the meta device (attnexp.assemble.preflight).
    Returns the job's config without the hydra node."""
    from attnexp.config.rules import validate

    with hydra_config(cfg):
        body, choices = split_hydra(cfg)
        validate(body, choices)
        check_source(body.model)
        from attnexp.assemble.preflight import check_built  # torch: only once the torch-free checks passed

        check_built(body, choices)
    return body


def check_source(model: DictConfig | None) -> None:
    """A model class's own `check_source(node)` (timm: its pretrained weights cached or the hub
    reachable), before the preflight imports Lightning: an unreachable hub is said within seconds."""
    from hydra.utils import get_class

    try:
        cls = get_class(model._target_)
    except Exception:  # no model, or a bad _target_: the preflight names it
        return
    if hasattr(cls, "check_source"):
        with blamed("model", model):
            cls.check_source(model)
