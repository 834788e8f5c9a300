"""The nodes no constructor describes, typed by hand (torch-free): the root's own knobs, `paths`,
`compute`, `recipe`, `sweep` and `timing`. The built groups' schemas are generated from their
constructors (attnexp/config/schema.py); the root holds each group's node as `Any`, typed there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from attnexp.config.schema import Choice, register


class Mode(Choice):
    train = "train"
    eval = "eval"  # needs ckpt_path
    summary = "summary"  # counts, no data, no training


class Pack(Choice):  # what a pack's members may differ in
    seed = "seed"
    alpha = "alpha"


class Seeds(Choice):
    auto = "auto"  # Stein's two-stage sweep: as many seeds as sweep.precision needs (attnexp/sweep/adaptive.py)


class Statistic(Choice):  # attnexp/sweep/statistic.py says what each is, and when each is refused
    final = "final"  # the last epoch's value of sweep.metric
    mean = "mean"  # its mean over the epochs: the learning curve as one number
    best = "best"  # data.val_split > 0: test top-1 at the best validation epoch; = 0: max over epochs (optimistic)


@dataclass
class PathsSchema:
    data_dir: str = "data"
    output_dir: Optional[str] = None
    reuse_roots: List[str] = field(default_factory=list)


@dataclass
class ComputeSchema:
    """How this machine runs the job: attnexp's own knobs, not Lightning's."""

    num_threads: Optional[int] = None  # torch.set_num_threads; None = torch's default
    compile: bool = False  # torch.compile the backbone
    matmul_precision: str = "high"


@dataclass
class RecipeSchema:
    """recipe=fast|official: what the two recipes set beyond other groups' keys (conf/recipe/)."""

    name: str = "fast"
    autoaugment: str = "cifar10"  # data.augment.autoaugment of the CIFAR configs
    smooth_eval_loss: bool = False  # label smoothing on the evaluation loss too (official script)


@dataclass
class SweepSchema:
    resume: bool = False
    reuse: Any = True  # true | false | verify (attnexp/sweep/reuse.py)
    dry_run: bool = False
    swept: List[str] = field(default_factory=list)  # set by the CLI: the keys this sweep varies
    pack: Optional[Pack] = None  # train the jobs that differ only in it as one vectorised job
    members: List[int] = field(default_factory=list)  # set by attnexp: a pack's jobs (places in sweep.json)
    # sweep.seeds=auto (docs/sweeps.md): a pilot of seeds 0..pilot-1, then each variant to the N its
    # paired differences with the baseline need for a 95 % interval of half-width `precision`
    seeds: Optional[Seeds] = None
    pilot: int = 5
    max_seeds: int = 20
    precision: Optional[float] = None  # in points of `statistic` of the TensorBoard tag `metric`
    metric: str = "val/acc1"
    statistic: Optional[Statistic] = None  # None: best for val/acc1 with data.val_split > 0, final otherwise
    family: bool = False  # Bonferroni over the variants compared with each baseline (sizing and intervals)
    baseline: Any = None  # the baseline's choices: 'sweep.baseline={seqpool:x}'


@dataclass
class TimingSchema:
    # time seed 003's inference (ms per evaluation batch) after training; costs seven forwards of a full batch
    inference: bool = False


@dataclass
class RootSchema:
    """The top level: its own knobs, and the group nodes (each typed by its own schema)."""

    mode: Mode = Mode.train
    seed: int = 0
    ckpt_path: Optional[str] = None
    label_smoothing: float = 0.1
    required: List[str] = field(default_factory=list)
    sweep: SweepSchema = field(default_factory=SweepSchema)
    data: Any = None
    model: Any = None
    attention: Any = None
    seqpool: Any = None
    alpha: Any = None
    optimizer: Any = None
    scheduler: Any = None
    trainer: Any = None
    logger: Any = None
    paths: Any = None
    compute: ComputeSchema = field(default_factory=ComputeSchema)
    recipe: RecipeSchema = field(default_factory=RecipeSchema)
    timing: TimingSchema = field(default_factory=TimingSchema)
    callbacks: Any = None
    # experiment=convnn_ablation: which of its lines (a key of convnn_lines) the attention keys read
    convnn_line: Optional[str] = None
    convnn_lines: Any = None


NODES: dict[str, type] = {"root": RootSchema, "paths/paths": PathsSchema}
register(NODES)
