"""Dataclass schemas: the type of every knob, so a wrong type or an unknown key fails at start-up.

A group node is checked against the schema registered for its `_target_`
(`SCHEMAS`); the plain nodes (`trainer`, `sweep`, top level) have fixed schemas.
A new model or attention class registers its schema here beside the yaml that
targets it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class TrainerSchema:
    accelerator: str = "auto"  # auto | cpu | gpu | cuda
    devices: Any = 1  # int or "auto"
    strategy: str = "auto"
    precision: str = "auto"  # auto = bf16-mixed on GPU, 32 on CPU
    max_epochs: int = 200
    deterministic: bool = False
    check_val_every_n_epoch: int = 1
    limit_train_batches: Optional[float] = None  # ≤ 1.0: fraction, > 1: batch count
    limit_val_batches: Optional[float] = None
    gradient_clip_val: float = 0.0
    num_threads: Optional[int] = None  # torch.set_num_threads on CPU; None = torch's default
    log_every_n_steps: int = 50
    progress_bar: str = "auto"  # auto (only on a terminal) | on | off
    detect_anomaly: bool = False
    compile: bool = False  # torch.compile the backbone
    matmul_precision: str = "high"


@dataclass
class DataSchema:
    _target_: str = "attnexp.data.datamodule.ImageDataModule"
    name: str = "cifar10"
    root: str = "data"
    download: bool = False
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: int = 0
    val_split: float = 0.0
    mean: list = field(default_factory=list)
    std: list = field(default_factory=list)
    loader: str = "auto"  # auto | device | torchvision
    augment: Any = None
    train_size: Optional[int] = None  # fake data / subsets
    test_size: Optional[int] = None


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
    layout: str = "cct"  # cct (official norm placement) | pre (textbook pre-norm)
    qkv_bias: bool = False
    pretrained: Optional[str] = None
    official_name: Optional[str] = None


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


@dataclass
class ViTSchema:
    _target_: str = "attnexp.models.vit.ViT"
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    patches_per_side: int = 2
    declared_image_size: Any = None  # null | an integer | pixel_count (seed 003's quirk)
    dim: int = 128
    num_layers: int = 6
    num_heads: int = 4
    head_dim: int = 64
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    attn_drop: float = 0.1
    emb_dropout: float = 0.1
    reattention: bool = False  # DeepViT
    attn_layer: Any = None
    pretrained: Optional[str] = None


@dataclass
class HybridSchema(ViTSchema):
    _target_: str = "attnexp.models.vit.Hybrid"
    in_channels: int = 1
    image_size: int = 28


@dataclass
class AttentionSchema:
    _target_: str = "attnexp.layers.attention.Attention"
    _partial_: bool = True
    impl: str = "auto"
    scale: Optional[float] = None
    layers: Optional[list] = None
    value_map: Any = None
    qkv_bias: Optional[bool] = None


@dataclass
class ConvNNAttentionSchema:
    """attnexp.layers.convnn.ConvNNAttention (seed 004); allowed values are checked in validate.py."""

    _target_: str = "attnexp.layers.convnn.ConvNNAttention"
    _partial_: bool = True
    K: int = 9  # neighbours per token
    num_heads: Optional[int] = None  # None = the backbone's
    similarity: str = "cosine"  # cosine | euclidean
    projection: str = "kqv"  # kqv | v | kq | none
    softmax_similarity: bool = False
    topk_softmax: bool = False
    topk_normalize: bool = False
    temperature: float = 1.0
    sampling: str = "all"  # all | spatial | random
    samples: Optional[int] = None
    prime_conv: str = "regular"  # regular | depthwise
    prime_dropout: bool = True
    head_layout: str = "split"  # split | v_d_over_h2 | v_h
    branch: str = "none"  # none | conv1d | attention
    branch_ratio: float = 0.5
    layers: Optional[list] = None
    qkv_bias: Optional[bool] = None  # None = the backbone's


@dataclass
class ValueMapSchema:
    _target_: str = "attnexp.layers.value_maps.Identity"
    alpha: Optional[float] = None
    scale: Optional[float] = None


@dataclass
class AlphaSchema:
    _target_: str = ""
    value: float = 0.0
    start: float = 0.0
    end: float = 1.0
    ramp_begin: float = 0.0
    ramp_end: float = 1.0
    unit: str = "epoch"
    points: list = field(default_factory=list)
    allow_extrapolation: bool = False


@dataclass
class AdamWSchema:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 5e-4
    weight_decay: float = 3e-2
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    fused: Optional[bool] = None


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


@dataclass
class SweepSchema:
    resume: bool = False
    dry_run: bool = False


@dataclass
class TopSchema:
    mode: str = "train"  # train | eval | summary
    seed: int = 0
    ckpt_path: Optional[str] = None
    label_smoothing: float = 0.1
    required: list = field(default_factory=list)


SCHEMAS: dict[str, type] = {
    "attnexp.data.datamodule.ImageDataModule": DataSchema,
    "attnexp.models.cct.CompactTransformer": CompactTransformerSchema,
    "attnexp.models.cnn.CNN": CNNSchema,
    "attnexp.models.vit.ViT": ViTSchema,
    "attnexp.models.vit.Hybrid": HybridSchema,
    "attnexp.layers.attention.Attention": AttentionSchema,
    "attnexp.layers.convnn.ConvNNAttention": ConvNNAttentionSchema,
    "attnexp.layers.value_maps.Identity": ValueMapSchema,
    "attnexp.layers.value_maps.TokenSoftmax": ValueMapSchema,
    "attnexp.layers.value_maps.BatchSoftmax": ValueMapSchema,
    "attnexp.layers.value_maps.Remix": ValueMapSchema,
    "attnexp.layers.value_maps.Shift": ValueMapSchema,
    "attnexp.schedules.ConstantAlpha": AlphaSchema,
    "attnexp.schedules.LinearAlpha": AlphaSchema,
    "attnexp.schedules.CosineAlpha": AlphaSchema,
    "attnexp.schedules.StepAlpha": AlphaSchema,
    "torch.optim.AdamW": AdamWSchema,
    "torch.optim.Adam": AdamWSchema,
    "attnexp.schedules.WarmupCosine": WarmupCosineSchema,
    "torch.optim.lr_scheduler.StepLR": StepLRSchema,
}

# nodes checked against a fixed schema (the rest by their _target_)
FIXED = {"trainer": TrainerSchema, "sweep": SweepSchema}
GROUPS_BY_TARGET = ("data", "model", "attention", "seqpool", "alpha", "optimizer", "scheduler")
