"""sweep.seeds=auto: as many seeds as a stated precision needs, by Stein's two-stage procedure on
the paired differences (attnexp.sweep.compare holds the formulas, docs/sweeps.md the why).

Stage 1 runs seeds 0 … pilot−1 of every configuration. Each variant's pilot differences with its
baseline (one per group, picked as attnexp-report picks them) give s₀ and its N; stage 2 runs the
variant's seeds pilot … N−1 and its baseline's up to the largest N among its variants. The decision
is a function of the pilot's results only, so a resumed sweep (sweep.resume=true) decides the same.
Torch-free: the runs' values are read from their folders.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import stdev

from omegaconf import DictConfig, OmegaConf

from attnexp.config.compose import hydra_config, is_bookkeeping, split_hydra, split_override
from attnexp.errors import ConfigError
from attnexp.sweep.compare import pick_baselines, stein_seeds, summarize
from attnexp.sweep.manifest import DONE_STATES, job_state, write_adaptive
from attnexp.train.rundir import read_curves

SETTINGS = ("pilot", "max_seeds", "precision", "metric", "statistic")


def check(sw: DictConfig, keys: list[str]) -> None:
    """Refuse at start-up what cannot be sized: `keys` are the sweep's override keys."""
    if sw.precision is None or sw.precision <= 0:
        raise ConfigError("sweep.precision", sw.precision, "sweep.seeds=auto needs the half-width wanted, > 0")
    if sw.pilot < 3:
        raise ConfigError("sweep.pilot", sw.pilot, "at least 3: s₀ from fewer pairs is too unsure to size on")
    if sw.max_seeds < sw.pilot:
        raise ConfigError("sweep.max_seeds", sw.max_seeds, f"at least sweep.pilot ({sw.pilot})")
    if "seed" in keys:
        raise ConfigError("seed", "...", "sweep.seeds=auto chooses the seeds (0, 1, 2, ...): drop the seed= axis")
    if not sw.baseline or not OmegaConf.is_dict(sw.baseline):
        raise ConfigError("sweep.baseline", sw.baseline, "the baseline's choices, e.g. 'sweep.baseline={seqpool:x}'")


def pilot_seeds(sw: DictConfig) -> str:
    return f"seed={','.join(str(s) for s in range(sw.pilot))}"


def configuration(overrides: list[str]) -> tuple[str, ...]:
    """A job's overrides without its seed: what a configuration's jobs share."""
    return tuple(o for o in overrides if not o.startswith("seed="))


def values(config: tuple[str, ...]) -> dict[str, str]:
    return dict(split_override(o) for o in config if "=" in o)


def varying(configs: list[tuple[str, ...]]) -> list[str]:
    """The keys whose value differs between configurations (bookkeeping keys left out)."""
    seen = [values(c) for c in configs]
    keys = dict.fromkeys(k for v in seen for k in v if not is_bookkeeping(k))
    return [k for k in keys if len({v.get(k) for v in seen}) > 1]


def label(config: tuple[str, ...], keys: list[str]) -> str:
    return ",".join(f"{k}={values(config).get(k)}" for k in keys) or "all runs"


def baselines(jobs: list, spec: dict) -> dict[tuple, tuple]:
    """Each configuration's baseline configuration; refused when no configuration is the baseline."""
    first: dict[tuple, DictConfig] = {}
    for overrides, _, cfg in jobs:
        first.setdefault(configuration(overrides), cfg)
    configs = list(first)
    keys = varying(configs)
    items = []
    for c in configs:
        with hydra_config(first[c]):
            body, choices = split_hydra(first[c])
        given = values(c)
        items.append({k: given.get(k, choices.get(k, OmegaConf.select(body, k))) for k in [*spec, *keys]})
    picked = pick_baselines(items, spec, keys)
    if all(p is None for p in picked):
        wanted = ",".join(f"{k}:{v}" for k, v in spec.items())
        raise ConfigError("sweep.baseline", f"{{{wanted}}}", "no configuration of this sweep has these choices")
    return {c: configs[p] for c, p in zip(configs, picked) if p is not None}


def value(run_dir: Path, sw: DictConfig) -> tuple[float | None, str]:
    """(the run's sized statistic, why there is none)."""
    state, reason = job_state(run_dir)
    if state not in DONE_STATES:
        return None, f"{state}: {reason}" if reason else state
    curve = read_curves(run_dir / "tb", (sw.metric,)).get(sw.metric)
    return (summarize(curve, sw.statistic, sw.metric), "") if curve else (None, f"no {sw.metric} logged")


def decide(sweep_dir: str, master: DictConfig, jobs: list) -> tuple[dict, list[list[str]]] | None:
    """After stage 1: the record written to sweep.json and stage 2's job overrides; None while a
    pilot job is unfinished (interrupted or never started: sweep.resume finishes it first)."""
    sw = master.sweep
    spec = OmegaConf.to_container(sw.baseline)
    base_of = baselines(jobs, spec)
    runs: dict[tuple, dict[int, tuple[float | None, str]]] = {}
    first: dict[tuple, list[str]] = {}
    for overrides, folder, cfg in jobs:
        got = value(Path(sweep_dir) / folder, sw)
        if got[1].startswith("incomplete"):
            return None
        runs.setdefault(configuration(overrides), {})[int(cfg.seed)] = got
        first.setdefault(configuration(overrides), overrides)
    comparisons, seeds, keys = [], {}, varying(list(runs))
    for variant, base in base_of.items():
        if variant == base:
            continue
        diffs, dropped = [], []
        for seed in range(sw.pilot):
            (a, why_a), (b, why_b) = runs[variant][seed], runs[base][seed]
            if a is None or b is None:
                sides = [(c, why) for c, v, why in ((variant, a, why_a), (base, b, why_b)) if v is None]
                dropped.append({"seed": seed, "why": "; ".join(f"{label(c, keys)}: {why}" for c, why in sides)})
            else:
                diffs.append(a - b)
        entry = {"variant": label(variant, keys), "baseline": label(base, keys), "overrides": list(variant)}
        entry |= {"baseline_overrides": list(base), "pairs": len(diffs), "dropped": dropped}
        if len(diffs) < 2:
            entry |= {"s0": None, "n": sw.pilot, "stopped": "failed"}
        else:
            s0 = stdev(diffs)
            wanted = int(stein_seeds(s0, len(diffs), sw.precision, sw.pilot, math.inf))
            entry |= {"s0": s0, "n": min(wanted, sw.max_seeds)}
            entry["stopped"] = "max_seeds" if wanted > sw.max_seeds else "precision"
        comparisons.append(entry)
        seeds[variant] = entry["n"]
        seeds[base] = max(seeds.get(base, sw.pilot), entry["n"])
    record = {k: sw[k] for k in SETTINGS} | {"baseline": spec, "comparisons": comparisons}
    more = [
        [o if not o.startswith("seed=") else f"seed={s}" for o in first[c]]
        for c, n in seeds.items()
        for s in range(sw.pilot, n)
    ]
    write_adaptive(sweep_dir, record)
    return record, more


def summary(record: dict) -> str:
    """Per variant: how many seeds it ran and why it stopped."""
    lines = [f"sweep.seeds=auto: ±{record['precision']} wanted on {record['statistic']} {record['metric']}"]
    for c in record["comparisons"]:
        spread = "" if c["s0"] is None else f"; s₀ = {c['s0']:.3g} from {c['pairs']} pilot pairs"
        spread += " (no spread in pilot)" if c["s0"] == 0 else ""
        dropped = f"; {len(c['dropped'])} pilot pairs dropped" if c["dropped"] else ""
        lines.append(f"  {c['variant']} vs {c['baseline']}: {c['n']} seeds, stopped: {c['stopped']}{spread}{dropped}")
    return "\n".join(lines)
