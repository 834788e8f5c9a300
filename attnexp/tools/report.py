"""`attnexp-report`: the seeds of every variant → one table with honest statistics, and curves.

    attnexp-report multirun/<date>/<time>_seqpool_lines --baseline seqpool=x --anchors seed000

Finds run folders (metrics.json, tb/, .hydra/) below the given paths, reads their
scalars from the TensorBoard event files (tbparse), groups the runs by every
override except the seed and bookkeeping keys, compares each group with its baseline (paired
over shared seeds, Stein's interval where an adaptive sweep sized it, Welch otherwise), and writes
report.md, report.csv, curves.png (diff.png when a comparison is paired, trend.png with --x,
alpha.png when α moved during a run). Jobs that did not finish are listed with
their status, never averaged in. No torch here.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from statistics import mean, stdev

import yaml
from omegaconf import OmegaConf

from attnexp.config.compose import is_bookkeeping, split_override
from attnexp.sweep import statistic
from attnexp.sweep.compare import (
    CONFIDENCE,
    NO_SPREAD,
    baseline_choices,
    no_spread,
    paired_interval,
    pick_baselines,
    same_value,
    simultaneous_band,
    stein_interval,
    welch_interval,
)
from attnexp.sweep.manifest import read_adaptive, read_manifest
from attnexp.sweep.statistic import STATISTICS
from attnexp.train.rundir import read_curves, read_metrics

LOSS_TAG = "train/loss"
ALPHA_TAG = "alpha"  # the α schedule's value, logged every step (its last value counts for the epoch)

# seed 003's table names: model choice → "Model Type", data choice → "Dataset" (in the seed's row order)
MODEL_TYPES = {"cnn": "CNN", "vit": "ViT", "deepvit": "DeepViTNet", "hybrid": "Hybrid"}
DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}


class ReportError(Exception):
    pass


@dataclass
class ReportRun:
    dir: Path
    status: str  # metrics.json's status; "not started" for a planned job without a folder
    reason: str = ""
    key: tuple = ()  # ((override key, value), ...) sorted, seed and bookkeeping left out
    seed: int | None = None
    choices: dict = field(default_factory=dict)  # Hydra's runtime choices, defaults included
    config: object = None  # the job's DictConfig (.hydra/config.yaml)
    metrics: dict = field(default_factory=dict)  # metrics.json
    curves: dict = field(default_factory=dict)  # TensorBoard tag → {epoch: value}

    @property
    def held_out(self) -> bool:
        """Whether it validated on a held-out part of train (data.val_split > 0): val/* is not the test split."""
        split = OmegaConf.select(self.config, "data.val_split", default=0) if self.config is not None else 0
        return bool(split and float(split) > 0)

    def epochs(self, metric: str) -> tuple:
        return tuple(sorted(self.curves.get(metric, {})))

    def value(self, key: str) -> str | None:
        """A key's value as the run saw it: its override, its group choice, or its config value."""
        overridden = dict(self.key)
        if key in overridden:
            return overridden[key]
        if key in self.choices:
            return str(self.choices[key])
        if self.config is not None:
            found = OmegaConf.select(self.config, key, throw_on_resolution_failure=False)
            return None if found is None else str(found)
        return None


def group_key(overrides: list[str]) -> tuple:
    pairs = (split_override(o) for o in overrides)
    return tuple(sorted((k, v) for k, v in pairs if not is_bookkeeping(k)))


def read_run(folder: Path, metric: str) -> ReportRun:
    hydra_dir = folder / ".hydra"
    config = OmegaConf.load(hydra_dir / "config.yaml")
    overrides = list(OmegaConf.load(hydra_dir / "overrides.yaml")) if (hydra_dir / "overrides.yaml").is_file() else []
    choices = {}
    if (hydra_dir / "hydra.yaml").is_file():
        choices = dict(OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.runtime.choices") or {})
    metrics = read_metrics(folder)
    return ReportRun(
        dir=folder,
        status=metrics.get("status") or "started",
        reason=str(metrics.get("reason") or ""),
        key=group_key(overrides),
        seed=config.get("seed"),
        choices={k: v for k, v in choices.items() if not k.startswith("hydra")},
        config=config,
        metrics=metrics,
        curves=read_curves(folder / "tb", (metric, LOSS_TAG, ALPHA_TAG)),
    )


def find_runs(paths: list[str], metric: str) -> list[ReportRun]:
    """Every training run below the paths, plus the planned jobs of a sweep (sweep.json) that never started."""
    runs: dict[Path, ReportRun] = {}
    for p in paths:
        root = Path(p)
        if not root.is_dir():
            raise ReportError(f"{p}: no such folder")
        for c in (c for c in root.rglob("config.yaml") if c.parent.name == ".hydra" and c.is_file()):
            folder = c.parent.parent.resolve()
            if folder not in runs:
                run = read_run(folder, metric)
                if run.config.get("mode", "train") == "train":
                    runs[folder] = run
        for manifest in root.rglob("sweep.json"):
            for job in read_manifest(manifest.parent):
                folder = (manifest.parent / job.dir).resolve()
                if folder not in runs and not (folder / ".hydra").is_dir():
                    seed = dict(split_override(o) for o in job.overrides).get("seed")
                    why = "the launcher never started it"
                    runs[folder] = ReportRun(folder, "not started", why, group_key(job.overrides), seed)
    for folder in [f for f, r in runs.items() if r.metrics.get("reused_from")]:  # a run and its record: once
        if Path(runs[folder].metrics["reused_from"]).resolve() in runs:
            del runs[folder]
    return sorted(runs.values(), key=lambda r: (r.key, str(r.seed), str(r.dir)))


def adaptive_records(paths: list[str]) -> list[dict]:
    """The "adaptive" record (sweep.seeds=auto: s₀, N, why each variant stopped) of every sweep.json below the paths."""
    return [a for p in paths for m in sorted(Path(p).rglob("sweep.json")) if (a := read_adaptive(m.parent))]


@dataclass
class Stats:
    n: int
    mean: float
    std: float | None  # sample standard deviation (n − 1); None for one run
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> "Stats":
        return cls(len(values), mean(values), stdev(values) if len(values) > 1 else None, min(values), max(values))


def verdict(low: float, high: float, higher_is_better: bool) -> str:
    """better / worse when the interval excludes 0; NaN bounds (no interval) compare false: can't tell."""
    if low > 0 or high < 0:
        return "better" if (low > 0) == higher_is_better else "worse"
    return "can't tell"


@dataclass
class Group:
    key: tuple
    runs: list[ReportRun]  # finished runs that logged the metric
    label: str = ""

    def first(self) -> ReportRun:
        return self.runs[0]

    def values(self, which: str, metric: str) -> list[float]:
        """The runs' `which` statistic, left out where a run has none (best of a held-out split without its test score)."""
        got = (run_value(r, which, metric) for r in self.runs)
        return [v for v in got if v is not None]


def run_value(run: ReportRun, which: str, metric: str) -> float | None:
    return statistic.value(run.curves[metric], run.metrics, which, metric, run.held_out)


def usable(run: ReportRun, metric: str) -> bool:
    """Finished, and its curve of `metric` logged and finite: in that metric's statistics."""
    return run.status == "done" and not statistic.out_of_statistics(run.curves.get(metric), metric)


def make_groups(runs: list[ReportRun], metric: str) -> list[Group]:
    by_key: dict[tuple, list[ReportRun]] = {}
    for r in runs:
        if usable(r, metric):
            by_key.setdefault(r.key, []).append(r)
    groups = [Group(k, v) for k, v in by_key.items()]
    varying = varying_keys(groups)
    for g in groups:
        d = dict(g.key)
        g.label = ", ".join(f"{k}={d[k]}" for k in varying if k in d) or "all runs"
    return groups


def varying_keys(groups: list[Group]) -> list[str]:
    """Override keys whose value is not the same in every group (in order of first appearance)."""
    dicts = [dict(g.key) for g in groups]
    names = list(dict.fromkeys(name for d in dicts for name in d))
    return [n for n in names if len({d.get(n) for d in dicts}) > 1]


def parse_pairs(specs: list[str] | None, flag: str) -> dict[str, str]:
    pairs = {}
    for spec in specs or []:
        for item in spec.split():
            if "=" not in item:
                raise ReportError(f"{flag} {item}: expected KEY=VALUE (e.g. {flag} seqpool=x)")
            k, v = split_override(item)
            pairs[k] = v
    return pairs


def baselines_for(groups: list[Group], spec: dict[str, str], runs: list[ReportRun], metric: str) -> dict:
    """For each group, the baseline group it is compared with (compare.pick_baselines: its own, never
    another row's), or why it has none ("no baseline: ..."); None without a --baseline."""
    if not spec:
        return {id(g): None for g in groups}
    keys = varying_keys(groups)
    items = [{k: g.first().value(k) for k in [*spec, *keys]} for g in groups]
    picked = pick_baselines(items, spec, keys)
    bases = [items[p] for p in set(picked) if p is not None]
    return {
        id(g): groups[p] if p is not None else missing_baseline(baseline_choices(d, spec, keys, bases), runs, metric)
        for g, d, p in zip(groups, items, picked)
    }


def missing_baseline(choices: dict, runs: list[ReportRun], metric: str) -> str:
    """Why the baseline with these choices is not there: it never ran, or none of its runs is usable."""
    named = ", ".join(f"{k}={v}" for k, v in choices.items())
    tried = [r for r in runs if all(r.value(k) is not None and same_value(r.value(k), v) for k, v in choices.items())]
    if not tried:
        return f"no baseline: {named} never ran"
    seeds = ", ".join(f"{r.seed}: {why_not(r, metric)}" for r in sorted(tried, key=lambda r: str(r.seed)))
    return f"no baseline: no usable run of {named} (seed {seeds})"


def check_splits(runs: list[ReportRun]) -> None:
    """val/* means the test split with data.val_split = 0 and a held-out split otherwise: one table, one meaning."""
    kinds = Counter(r.held_out for r in runs if r.status == "done" and r.config is not None)
    if len(kinds) > 1:
        raise ReportError(
            f"these runs mix data.val_split = 0 ({kinds[False]} runs, val/* is the test split) and > 0 "
            f"({kinds[True]} runs, val/* is a held-out split): report them apart"
        )


def numerics_of(run: ReportRun) -> tuple[str, str | None]:
    """(recipe, precision) a run recorded; runs from before the record count as the default recipe."""
    return run.metrics.get("recipe") or "fast", (run.metrics.get("numerics") or {}).get("precision")


def check_recipes(runs: list[ReportRun], mix: bool) -> None:
    """Runs of different recipes or precisions differ by more than their variant: refuse to compare
    them unless asked to (--mix-recipes)."""
    kinds = Counter(numerics_of(r) for r in runs if r.status == "done")
    known = {k for k in kinds if k[1] is not None}
    recipes = {k[0] for k in kinds}
    if mix or (len(recipes) <= 1 and len(known) <= 1):
        return
    seen = ", ".join(f"recipe={k[0]} precision={k[1] or '?'}: {n} runs" for k, n in sorted(kinds.items(), key=str))
    raise ReportError(
        f"these runs mix recipes or precisions ({seen}): a difference could come from that, not from the "
        "variant; report them apart, or pass --mix-recipes"
    )


def load_anchors(name: str | None) -> dict | None:
    """A small YAML of published numbers: a path, or the name of one shipped in conf/anchors/."""
    if not name:
        return None
    path = Path(name)
    if not path.is_file():
        shipped = files("attnexp.conf").joinpath("anchors", f"{name}.yaml")
        if not shipped.is_file():
            raise ReportError(f"--anchors {name}: no such file (shipped: {', '.join(shipped_anchors())})")
        path = shipped
    body = yaml.safe_load(path.read_text()) or {}
    if not isinstance(body.get("published"), dict) or "key" not in body:
        raise ReportError(f"--anchors {name}: needs `key:` (the choice) and `published:` (choice → list of numbers)")
    return body


def shipped_anchors() -> list[str]:
    folder = files("attnexp.conf").joinpath("anchors")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def mismatch(run: ReportRun, where: dict) -> str | None:
    """Why `run` is not the setting a published number was measured in (None: it is)."""
    for key, wanted in (where or {}).items():
        have = run.value(key)
        if have is None or str(have) != str(wanted):
            return f"{key}={have} (published: {wanted})"
    return None


def published(anchors: dict | None, group: Group) -> tuple[str, list[str]]:
    """(the published numbers for this group's setting, why the others of its key were left out).
    A number sits beside a group only when the group's runs match the file's `where:` (model,
    dataset, epochs, recipe family...) and the entry's own `where:` (e.g. its dataset)."""
    if not anchors:
        return "", []
    run = group.first()
    entries = anchors["published"].get(run.value(anchors["key"])) or []
    out, left_out = [], []
    for e in entries:
        number = f"{e['best']:.2f}" + (f" / {e['final']:.2f}" if e.get("final") is not None else "")
        number += f" ({e['source']})" if e.get("source") else ""
        why = mismatch(run, anchors.get("where")) or mismatch(run, e.get("where"))
        if why:
            left_out.append(f"{number} not beside {group.label}: {why}")
        else:
            out.append(number)
    return "; ".join(out), left_out


def _pm(s: Stats | None) -> str:
    """mean ± std (min–max); empty where the group has no value of the statistic."""
    if s is None:
        return ""
    body = f"{s.mean:.2f} ± {s.std:.2f}" if s.std is not None else f"{s.mean:.2f}"
    return body + (f" ({s.min:.2f}–{s.max:.2f})" if s.n > 1 else "")


def _span(values: list) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def _delta(row: dict, which: str) -> str:
    diff, lo, hi = row[f"d_{which}"], row[f"d_{which}_low"], row[f"d_{which}_high"]
    if diff is None:
        return "—"
    return f"{diff:+.2f}" + ("" if math.isnan(lo) else f" [{lo:+.2f}, {hi:+.2f}]")


def reason(run: ReportRun, metric: str) -> str:
    """Why a run is not in the statistics: its recorded reason, or a finished run's missing or
    non-finite metric."""
    if run.reason or run.status != "done":
        return run.reason
    return statistic.out_of_statistics(run.curves.get(metric), metric)


def why_not(run: ReportRun, metric: str) -> str:
    """A run's status and, when there is one, its reason (a finished run: the reason alone)."""
    why = reason(run, metric)
    if run.status == "done" and why:
        return why
    return f"{run.status}: {why}" if why else run.status


def pair_up(g: Group, base: Group, runs: list[ReportRun], metric: str) -> tuple[list[tuple], list[tuple]]:
    """((run, baseline run) at each seed both are usable, in seed order; (seed, why) for each other
    seed both have)."""
    done = {id(r) for r in g.runs + base.runs}

    def at(group: Group) -> dict[str, ReportRun]:  # a usable run wins over another at its seed
        return {str(r.seed): r for r in sorted((r for r in runs if r.key == group.key), key=lambda r: id(r) in done)}

    mine, theirs = at(g), at(base)
    pairs, dropped = [], []
    for seed in sorted(mine.keys() & theirs.keys(), key=lambda s: (len(s), s)):
        sides = ((mine[seed], g), (theirs[seed], base))
        if all(id(r) in done for r, _ in sides):
            pairs.append((mine[seed], theirs[seed]))
        else:
            why = "; ".join(f"{grp.label}: {why_not(r, metric)}" for r, grp in sides if id(r) not in done)
            dropped.append((seed, why))
    return pairs, dropped


def paired_values(pairs: list[tuple], which: str, metric: str) -> tuple[list[float], list[tuple]]:
    """(the per-seed differences of `which`, in seed order; (seed, why) for the pairs it cannot use:
    `mean` over different epochs, `best` without a test score at the best validation epoch)."""
    diffs, dropped = [], []
    for a, b in pairs:
        va, vb = run_value(a, which, metric), run_value(b, which, metric)
        if which == "mean" and a.epochs(metric) != b.epochs(metric):
            dropped.append((str(a.seed), "epochs differ (out of mean)"))
        elif va is None or vb is None:
            dropped.append((str(a.seed), f"no {statistic.HELD_OUT_BEST} (out of best)"))
        else:
            diffs.append(va - vb)
    return diffs, dropped


KINDS = {"t": "paired t", "stein": "Stein", "welch": "Welch"}


def compare(
    g: Group, base, runs: list[ReportRun], metric: str, plan: dict | None, k: dict | None = None, family=False
) -> dict:
    """Δ of each statistic against the baseline: over the per-seed differences when ≥ 2 seeds paired
    (Stein's interval on the first N usable pairs for an adaptive sweep's sized statistic), Welch's
    otherwise; Bonferroni over k[statistic] comparisons. `base`: a Group, None (no --baseline) or
    why the group has none."""
    k = k or {}
    row = {"baseline": base.label if isinstance(base, Group) else (base or "")}
    for which in STATISTICS:
        row |= {f"d_{which}": None, f"d_{which}_low": None, f"d_{which}_high": None}
        row |= {f"verdict_{which}": "baseline" if base is g else "", f"interval_{which}": "", f"no_spread_{which}": ""}
    row |= dict.fromkeys(["pairing", "n_pairs", "stopped", "family_k"], "")
    row |= {"_pairs": [], "_dropped": [], "_label": "", "_base": ""}
    if isinstance(base, str):
        return row | {"stopped": (plan or {}).get("stopped", ""), "_label": base}
    if base is None or base is g:
        return row
    pairs, dropped = pair_up(g, base, runs, metric)
    if plan and (not plan.get("baseline_overrides") or group_key(plan["baseline_overrides"]) != base.key):
        plan = None  # compared with another baseline than the sweep sized it against
    sized = plan["statistic"] if plan and plan["metric"] == metric and plan.get("s0") is not None else None
    row |= {"pairing": "paired" if len(pairs) >= 2 else "welch", "n_pairs": len(pairs)}
    row |= {"stopped": plan["stopped"] if plan else ""}
    flat, per_comparison = [], False
    for which in STATISTICS:
        mine, theirs = g.values(which, metric), base.values(which, metric)
        if not mine or not theirs:
            continue  # no value of this statistic (best of another metric than top-1 with a held-out split)
        diffs, left = paired_values(pairs, which, metric)
        dropped += left
        kk = k.get(which, 1)
        if len(diffs) < 2:
            kind, (d, lo, hi) = "welch", welch_interval(mine, theirs, kk)
        elif which == sized:
            diffs = diffs[: plan["n"]]  # the first N usable pairs in seed order, as the sweep counted them
            per_comparison |= family and not plan.get("family")
            kk = plan.get("k", 1) if plan.get("family") else kk
            kind, (d, lo, hi) = "stein", stein_interval(diffs, plan["s0"], plan["pairs"], kk)
            lo, hi = (math.nan, math.nan) if plan.get("no_spread") else (lo, hi)
        else:
            kind, (d, lo, hi) = "t", paired_interval(diffs, kk)
        spread = kind == "welch" or not (no_spread(diffs) or (kind == "stein" and plan.get("no_spread")))
        flat += [] if spread else [f"{which} ({len(diffs)} equal differences)"]
        row |= {f"d_{which}": d, f"d_{which}_low": lo, f"d_{which}_high": hi, f"interval_{which}": kind}
        row |= {f"no_spread_{which}": str(not spread).lower(), "family_k": kk if family else ""}
        row[f"verdict_{which}"] = verdict(lo, hi, higher_is_better="loss" not in metric)
    used: dict[str, list[str]] = {}
    for which in STATISTICS:
        if row[f"interval_{which}"]:
            used.setdefault(KINDS[row[f"interval_{which}"]], []).append(which)
    label = ", ".join(f"{kind} on {' and '.join(w)}" for kind, w in used.items()) if len(used) > 1 else "".join(used)
    label = "paired" if label == "paired t" else label
    label += "" if row["pairing"] == "welch" else f", {len(pairs)} seeds"
    label += f", stopped: {row['stopped']}" if row["stopped"] else ""
    label += f", family-wise (k = {row['family_k']})" if family else ""
    label += ", sized per comparison" if per_comparison else ""
    label += "".join(f", no spread on {f}" for f in flat)
    label += f", {len(dropped)} pair{'s' * (len(dropped) > 1)} dropped" if dropped else ""
    return row | {"_pairs": pairs, "_dropped": dropped, "_label": label, "_base": base.label}


def family_sizes(groups: list[Group], runs: list[ReportRun], metric: str, baselines: dict, plans: dict) -> dict:
    """k per (baseline, statistic): the rows with a Δ in that column against that baseline."""
    sizes: dict[tuple, int] = {}
    for g in groups:
        base = baselines.get(id(g))
        if isinstance(base, Group) and base is not g:
            row = compare(g, base, runs, metric, plans.get(g.key))
            for which in STATISTICS:
                if row[f"d_{which}"] is not None:
                    sizes[id(base), which] = sizes.get((id(base), which), 0) + 1
    return sizes


def table_rows(
    groups: list[Group],
    runs: list[ReportRun],
    metric: str,
    baselines: dict,
    plans: dict,
    anchors: dict | None,
    family: bool = False,
) -> list[dict]:
    keys = varying_keys(groups)
    sizes = family_sizes(groups, runs, metric, baselines, plans) if family else {}
    rows = []
    for g in groups:
        stats = {which: Stats.of(v) if (v := g.values(which, metric)) else None for which in STATISTICS}
        epochs = [max(r.curves[metric]) for r in g.runs]
        timed = [r.metrics for r in g.runs if r.metrics.get("wall_time_s") and r.metrics.get("epochs")]
        per_epoch = [m["wall_time_s"] / m["epochs"] for m in timed]
        params = [r.metrics["params"] for r in g.runs if r.metrics.get("params")]
        row = {"group": g.label, **{k: dict(g.key).get(k, "") for k in keys}, "n": len(g.runs)}
        for which, s in stats.items():
            row |= {f"{which}_{part}": getattr(s, part) if s else None for part in ("mean", "std", "min", "max")}
        row |= {
            "epochs": _span(epochs),
            "s_per_epoch": round(mean(per_epoch), 2) if per_epoch else None,
            "params": _span(params) if params else "",
        }
        base = baselines.get(id(g))
        k = {which: sizes.get((id(base), which), 1) for which in STATISTICS}
        row |= compare(g, base, runs, metric, plans.get(g.key), k, family)
        row["published"], row["_left_out"] = published(anchors, g)
        row["_stats"] = stats
        rows.append(row)
    return rows


def markdown_table(header: list[str], lines: list[list[str]], right: set[int] = frozenset()) -> str:
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *lines])


def comparison_notes(rows: list[dict], spec: dict, family: bool) -> list[str]:
    compared = [r for r in rows if r["pairing"]]
    used = {r[f"interval_{which}"] for r in compared for which in STATISTICS}
    level = "family-wise " if family else ""
    notes = [
        f"Δ = group − its own baseline (the `baseline` column: {', '.join(f'{k}={v}' for k, v in spec.items())} and "
        f"the group's other choices) with a {CONFIDENCE * 100:.0f} % {level}confidence interval, of the kind the "
        "`interval` column names: better / worse when it excludes 0, can't tell otherwise (or without an interval). "
        "A group whose own baseline is missing says why (no baseline: ...) and gets no Δ."
    ]
    if used & {"t", "stein"}:
        notes.append(
            "paired: a run and its baseline's run at the same seed share initial weights (when the variant adds "
            "no parameters), batches, augmentation and dropout draws; Δ is the mean of the per-seed differences "
            "over the seeds both finished, with a t-interval on n − 1 degrees of freedom (n seeds). Differences "
            f"whose range is below {NO_SPREAD:g} points have no spread: no interval, can't tell."
        )
    if "welch" in used:
        notes.append(
            "Welch: fewer than 2 seeds finished on both sides; Δ = difference of the groups' means, "
            "Welch-t interval (unequal variances)."
        )
    if "stein" in used:
        notes.append(
            "Stein (sweep.seeds=auto), on the statistic the sweep sized: the mean of the first N usable paired "
            "differences in seed order ± t(usable pilot pairs − 1) · s₀ / √N, s₀ from the pilot (sweep.json); it "
            "covers 95 % averaged over the pilot's outcomes (N depends on s₀), not for one variant taken alone "
            "given its N; the other statistics are ordinary paired t. Replaced seeds assume a run's failure is "
            "unrelated to its outcome."
        )
    if family:
        notes.append(
            "family-wise: Bonferroni over the k comparisons with a Δ in that column against the same baseline "
            "(t at 1 − 0.05/(2k)): all k intervals cover together in ≥ 95 % of sweeps. Sized per comparison: the "
            "sweep chose N without it, so the interval is wider than sweep.precision."
        )
    elif len(compared) > 1:
        notes.append(
            f"{len(compared)} comparisons: each interval covers {CONFIDENCE * 100:.0f} % on its own, "
            "not simultaneously (that every one covers is less likely; --family makes them family-wise)."
        )
    return notes


def render(
    rows: list[dict],
    metric: str,
    spec: dict,
    anchors: dict | None,
    unfinished: list[ReportRun],
    plots: list[str],
    held: bool = False,
    family: bool = False,
) -> str:
    name = "top-1" if metric.endswith("acc1") else metric
    header = ["choices", "n"]
    header += [f"{which} {name} [{statistic.split(metric, which, held)}]" for which in STATISTICS]
    header += ["epochs", "s/epoch", "params"]
    level = "95 % family-wise CI" if family else "95 % CI"
    if spec:
        for which in STATISTICS:
            header += [f"Δ {which} ({level})", "verdict"]
        header += ["baseline", "interval"]
    if anchors:
        header += ["published best / final"]
    lines = []
    for r in rows:
        cells = [r["group"], str(r["n"]), *(_pm(r["_stats"][which]) for which in STATISTICS)]
        cells += [r["epochs"], "" if r["s_per_epoch"] is None else f"{r['s_per_epoch']:.1f}", r["params"]]
        if spec:
            for which in STATISTICS:
                cells += [_delta(r, which), r[f"verdict_{which}"]]
            cells += [r["baseline"] if r["_label"] != r["baseline"] else "", r["_label"]]
        if anchors:
            cells.append(r["published"])
        lines.append(cells)
    out = [f"# attnexp report: {metric}", ""]
    words = "; ".join(statistic.describe(which, metric, held) for which in STATISTICS)
    notes = [f"mean ± sample std (min–max) over seeds, n = usable runs (finished, `{metric}` finite); {words}."]
    if held and metric != statistic.TOP1:
        notes.append(
            f"best: none for `{metric}` (with data.val_split > 0 it is {statistic.HELD_OUT_BEST}, top-1 only)."
        )
    if spec:
        notes += comparison_notes(rows, spec, family)
    if anchors:
        notes.append(f"published: {anchors.get('setting', 'reported numbers')} (from the anchors file).")
        left_out = [why for r in rows for why in r["_left_out"]]
        if left_out:
            notes.append("published numbers left out (another setting): " + "; ".join(left_out) + ".")
    out += [f"- {n}" for n in notes] + [""]
    out.append(markdown_table(header, lines, right={1, 2, 3, 4, 6, 7}) if lines else f"(no usable run of `{metric}`)")
    if unfinished:
        out += ["", f"## Not in the statistics ({len(unfinished)} jobs)", ""]
        listed = []
        for r in unfinished:
            listed.append(["/".join(r.dir.parts[-2:]), r.status, str(r.metrics.get("epochs") or 0), reason(r, metric)])
        out.append(markdown_table(["job", "status", "epochs", "reason"], listed))
    dropped = [[r["group"], r["_base"], seed, why] for r in rows for seed, why in r["_dropped"]]
    if dropped:
        out += ["", f"## Pairs dropped ({len(dropped)}): a run out of the statistics takes its seed's pair out", ""]
        out.append(markdown_table(["choices", "baseline", "seed", "why"], dropped))
    for p in plots:
        out += ["", f"![{Path(p).stem}]({Path(p).name})"]
    return "\n".join(out) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    fields = [k for k in rows[0] if not k.startswith("_")] if rows else ["group"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _band(runs: list[ReportRun], tag: str):
    """(epochs, mean, min, max) over the runs; a run missing an epoch (NaN in the runs × epochs grid)
    does not count there."""
    import numpy as np

    epochs = sorted({e for r in runs for e in r.curves.get(tag, {})})
    grid = np.array([[r.curves.get(tag, {}).get(e, np.nan) for e in epochs] for r in runs], dtype=float)
    return epochs, np.nanmean(grid, 0), np.nanmin(grid, 0), np.nanmax(grid, 0)


@contextmanager
def _figure(path: Path, figsize: tuple[float, float], columns: int = 1):
    """Axes (one, or a row of `columns`) of a new figure, saved to `path` at the end of the block."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    yield fig.subplots(1, columns)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_curves(groups: list[Group], metric: str, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    with _figure(path, (12, 4.5), columns=2) as axes:
        for i, g in enumerate(groups):
            color = f"C{i % 10}"
            for ax, tag in zip(axes, (metric, LOSS_TAG)):
                epochs, m, lo, hi = _band(g.runs, tag)
                if not epochs:
                    continue
                label = f"{g.label} (n={len(g.runs)})"
                ax.plot(epochs, m, color=color, marker="o" if len(epochs) < 4 else None, label=label)
                ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, linewidth=0)
        for ax, tag in zip(axes, (metric, LOSS_TAG)):
            ax.set(xlabel="epoch", ylabel=tag, title=f"{tag}: mean over seeds, band = min–max")
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].legend(fontsize="small")


def epoch_differences(pairs: list[tuple[ReportRun, ReportRun]], metric: str):
    """(epochs, (mean, low, high), simultaneous): per epoch, the paired t-interval of the differences
    at the pairs that logged it; `simultaneous` = (epochs every pair logged, low, high) of the 95 %
    band over those epochs at once (sign-flip max-t), None with fewer than 6 pairs."""
    import numpy as np

    curves = [(a.curves[metric], b.curves[metric]) for a, b in pairs]
    epochs = sorted({e for a, b in curves for e in a.keys() & b.keys()})
    bands = [paired_interval([a[e] - b[e] for a, b in curves if e in a and e in b]) for e in epochs]
    common = [e for e in epochs if all(e in a and e in b for a, b in curves)]
    grid = np.array([[a[e] - b[e] for e in common] for a, b in curves], dtype=float)
    c = simultaneous_band(grid) if common else None
    simultaneous = None
    if c is not None:
        centre, half = grid.mean(axis=0), c * grid.std(axis=0, ddof=1) / math.sqrt(len(grid))
        simultaneous = (common, centre - half, centre + half)
    return epochs, np.array(bands, dtype=float).reshape(-1, 3).T, simultaneous


def plot_diff(rows: list[dict], metric: str, path: Path) -> bool:
    """Per epoch, each paired variant's mean difference from its baseline with its 95 % pointwise
    paired-t band and, with ≥ 6 pairs, the 95 % simultaneous band over the epochs shown (dashed)."""
    paired = [r for r in rows if r["pairing"] == "paired"]
    if not paired:
        return False
    with _figure(path, (6.5, 4.5)) as ax:
        for i, r in enumerate(paired):
            color = f"C{i % 10}"
            epochs, (d, lo, hi), simultaneous = epoch_differences(r["_pairs"], metric)
            label = f"{r['group']} − {r['_base']} ({r['n_pairs']} seeds)"
            label += "" if simultaneous else "; no simultaneous band: n < 6"
            ax.plot(epochs, d, color=color, marker="o" if len(epochs) < 4 else None, label=label)
            ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, linewidth=0)
            if simultaneous:
                at, low, high = simultaneous
                ax.plot(at, low, color=color, linestyle="--", linewidth=1)
                ax.plot(at, high, color=color, linestyle="--", linewidth=1)
        ax.axhline(0, color="k", linewidth=1)
        title = (
            f"{metric}: mean paired difference from the baseline\nshaded: 95 % paired t per epoch; "
            "dashed: 95 % over all epochs at once (sign-flip max-t)"
        )
        ax.set(xlabel="epoch", ylabel=f"Δ {metric}", title=title)
        ax.title.set_fontsize("small")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return True


def plot_trend(groups: list[Group], metric: str, x: str, baselines: dict, path: Path) -> bool:
    """Best and final metric against a numeric choice: mean ± std per value, the baseline as a line."""

    def number(g: Group) -> float | None:
        try:
            return float(g.first().value(x))
        except (TypeError, ValueError):
            return None

    others = [k for k in varying_keys(groups) if k != x]
    series: dict[str, list[Group]] = {}
    for g in groups:
        if number(g) is not None:
            series.setdefault(", ".join(f"{k}={dict(g.key).get(k, '')}" for k in others) or x, []).append(g)
    if not series:
        return False
    refs = {id(b): b for b in baselines.values() if isinstance(b, Group)}.values()
    with _figure(path, (12, 4.5), columns=2) as axes:
        for ax, which in zip(axes, ("best", "final")):
            for i, (label, members) in enumerate(series.items()):
                members = sorted(members, key=number)
                members = [g for g in members if g.values(which, metric)]
                stats = [Stats.of(g.values(which, metric)) for g in members]
                ax.errorbar(
                    [number(g) for g in members],
                    [s.mean for s in stats],
                    yerr=[s.std or 0 for s in stats],
                    marker="o",
                    capsize=3,
                    color=f"C{i % 10}",
                    label=label,
                )
            for j, b in enumerate(r for r in refs if r.values(which, metric)):
                s = Stats.of(b.values(which, metric))
                label = f"baseline {b.label} (n={s.n})" if j == 0 else None
                ax.axhline(s.mean, color="k", linestyle="--", linewidth=1, label=label)
                if s.std:
                    ax.axhspan(s.mean - s.std, s.mean + s.std, color="k", alpha=0.08)
            ax.set(xlabel=x, ylabel=f"{which} {metric}", title=f"{which} {metric}: mean ± std over seeds")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize="small")
    return True


def plot_alpha(groups: list[Group], metric: str, path: Path) -> bool:
    """The metric at each epoch's end against α there, for the groups whose α moved (a remix
    fine-tune's ramp); the other groups' best as dashed lines (the control)."""
    ramps = {id(g) for g in groups if any(len(set(r.curves.get(ALPHA_TAG, {}).values())) > 1 for r in g.runs)}
    if not ramps:
        return False
    with _figure(path, (6.5, 4.5)) as ax:
        for i, g in enumerate(groups):
            color = f"C{i % 10}"
            if id(g) in ramps:
                epochs, alpha, _, _ = _band(g.runs, ALPHA_TAG)
                scored, value, _, _ = _band(g.runs, metric)
                at = dict(zip(epochs, alpha))
                points = [(at[e], v) for e, v in zip(scored, value) if e in at]
                ax.plot(*zip(*points), marker="o", color=color, label=f"{g.label} (n={len(g.runs)})")
            elif g.values("best", metric):
                best = Stats.of(g.values("best", metric))
                ax.axhline(best.mean, color=color, linestyle="--", linewidth=1, label=f"{g.label}: best (n={best.n})")
        ax.set(xlabel="α at the epoch's end", ylabel=metric, title=f"{metric} against α (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return True


def seed003_table(runs: list[ReportRun], metric: str) -> tuple[list[str], list[list[str]], str]:
    """Model Type | Dataset | Max Accuracy | Average Inference Time (ms) | Parameters, in the seed's order."""
    cells: dict[tuple[str, str], list[ReportRun]] = {}
    for r in runs:
        if usable(r, metric):
            cells.setdefault((r.choices.get("model", "?"), r.choices.get("data", "?")), []).append(r)

    def model_type(choice: str) -> str:
        base = choice.removesuffix("_seed003")
        return MODEL_TYPES.get(base, base) + (" (seed 003)" if base != choice else "")

    def order(item) -> tuple:
        (model, data), _ = item
        base = model.removesuffix("_seed003")
        rank = list(MODEL_TYPES).index(base) if base in MODEL_TYPES else len(MODEL_TYPES)
        drank = list(DATASETS).index(data) if data in DATASETS else len(DATASETS)
        return rank, base, model, drank, data

    header = ["Model Type", "Dataset", "Max Accuracy", "Average Inference Time (ms)", "Parameters"]
    lines, batches, seeds = [], set(), set()
    for (model, data), members in sorted(cells.items(), key=order):
        best = mean(max(r.curves[metric].values()) for r in members)
        ms = [
            r.metrics["inference_ms_per_batch"] for r in members if r.metrics.get("inference_ms_per_batch") is not None
        ]
        batches |= {r.metrics.get("inference_batch_size") for r in members if r.metrics.get("inference_batch_size")}
        params = [r.metrics["params"] for r in members if r.metrics.get("params")]
        seeds.add(len(members))
        timing = f"{mean(ms):.2f}" if ms else ""
        lines.append(
            [model_type(model), DATASETS.get(data, data), f"{best:.2f}", timing, _span(params) if params else ""]
        )
    note = (
        f"Max Accuracy: best `{metric}` over the epochs"
        + (" (mean over seeds)" if seeds - {1} else "")
        + "; Average Inference Time: ms per evaluation batch"
        + (f" of {', '.join(str(b) for b in sorted(batches))} images" if batches else "")
        + ", after warm-up, on the training device; Parameters: trainable."
    )
    return header, lines, note


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnexp-report",
        description="Summarise runs and sweeps: mean ± std over seeds per group of choices, "
        "a paired (or Welch-t) comparison against a baseline, and learning curves.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="sweep or run folders (searched recursively)")
    p.add_argument(
        "--baseline",
        action="append",
        metavar="KEY=VALUE",
        help="the group to compare against, e.g. seqpool=x (repeatable; default: an adaptive sweep's sweep.baseline)",
    )
    p.add_argument("--metric", default="val/acc1", help="TensorBoard tag to summarise (default: val/acc1)")
    p.add_argument("--out", help="folder for report.md, report.csv and the PNGs (default: the first DIR)")
    p.add_argument(
        "--anchors", metavar="FILE", help="published numbers (YAML), or a shipped name: " + ", ".join(shipped_anchors())
    )
    p.add_argument(
        "--mix-recipes",
        action="store_true",
        help="compare runs of different recipes or precisions anyway (refused by default)",
    )
    p.add_argument(
        "--family",
        action="store_true",
        help="family-wise intervals: Bonferroni over the rows compared with each baseline (default: an adaptive "
        "sweep's sweep.family)",
    )
    p.add_argument("--x", metavar="KEY", help="a numeric choice (e.g. alpha.value): draw trend.png against it")
    p.add_argument(
        "--table", choices=["seed003"], help="print a fixed-format table instead (seed003: Model Type | Dataset | ...)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return report(args)
    except ReportError as e:
        print(f"attnexp-report: error: {e}", file=sys.stderr)
        return 2


def report(args: argparse.Namespace) -> int:
    spec = parse_pairs(args.baseline, "--baseline")
    anchors = load_anchors(args.anchors)
    out = Path(args.out or args.dirs[0])
    runs = find_runs(args.dirs, args.metric)
    if not runs:
        raise ReportError(f"no run folders (with .hydra/config.yaml) under {', '.join(args.dirs)}")
    out.mkdir(parents=True, exist_ok=True)
    if args.table == "seed003":
        header, lines, note = seed003_table(runs, args.metric)
        text = markdown_table(header, lines, right={2, 3, 4}) + "\n\n" + note + "\n"
        (out / "seed003.md").write_text(text)
        with open(out / "seed003.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, *lines])
        print(text, end="")
        return 0

    check_recipes(runs, args.mix_recipes)
    check_splits(runs)
    adaptive = adaptive_records(args.dirs)
    spec = spec or next((dict(a["baseline"]) for a in adaptive if a.get("baseline")), {})
    family = args.family or any(a.get("family") for a in adaptive)
    plans = {
        group_key(c["overrides"]): c | {k: a.get(k) for k in ("metric", "statistic", "family")}
        for a in adaptive
        for c in a.get("comparisons") or []
    }
    groups = make_groups(runs, args.metric)
    baselines = baselines_for(groups, spec, runs, args.metric)
    if spec and not any(
        all(r.value(k) is not None and same_value(r.value(k), v) for k, v in spec.items()) for r in runs
    ):
        wanted, labels = " ".join(f"{k}={v}" for k, v in spec.items()), "; ".join(g.label for g in groups)
        raise ReportError(f"--baseline {wanted}: no group matches (groups: {labels})")
    groups.sort(key=lambda g: baselines.get(id(g)) is not g)  # baseline rows first, then by choices
    rows = table_rows(groups, runs, args.metric, baselines, plans, anchors, family)
    held = any(r.held_out for r in runs if r.status == "done")
    grouped = {id(r) for g in groups for r in g.runs}
    unfinished = [r for r in runs if id(r) not in grouped]
    plots = []
    if groups:
        plot_curves(groups, args.metric, out / "curves.png")
        plots.append(str(out / "curves.png"))
        if plot_diff(rows, args.metric, out / "diff.png"):
            plots.append(str(out / "diff.png"))
        if plot_alpha(groups, args.metric, out / "alpha.png"):
            plots.append(str(out / "alpha.png"))
        if args.x and plot_trend(groups, args.metric, args.x, baselines, out / "trend.png"):
            plots.append(str(out / "trend.png"))
        elif args.x:
            print(f"attnexp-report: --x {args.x}: no group has a numeric value for it; no trend.png", file=sys.stderr)
    text = render(rows, args.metric, spec, anchors, unfinished, plots, held, family)
    (out / "report.md").write_text(text)
    write_csv(rows, out / "report.csv")
    print(text, end="")
    print(f"\nwrote {out / 'report.md'}, {out / 'report.csv'}" + "".join(f", {p}" for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
