"""Structured-config schemas: the type of every knob, so a wrong type or an unknown key fails
while Hydra composes, before torch is imported.

One dataclass per constructor a config group targets; its fields are exactly
that constructor's parameters (tests/test_schemas.py asserts it), plus
`_target_` / `_partial_`, minus what the code injects (`INJECTED`), plus keys
another object consumes (`ROUTED`). Values are checked by the constructors
themselves when the preflight builds the job; nothing here restates a range.

Each yaml attaches its schema through its defaults list
(`- /schema/<group>/<name>@_here_`). They live in the `schema/` tree of
Hydra's ConfigStore, which attnexp's help and "available:" lists never show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from hydra.core.config_store import ConfigStore

# ---------------------------------------------------------------- data


@dataclass
class ImageDataSchema:
    _target_: str = "attnexp.data.datamodule.ImageDataModule"
    name: str = "cifar10"
    root: str = "data"
    download: bool = False
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    batch_size: int = 128
    eval_batch_size: int = 128
    num_workers: int = 0
    val_split: float = 0.0
    mean: List[float] = field(default_factory=list)
    std: List[float] = field(default_factory=list)
    loader: str = "auto"
    augment: Any = None
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    INJECTED: ClassVar[tuple] = ("seed",)  # the run's seed (top-level `seed`)


# ---------------------------------------------------------------- models


@dataclass
class CompactTransformerSchema:
    _target_: str = "attnexp.models.cct.CompactTransformer"
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    dim: int = 256
    num_layers: int = 7
    num_heads: int = 4
    mlp_ratio: float = 2.0
    tokenizer: str = "conv"
    kernel_size: int = 3
    n_conv_layers: int = 1
    patch_size: int = 4
    pooling: str = "seqpool"
    positional_embedding: str = "learnable"
    dropout: float = 0.0
    attn_drop: float = 0.1
    drop_path: float = 0.1
    attn_layer: Any = None
    seqpool_value: Any = None
    layout: str = "cct"
    qkv_bias: bool = False
    pretrained: Optional[str] = None
    official_name: Optional[str] = None
    ROUTED: ClassVar[tuple] = ("pretrained", "official_name")  # read by attnexp.build, not the constructor


@dataclass
class CNNSchema:
    _target_: str = "attnexp.models.cnn.CNN"
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    hidden_dim: int = 128
    feature_dropout: float = 0.25
    hidden_dropout: float = 0.5
    pretrained: Optional[str] = None
    ROUTED: ClassVar[tuple] = ("pretrained",)


@dataclass
class ViTSchema:
    _target_: str = "attnexp.models.vit.ViT"
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    patches_per_side: int = 2
    declared_image_size: Any = None  # null | an integer | pixel_count
    dim: int = 128
    num_layers: int = 6
    num_heads: int = 4
    head_dim: int = 64
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    attn_drop: float = 0.1
    emb_dropout: float = 0.1
    reattention: bool = False
    attn_layer: Any = None
    pretrained: Optional[str] = None
    ROUTED: ClassVar[tuple] = ("pretrained",)


@dataclass
class HybridSchema(ViTSchema):
    _target_: str = "attnexp.models.vit.Hybrid"
    in_channels: int = 1
    image_size: int = 28
    FORWARDS_TO: ClassVar[str] = "attnexp.models.vit.ViT"  # Hybrid(**vit_options) hands the rest on


# ---------------------------------------------------------------- attention (attnexp/layers/contract.py)
# The contract's keywords are null here: the backbone passes them; a value set in the
# config wins over the backbone's (layers.block.bind_attention).


@dataclass
class TimmViTSchema:
    _target_: str = "attnexp.models.timm_vit.TimmViT"
    name: str = "vit_tiny_patch16_224"
    num_classes: int = 10
    in_channels: int = 3
    image_size: Optional[int] = None
    pretrained: Any = None  # true (timm's weights) or a PATH
    drop_path_rate: float = 0.0
    backbone_lr_scale: float = 1.0
    kwargs: Dict[str, Any] = field(default_factory=dict)
    attn_layer: Any = None


@dataclass
class ContractSchema:
    _partial_: bool = True
    dim: Optional[int] = None
    num_heads: Optional[int] = None
    head_dim: Optional[int] = None
    qkv_bias: Optional[bool] = None
    attn_drop: Optional[float] = None
    proj_drop: Optional[float] = None
    layers: Optional[List[int]] = None
    ROUTED: ClassVar[tuple] = ("layers",)  # read by the backbone (layers.block.attention_per_block)


@dataclass
class AttentionSchema(ContractSchema):
    _target_: str = "attnexp.layers.attention.Attention"
    scale: Optional[float] = None
    impl: str = "auto"
    value_map: Any = None
    reattention: Optional[bool] = None


@dataclass
class ConvNNAttentionSchema(ContractSchema):
    _target_: str = "attnexp.layers.convnn.ConvNNAttention"
    K: int = 9
    similarity: str = "cosine"
    projection: str = "kqv"
    softmax_similarity: bool = False
    topk_softmax: bool = False
    topk_normalize: bool = False
    temperature: float = 1.0
    sampling: str = "all"
    samples: Optional[int] = None
    prime_conv: str = "regular"
    prime_dropout: bool = True
    head_layout: str = "split"
    branch: str = "none"
    branch_ratio: float = 0.5


# ---------------------------------------------------------------- value maps (seqpool group)


@dataclass
class PlainMapSchema:
    _target_: str = "attnexp.layers.value_maps.Identity"


@dataclass
class ScaledMapSchema:
    _target_: str = "attnexp.layers.value_maps.TokenSoftmax"
    scale: float = 1.0


@dataclass
class AlphaMapSchema:
    _target_: str = "attnexp.layers.value_maps.Remix"
    alpha: Optional[float] = None  # null: driven by the alpha schedule


# ---------------------------------------------------------------- α schedules (attnexp/schedules.py)


@dataclass
class AlphaScheduleSchema:
    unit: str = "epoch"
    allow_extrapolation: bool = False


@dataclass
class ConstantAlphaSchema(AlphaScheduleSchema):
    _target_: str = "attnexp.schedules.ConstantAlpha"
    value: float = 0.0


@dataclass
class RampAlphaSchema(AlphaScheduleSchema):
    _target_: str = "attnexp.schedules.LinearAlpha"
    start: float = 0.0
    end: float = 1.0
    ramp_begin: float = 0.0
    ramp_end: float = 1.0


@dataclass
class StepAlphaSchema(AlphaScheduleSchema):
    _target_: str = "attnexp.schedules.StepAlpha"
    points: List[Any] = field(default_factory=list)


# ---------------------------------------------------------------- optimizers and schedulers (torch's own)


@dataclass
class AdamSchema:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    maximize: bool = False
    foreach: Optional[bool] = None
    capturable: bool = False
    differentiable: bool = False
    fused: Optional[bool] = None  # null: the fused kernel on a GPU, torch's default elsewhere
    INJECTED: ClassVar[tuple] = ("params",)


@dataclass
class AdamWithDecoupledSchema(AdamSchema):
    """torch.optim.Adam also takes decoupled_weight_decay (AdamW's rule as a switch)."""

    _target_: str = "torch.optim.Adam"
    decoupled_weight_decay: bool = False


@dataclass
class WarmupCosineSchema:
    _target_: str = "attnexp.schedules.WarmupCosine"
    warmup_epochs: int = 5
    total_epochs: int = 200


@dataclass
class StepLRSchema:
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    _partial_: bool = True
    step_size: int = 1
    gamma: float = 0.7
    last_epoch: int = -1
    INJECTED: ClassVar[tuple] = ("optimizer",)


# ---------------------------------------------------------------- plain nodes


@dataclass
class TrainerSchema:
    """pytorch_lightning.Trainer's arguments that attnexp exposes (tests/test_schemas.py checks each is one)."""

    _target_: str = "pytorch_lightning.Trainer"
    accelerator: str = "auto"  # auto | cpu | gpu | cuda
    devices: Any = 1  # int or "auto"
    strategy: str = "auto"
    precision: str = "auto"  # auto = bf16-mixed on GPU, 32-true on CPU
    max_epochs: int = 200
    deterministic: bool = False
    check_val_every_n_epoch: int = 1
    # Lightning's rule: an int is a number of batches, a float a fraction of the epoch. `Any`, since
    # a float field would turn `limit_val_batches=1` (one batch) into 1.0 (the whole epoch)
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    gradient_clip_val: Optional[float] = None
    log_every_n_steps: int = 50
    enable_progress_bar: Optional[bool] = None  # None: only on a terminal
    enable_model_summary: bool = False
    num_sanity_val_steps: int = 0
    detect_anomaly: bool = False
    # filled by attnexp.run.make_trainer
    INJECTED: ClassVar[tuple] = ("callbacks", "logger", "plugins", "default_root_dir", "benchmark")


@dataclass
class TensorBoardLoggerSchema:
    _target_: str = "pytorch_lightning.loggers.TensorBoardLogger"
    save_dir: Optional[str] = None  # ${paths.output_dir}: known once the job has its folder
    name: Optional[str] = "tb"
    version: Optional[str] = ""
    default_hp_metric: bool = False


@dataclass
class PathsSchema:
    data_dir: str = "data"
    output_dir: Optional[str] = None


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
    dry_run: bool = False
    swept: List[str] = field(default_factory=list)  # set by the CLI: the keys this sweep varies
    pack: Optional[str] = None  # seed | alpha: train the jobs that differ only in it as one vectorised job
    members: List[int] = field(default_factory=list)  # set by attnexp: a pack's jobs (places in sweep.json)


@dataclass
class RootSchema:
    """The top level: its own knobs, and the group nodes (each typed by its own schema)."""

    mode: str = "train"  # train | eval | summary
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
    callbacks: Any = None
    # experiment=convnn_ablation: which of its lines (a key of convnn_lines) the attention keys read
    convnn_line: Optional[str] = None
    convnn_lines: Any = None


# ---------------------------------------------------------------- text classification (issue 17)


@dataclass
class TextDataSchema:
    _target_: str = "attnexp.data.text_datamodule.TextDataModule"
    name: str = "text_demo"
    root: str = "data"
    num_classes: int = 2
    seq_len: int = 64
    min_freq: int = 1
    max_size: int = 20000
    batch_size: int = 128
    eval_batch_size: int = 128
    val_split: float = 0.0
    loader: str = "auto"
    fine_labels: bool = False
    train_size: int = 4000
    test_size: int = 1000
    INJECTED: ClassVar[tuple] = ("seed",)


@dataclass
class TextCCTSchema:
    _target_: str = "attnexp.models.text_cct.TextCCT"
    vocab_size: int = 20000
    num_classes: int = 2
    seq_len: int = 64
    word_embedding_dim: int = 300
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 2
    mlp_ratio: float = 1.0
    kernel_size: int = 4
    positional_embedding: str = "sine"
    dropout: float = 0.0
    attn_drop: float = 0.1
    drop_path: float = 0.1
    attn_layer: Any = None
    seqpool_value: Any = None
    seqpool_mask: bool = False
    embeddings: str = "learned"
    embeddings_path: Optional[str] = None
    freeze_embeddings: bool = False
    pretrained: Optional[str] = None
    official_name: Optional[str] = None
    ROUTED: ClassVar[tuple] = ("pretrained", "official_name")


# (ConfigStore path under schema/, dataclass); the yamls name these paths
SCHEMAS: dict[str, type] = {
    "root": RootSchema,
    "data/image": ImageDataSchema,
    "model/compact_transformer": CompactTransformerSchema,
    "model/cnn": CNNSchema,
    "model/vit": ViTSchema,
    "model/hybrid": HybridSchema,
    "model/timm": TimmViTSchema,
    "attention/attention": AttentionSchema,
    "attention/convnn": ConvNNAttentionSchema,
    "seqpool/plain": PlainMapSchema,
    "seqpool/scaled": ScaledMapSchema,
    "seqpool/alpha": AlphaMapSchema,
    "alpha/constant": ConstantAlphaSchema,
    "alpha/ramp": RampAlphaSchema,
    "alpha/step": StepAlphaSchema,
    "optimizer/adam": AdamSchema,
    "optimizer/adam_decoupled": AdamWithDecoupledSchema,
    "scheduler/warmup_cosine": WarmupCosineSchema,
    "scheduler/step_lr": StepLRSchema,
    "trainer/trainer": TrainerSchema,
    "logger/tensorboard": TensorBoardLoggerSchema,
    "paths/paths": PathsSchema,
    "data/text": TextDataSchema,
    "model/text_cct": TextCCTSchema,
}


def register() -> None:
    store = ConfigStore.instance()
    for path, schema in SCHEMAS.items():
        group, _, name = path.rpartition("/")
        store.store(group=f"schema/{group}" if group else "schema", name=name, node=schema)


register()
