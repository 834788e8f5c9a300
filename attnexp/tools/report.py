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
from attnexp.sweep.compare import CONFIDENCE, paired_interval, pick_baselines, stein_interval, summarize, welch_interval
from attnexp.sweep.manifest import read_adaptive, read_manifest
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
        return [summarize(r.curves[metric], which, metric) for r in self.runs]


def make_groups(runs: list[ReportRun], metric: str) -> list[Group]:
    by_key: dict[tuple, list[ReportRun]] = {}
    for r in runs:
        if r.status == "done" and metric in r.curves:
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


def baselines_for(groups: list[Group], spec: dict[str, str]) -> dict[int, Group | None]:
    """For each group, the baseline group it is compared with (compare.pick_baselines)."""
    if not spec:
        return {id(g): None for g in groups}
    keys = varying_keys(groups)
    items = [{k: g.first().value(k) for k in [*spec, *keys]} for g in groups]
    picked = pick_baselines(items, spec, keys)
    return {id(g): None if p is None else groups[p] for g, p in zip(groups, picked)}


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


def _pm(s: Stats) -> str:
    return f"{s.mean:.2f} ± {s.std:.2f}" if s.std is not None else f"{s.mean:.2f}"


def _span(values: list) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def _delta(row: dict, which: str) -> str:
    diff, lo, hi = row[f"d_{which}"], row[f"d_{which}_low"], row[f"d_{which}_high"]
    if diff is None:
        return "—"
    return f"{diff:+.2f}" + ("" if math.isnan(lo) else f" [{lo:+.2f}, {hi:+.2f}]")


def reason(run: ReportRun, metric: str) -> str:
    """Why a run is not in the statistics: its recorded reason, or a finished run's missing metric."""
    return run.reason or (f"no `{metric}` logged" if run.status == "done" else "")


def why_not(run: ReportRun, metric: str) -> str:
    """A run's status and, when there is one, its reason."""
    why = reason(run, metric)
    return f"{run.status}: {why}" if why else run.status


def pair_up(g: Group, base: Group, runs: list[ReportRun], metric: str) -> tuple[list[tuple], list[tuple]]:
    """((run, baseline run) at each seed both finished, (seed, why) for each other seed both have)."""
    done = {id(r) for r in g.runs + base.runs}

    def at(group: Group) -> dict[str, ReportRun]:  # a finished run wins over an unfinished one at its seed
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


KINDS = {"t": "paired t", "stein": "Stein", "welch": "Welch"}


def compare(g: Group, base: Group | None, runs: list[ReportRun], metric: str, plan: dict | None) -> dict:
    """Δ best and Δ final against the baseline: over the per-seed differences when ≥ 2 seeds paired
    (Stein's interval for an adaptive sweep's sized statistic), Welch's otherwise."""
    row = {}
    for which in ("best", "final"):
        row |= {f"d_{which}": None, f"d_{which}_low": None, f"d_{which}_high": None}
        row[f"verdict_{which}"] = "baseline" if base is g else ""
    row |= dict.fromkeys(["pairing", "n_pairs", "stopped", "interval_best", "interval_final", "no_spread"], "")
    row |= {"_pairs": [], "_dropped": [], "_label": "", "_base": ""}
    if base is None or base is g:
        return row
    pairs, dropped = pair_up(g, base, runs, metric)
    if plan and group_key(plan["baseline_overrides"]) != base.key:
        plan = None  # compared with another baseline than the sweep sized it against
    stein = plan and plan["metric"] == metric and plan["s0"] is not None and len(pairs) >= 2
    row |= {"pairing": "paired" if len(pairs) >= 2 else "welch", "n_pairs": len(pairs)}
    row |= {"stopped": plan["stopped"] if plan else "", "no_spread": str(bool(stein and plan["s0"] == 0)).lower()}
    for which in ("best", "final"):
        if len(pairs) < 2:
            kind, (d, lo, hi) = "welch", welch_interval(g.values(which, metric), base.values(which, metric))
        else:
            diffs = [
                summarize(a.curves[metric], which, metric) - summarize(b.curves[metric], which, metric)
                for a, b in pairs
            ]
            if stein and which == plan["statistic"]:
                kind, (d, lo, hi) = "stein", stein_interval(diffs, plan["s0"], plan["pairs"])
            else:
                kind, (d, lo, hi) = "t", paired_interval(diffs)
        row |= {f"d_{which}": d, f"d_{which}_low": lo, f"d_{which}_high": hi, f"interval_{which}": kind}
        row[f"verdict_{which}"] = verdict(lo, hi, higher_is_better="loss" not in metric)
    kinds = [KINDS[row["interval_best"]], KINDS[row["interval_final"]]]
    label = kinds[0] if kinds[0] == kinds[1] else f"{kinds[0]} on best, {kinds[1]} on final"
    label = "paired" if label == "paired t" else label
    label += "" if row["pairing"] == "welch" else f", {len(pairs)} seeds"
    label += f", stopped: {row['stopped']}" if row["stopped"] else ""
    label += ", no spread in pilot" if row["no_spread"] == "true" else ""
    label += f", {len(dropped)} pair{'s' * (len(dropped) > 1)} dropped" if dropped else ""
    return row | {"_pairs": pairs, "_dropped": dropped, "_label": label, "_base": base.label}


def table_rows(
    groups: list[Group], runs: list[ReportRun], metric: str, baselines: dict, plans: dict, anchors: dict | None
) -> list[dict]:
    keys = varying_keys(groups)
    rows = []
    for g in groups:
        best, final = Stats.of(g.values("best", metric)), Stats.of(g.values("final", metric))
        epochs = [max(r.curves[metric]) for r in g.runs]
        timed = [r.metrics for r in g.runs if r.metrics.get("wall_time_s") and r.metrics.get("epochs")]
        per_epoch = [m["wall_time_s"] / m["epochs"] for m in timed]
        params = [r.metrics["params"] for r in g.runs if r.metrics.get("params")]
        row = {"group": g.label, **{k: dict(g.key).get(k, "") for k in keys}, "n": best.n}
        for which, s in (("best", best), ("final", final)):
            row |= {f"{which}_mean": s.mean, f"{which}_std": s.std, f"{which}_min": s.min, f"{which}_max": s.max}
        row |= {
            "epochs": _span(epochs),
            "s_per_epoch": round(mean(per_epoch), 2) if per_epoch else None,
            "params": _span(params) if params else "",
        }
        row |= compare(g, baselines.get(id(g)), runs, metric, plans.get(g.key))
        row["published"], row["_left_out"] = published(anchors, g)
        row["_best"], row["_final"] = best, final
        rows.append(row)
    return rows


def markdown_table(header: list[str], lines: list[list[str]], right: set[int] = frozenset()) -> str:
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *lines])


def comparison_notes(rows: list[dict], spec: dict) -> list[str]:
    compared = [r for r in rows if r["pairing"]]
    used = {r[f"interval_{which}"] for r in compared for which in ("best", "final")}
    notes = [
        f"Δ = group − baseline ({', '.join(f'{k}={v}' for k, v in spec.items())}) with a {CONFIDENCE * 100:.0f} % "
        "confidence interval, of the kind the `interval` column names: better / worse when it excludes 0, "
        "can't tell otherwise (or without an interval)."
    ]
    if used & {"t", "stein"}:
        notes.append(
            "paired: a run and its baseline's run at the same seed share initial weights (when the variant adds "
            "no parameters), batches, augmentation and dropout draws; Δ is the mean of the per-seed differences "
            "over the seeds both finished, with a t-interval on n − 1 degrees of freedom (n seeds). diff.png: "
            "the same per epoch (ordinary paired t)."
        )
    if "welch" in used:
        notes.append(
            "Welch: fewer than 2 seeds finished on both sides; Δ = difference of the groups' means, "
            "Welch-t interval (unequal variances)."
        )
    if "stein" in used:
        notes.append(
            "Stein (sweep.seeds=auto), on the statistic the sweep sized: the mean of the N paired differences "
            "± t(pilot pairs − 1) · s₀ / √N, s₀ from the pilot (sweep.json); it covers 95 % averaged over the "
            "pilot's outcomes (N depends on s₀), not for one variant taken alone given its N; the other "
            "statistic is an ordinary paired t. No spread in pilot: the pilot's differences were all equal, "
            "the interval is [d, d]."
        )
    if len(compared) > 1:
        notes.append(
            f"{len(compared)} comparisons, {len(compared)} intervals: each covers {CONFIDENCE * 100:.0f} % on its own, "
            "not simultaneously (that every one covers is less likely)."
        )
    return notes


def render(
    rows: list[dict], metric: str, spec: dict, anchors: dict | None, unfinished: list[ReportRun], plots: list[str]
) -> str:
    name = "top-1" if metric.endswith("acc1") else metric
    header = ["choices", "n", f"best {name}", "(min–max)", f"final {name}", "(min–max)", "epochs", "s/epoch", "params"]
    if spec:
        header += ["Δ best (95 % CI)", "verdict", "Δ final (95 % CI)", "verdict", "interval"]
    if anchors:
        header += ["published best / final"]
    lines = []
    for r in rows:
        cells = [r["group"], str(r["n"])]
        for s in (r["_best"], r["_final"]):
            cells += [_pm(s), f"{s.min:.2f}–{s.max:.2f}"]
        cells += [r["epochs"], "" if r["s_per_epoch"] is None else f"{r['s_per_epoch']:.1f}", r["params"]]
        if spec:
            for which in ("best", "final"):
                cells += [_delta(r, which), r[f"verdict_{which}"]]
            cells.append(r["_label"])
        if anchors:
            cells.append(r["published"])
        lines.append(cells)
    out = [f"# attnexp report: {metric}", ""]
    notes = [
        "mean ± sample std over seeds (n = finished runs), best = best epoch, final = last epoch, "
        f"from TensorBoard `{metric}`."
    ]
    if spec:
        notes += comparison_notes(rows, spec)
    if anchors:
        notes.append(f"published: {anchors.get('setting', 'reported numbers')} (from the anchors file).")
        left_out = [why for r in rows for why in r["_left_out"]]
        if left_out:
            notes.append("published numbers left out (another setting): " + "; ".join(left_out) + ".")
    out += [f"- {n}" for n in notes] + [""]
    out.append(
        markdown_table(header, lines, right={1, 2, 4, 7, 8}) if lines else f"(no finished run logged `{metric}`)"
    )
    if unfinished:
        out += ["", f"## Not in the statistics ({len(unfinished)} jobs)", ""]
        listed = []
        for r in unfinished:
            listed.append(["/".join(r.dir.parts[-2:]), r.status, str(r.metrics.get("epochs") or 0), reason(r, metric)])
        out.append(markdown_table(["job", "status", "epochs", "reason"], listed))
    dropped = [[r["group"], r["_base"], seed, why] for r in rows for seed, why in r["_dropped"]]
    if dropped:
        out += ["", f"## Pairs dropped ({len(dropped)}): a run that did not finish takes its seed's pair out", ""]
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
    """(epochs, (mean, low, high)): per epoch, the paired t-interval of the differences at the pairs
    that logged it."""
    import numpy as np

    curves = [(a.curves[metric], b.curves[metric]) for a, b in pairs]
    epochs = sorted({e for a, b in curves for e in a.keys() & b.keys()})
    bands = [paired_interval([a[e] - b[e] for a, b in curves if e in a and e in b]) for e in epochs]
    return epochs, np.array(bands, dtype=float).reshape(-1, 3).T


def plot_diff(rows: list[dict], metric: str, path: Path) -> bool:
    """Per epoch, each paired variant's mean difference from its baseline with a 95 % paired-t band."""
    paired = [r for r in rows if r["pairing"] == "paired"]
    if not paired:
        return False
    with _figure(path, (6.5, 4.5)) as ax:
        for i, r in enumerate(paired):
            epochs, (d, lo, hi) = epoch_differences(r["_pairs"], metric)
            label = f"{r['group']} − {r['_base']} ({r['n_pairs']} seeds)"
            ax.plot(epochs, d, color=f"C{i % 10}", marker="o" if len(epochs) < 4 else None, label=label)
            ax.fill_between(epochs, lo, hi, color=f"C{i % 10}", alpha=0.2, linewidth=0)
        ax.axhline(0, color="k", linewidth=1)
        title = f"{metric}: mean paired difference from the baseline\nband = 95 % paired t per epoch"
        ax.set(xlabel="epoch", ylabel=f"Δ {metric}", title=title)
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
    refs = {id(b): b for b in baselines.values() if b is not None}.values()
    with _figure(path, (12, 4.5), columns=2) as axes:
        for ax, which in zip(axes, ("best", "final")):
            for i, (label, members) in enumerate(series.items()):
                members = sorted(members, key=number)
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
            for j, b in enumerate(refs):
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
            else:
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
        if r.status == "done" and metric in r.curves:
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
    adaptive = adaptive_records(args.dirs)
    spec = spec or next((dict(a["baseline"]) for a in adaptive if a.get("baseline")), {})
    plans = {
        group_key(c["overrides"]): c | {k: a[k] for k in ("metric", "statistic")}
        for a in adaptive
        for c in a.get("comparisons") or []
    }
    groups = make_groups(runs, args.metric)
    baselines = baselines_for(groups, spec)
    if spec and groups and not any(b is not None for b in baselines.values()):
        wanted, labels = " ".join(f"{k}={v}" for k, v in spec.items()), "; ".join(g.label for g in groups)
        raise ReportError(f"--baseline {wanted}: no group matches (groups: {labels})")
    groups.sort(key=lambda g: baselines.get(id(g)) is not g)  # baseline rows first, then by choices
    rows = table_rows(groups, runs, args.metric, baselines, plans, anchors)
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
    text = render(rows, args.metric, spec, anchors, unfinished, plots)
    (out / "report.md").write_text(text)
    write_csv(rows, out / "report.csv")
    print(text, end="")
    print(f"\nwrote {out / 'report.md'}, {out / 'report.csv'}" + "".join(f", {p}" for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
