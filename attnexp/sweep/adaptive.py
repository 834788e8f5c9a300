"""sweep.seeds=auto: as many seeds as a stated precision needs, by Stein's two-stage procedure on
the paired differences (attnexp.sweep.compare holds the formulas, docs/sweeps.md the why).

Stage 1 runs seeds 0 … pilot−1 of every configuration. Each variant's usable pilot pairs with its
baseline (one per group, picked as attnexp-report picks them; a variant without one stops there)
give s₀, its degrees of freedom and N, the usable pairs wanted; stage 2 runs, in rounds, the next
seeds of the variant and its baseline until N pairs are usable (a failed run's seed is replaced by
the next one) or seed max_seeds − 1 was used. Each round is a function of the results so far, so a
resumed sweep (sweep.resume=true) decides the same. Torch-free: the runs' values are read from their
folders.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import stdev

from omegaconf import DictConfig, OmegaConf, read_write

from attnexp.config.compose import hydra_config, is_bookkeeping, split_hydra, split_override
from attnexp.errors import ConfigError
from attnexp.sweep import statistic
from attnexp.sweep.compare import baseline_choices, no_spread, pick_baselines, stein_seeds, t_quantile
from attnexp.sweep.manifest import DONE_STATES, job_state, read_adaptive, write_adaptive
from attnexp.train.rundir import read_curves, read_metrics

SETTINGS = ("pilot", "max_seeds", "precision", "metric", "statistic", "family")
ASSUMPTION = "replaced seeds assume a run's failure is unrelated to its outcome"


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


def held_out(jobs: list) -> bool:
    """Whether the jobs validate on a held-out part of train (data.val_split > 0); refused when they differ."""
    splits = sorted({float(OmegaConf.select(cfg, "data.val_split", default=0) or 0) for _, _, cfg in jobs})
    if len(splits) > 1:
        shown = ",".join(f"{s:g}" for s in splits)
        raise ConfigError("data.val_split", shown, "one sweep sizes on one split: run each data.val_split apart")
    return bool(splits and splits[0] > 0)


def settle(master: DictConfig, jobs: list, recorded: dict | None) -> None:
    """Fix the statistic before the pilot (a resumed sweep keeps sweep.json's `recorded` one);
    refuses a statistic the split cannot give."""
    sw = master.sweep
    held = held_out(jobs)
    kept = (recorded or {}).get("statistic")
    if kept and sw.statistic and sw.statistic != kept:
        raise ConfigError(
            "sweep.statistic", sw.statistic, f"this sweep was sized on {kept} (sweep.json): a resumed sweep keeps it"
        )
    chosen = kept or sw.statistic or statistic.default(sw.metric, held)
    if why := statistic.refusal(chosen, sw.metric, held):
        raise ConfigError("sweep.statistic", chosen, why)
    with read_write(sw):
        sw.statistic = chosen


def settings(master: DictConfig, jobs: list) -> dict:
    """What sweep.json records before the pilot: the settings, the split, the statistic in words."""
    sw, held = master.sweep, held_out(jobs)
    return {k: sw[k] for k in SETTINGS} | {
        "held_out": held,
        "statistic_label": statistic.describe(sw.statistic, sw.metric, held),
    }


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


def baselines(jobs: list, spec: dict) -> dict[tuple, tuple | str]:
    """Each configuration's own baseline configuration, or why it has none; refused when no
    configuration is the baseline."""
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
    bases = [items[p] for p in set(picked) if p is not None]
    missing = {c: baseline_choices(d, spec, keys, bases) for c, d in zip(configs, items)}
    return {
        c: configs[p] if p is not None else "no configuration of this sweep has " + ",".join(f"{k}={v}" for k, v in missing[c].items())
        for c, p in zip(configs, picked)
    }  # fmt: skip


def value(run_dir: Path, sw: DictConfig, held: bool) -> tuple[float | None, str, tuple]:
    """(the run's sized statistic, why there is none, its epochs)."""
    state, reason = job_state(run_dir)
    if state not in DONE_STATES:
        return None, f"{state}: {reason}" if reason else state, ()
    curve = read_curves(run_dir / "tb", (sw.metric,)).get(sw.metric)
    if why := statistic.out_of_statistics(curve, sw.metric):
        return None, why, ()
    got = statistic.value(curve, read_metrics(run_dir), sw.statistic, sw.metric, held)
    return got, "" if got is not None else f"no {statistic.HELD_OUT_BEST} in metrics.json", tuple(sorted(curve))


def pair(a: tuple, b: tuple, sides: tuple[str, str], statistic_name: str) -> tuple[float | None, str]:
    """(the variant's value − the baseline's, why there is none) at one seed."""
    if a[0] is None or b[0] is None:
        return None, "; ".join(f"{side}: {got[1]}" for side, got in zip(sides, (a, b)) if got[0] is None)
    if statistic_name == "mean" and a[2] != b[2]:
        return None, "epochs differ"
    return a[0] - b[0], ""


def rounds(at, n: int, pilot: int, max_seeds: int) -> tuple[list[int], range]:
    """(the usable seeds so far, the seeds of the round to run now: empty when done). `at(seed)` is
    the pair's difference, None when it is not usable, ... when it has not run yet."""
    usable = [s for s in range(pilot) if at(s) is not None]
    tried = pilot
    while len(usable) < n and tried < max_seeds:
        new = range(tried, min(max_seeds, tried + n - len(usable)))
        if any(at(s) is ... for s in new):
            return usable, new
        usable += [s for s in new if at(s) is not None]
        tried = new.stop
    return usable[:n], range(0)


def decide(sweep_dir: str, master: DictConfig, jobs: list) -> tuple[dict, list[list[str]]] | None:
    """After each round: the record written to sweep.json and the next round's job overrides (none:
    the sweep is sized); None while a job is unfinished (interrupted or never started: sweep.resume
    finishes it first)."""
    sw = master.sweep
    spec = OmegaConf.to_container(sw.baseline)
    base_of = baselines(jobs, spec)
    held = held_out(jobs)
    runs: dict[tuple, dict[int, tuple]] = {}
    first: dict[tuple, list[str]] = {}
    for overrides, folder, cfg in jobs:
        got = value(Path(sweep_dir) / folder, sw, held)
        if got[1].startswith("incomplete"):
            return None
        runs.setdefault(configuration(overrides), {})[int(cfg.seed)] = got
        first.setdefault(configuration(overrides), overrides)
    keys = varying(list(runs))
    family = family_sizes(base_of) if sw.family else {}
    comparisons, wanted_jobs = [], {}
    for variant, base in base_of.items():
        if variant == base:
            continue
        entry = {"variant": label(variant, keys), "overrides": list(variant), "k": family.get(base, 1)}
        if isinstance(base, str):
            comparisons.append(entry | {"baseline": None, "why": base, "n": sw.pilot, "stopped": "no baseline"})
            continue
        sides = (label(variant, keys), label(base, keys))

        def at(seed, variant=variant, base=base, sides=sides):
            if seed not in runs[variant] or seed not in runs[base]:
                return ...
            return pair(runs[variant][seed], runs[base][seed], sides, sw.statistic)[0]

        pilot = [pair(runs[variant][s], runs[base][s], sides, sw.statistic) for s in range(sw.pilot)]
        diffs = [d for d, _ in pilot if d is not None]
        entry |= {"baseline": sides[1], "baseline_overrides": list(base), "pairs": len(diffs)}
        if len(diffs) < 2:
            entry |= {"s0": None, "no_spread": False, "n": sw.pilot, "stopped": "failed"}
            usable, now = [s for s in range(sw.pilot) if pilot[s][0] is not None], range(0)
        else:
            flat = no_spread(diffs)
            s0 = 0.0 if flat else stdev(diffs)
            wanted = int(stein_seeds(s0, len(diffs), sw.precision, sw.pilot, math.inf, entry["k"]))
            n = min(wanted, sw.max_seeds)
            usable, now = rounds(at, n, sw.pilot, sw.max_seeds)
            stopped = "max_seeds" if wanted > sw.max_seeds else "failures" if len(usable) < n else "precision"
            entry |= {"s0": s0, "no_spread": flat, "n": n, "stopped": stopped if not now else "running"}
        tried = [s for s in sorted(runs[variant].keys() & runs[base].keys()) if s not in now]
        dropped = [(s, pair(runs[variant][s], runs[base][s], sides, sw.statistic)) for s in tried]
        entry["dropped"] = [{"seed": s, "why": why} for s, (d, why) in dropped if d is None]
        entry["replaced"] = {  # failed seeds a later seed stood in for
            side: [s for s in tried if runs[c][s][0] is None and entry["stopped"] != "failed"]
            for side, c in (("variant", variant), ("baseline", base))
        }
        entry |= {"usable": len(usable), "seeds": usable}
        comparisons.append(entry)
        for c in (variant, base):
            wanted_jobs.setdefault(c, set()).update(s for s in now if s not in runs[c])
    recorded = read_adaptive(sweep_dir) or {}
    record = {k: recorded.get(k, sw[k]) for k in SETTINGS} | {"baseline": spec, "comparisons": comparisons}
    record |= {k: recorded[k] for k in ("held_out", "statistic_label") if k in recorded}
    more = [
        [o if not o.startswith("seed=") else f"seed={s}" for o in first[c]]
        for c, seeds in wanted_jobs.items()
        for s in sorted(seeds)
    ]
    write_adaptive(sweep_dir, record)
    return record, more


def family_sizes(base_of: dict) -> dict:
    """Per baseline, k: how many variants are compared with it (fixed before the pilot)."""
    k: dict = {}
    for variant, base in base_of.items():
        if not isinstance(base, str) and variant != base:
            k[base] = k.get(base, 0) + 1
    return k


def family_cost(jobs: list, sw: DictConfig) -> list[str]:
    """What sweep.family=true costs, per baseline: t with pilot − 1 degrees of freedom, and N's factor."""
    spec = OmegaConf.to_container(sw.baseline)
    base_of = baselines(jobs, spec)
    keys = varying(list(base_of))
    lines = []
    for base, k in family_sizes(base_of).items():
        one, all_k = float(t_quantile(sw.pilot - 1)), float(t_quantile(sw.pilot - 1, k))
        lines.append(
            f"  sweep.family=true: {k} variants against {label(base, keys)}: t({sw.pilot - 1} df) {one:.2f} → "
            f"{all_k:.2f} (Bonferroni, 1 − 0.05/{2 * k}), N × {(all_k / one) ** 2:.2f} before max_seeds"
        )
    return lines


def summary(record: dict) -> str:
    """Per variant: how many usable pairs it has, why it stopped, the seeds replaced."""
    label_ = record.get("statistic_label") or f"{record['statistic']} {record['metric']}"
    family = ", family-wise (Bonferroni over the variants of each baseline)" if record.get("family") else ""
    lines = [f"sweep.seeds=auto: ±{record['precision']} wanted on {label_}{family}"]
    replaced_any = False
    for c in record["comparisons"]:
        if c["baseline"] is None:
            lines.append(f"  {c['variant']}: no baseline ({c['why']}): pilot only, stopped: no baseline")
            continue
        spread = "" if c["s0"] is None else f"; s₀ = {c['s0']:.3g} from {c['pairs']} pilot pairs"
        spread += " (no spread in pilot)" if c.get("no_spread") else ""
        head = f"  {c['variant']} vs {c['baseline']}: {c['usable']} usable pairs of {c['n']}, stopped: {c['stopped']}"
        replaced = [f"{side} seeds {', '.join(map(str, s))}" for side, s in c["replaced"].items() if s]
        replaced_any |= bool(replaced)
        lines.append(head + spread + (f"; failed, replaced: {'; '.join(replaced)}" if replaced else ""))
    if replaced_any:
        lines.append(f"  ({ASSUMPTION})")
    return "\n".join(lines)
