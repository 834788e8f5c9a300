"""Any timm Vision Transformer as a backbone, its attention replaced by attnexp's.

`timm.create_model` builds the network, sizes the head to `num_classes` and, with
`pretrained`, loads the weights through timm's own loader (so timm resamples the
position table for another resolution and adapts the stem to other channel
counts). Then every block's attention becomes the attention module of the chosen
`attention=` config, with the pretrained q/k/v and output projections carried
over: with `attention=softmax` the network computes exactly what timm's does.

What the replacement cannot carry is refused at start-up, naming it: attention
that is not timm's plain `Attention` (RoPE, differential, parallel blocks),
q/k normalisation, scale-norm, gated attention, an output projection without
bias or to another width, and distilled DeiTs (a second head). The state_dict is
timm's under `net.` (`net.blocks.0.attn.qkv.weight`, ...).
"""

from __future__ import annotations

import os
import socket
import warnings
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import nn

from attnexp.errors import require
from attnexp.layers.block import attention_per_block


def import_timm():
    try:
        import timm
    except ImportError:
        raise ImportError("needs timm: pip install 'attnexp[timm]'") from None
    return timm


def cached_weights(name: str) -> str | None:
    """timm's cached weights file for `name`, else None once the hub answers (asked then by timm). When
    it does not answer (one 3 s probe), one line at once: its client would retry for about a minute."""
    from huggingface_hub import constants, try_to_load_from_cache

    repo = getattr(import_timm().models.get_pretrained_cfg(name), "hf_hub_id", None)
    found = [try_to_load_from_cache(repo, f) for f in ("model.safetensors", "pytorch_model.bin")] if repo else []
    if any(isinstance(f, str) for f in found):
        return next(f for f in found if isinstance(f, str))
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        require(
            False, "pretrained", True, f"timm's weights for {name} cannot be fetched: not cached, {host} unreachable"
        )
    return None


def head_rows(path: str) -> int | None:
    """Outputs of the classifier head a checkpoint file holds (timm's `head.weight`), or None."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return f.get_slice("head.weight").get_shape()[0] if "head.weight" in f.keys() else None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else {}
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None else None


# ---------------------------------------------------------------- what the replacement carries


def unsupported(attn: nn.Module) -> str | None:
    """Why timm attention module `attn` cannot be replaced faithfully, or None."""
    from timm.layers import Attention as TimmAttention

    if type(attn) is not TimmAttention:
        kind = f"{type(attn).__module__}.{type(attn).__qualname__}"
        return f"its attention is {kind}; attnexp replaces only timm.layers.Attention"
    for part, what in (("q_norm", "q/k normalisation (qk_norm)"), ("norm", "scale_norm")):
        if not isinstance(getattr(attn, part, nn.Identity()), nn.Identity):
            return f"its attention has {what}"
    if getattr(attn, "gate", None) is not None:
        return "its attention is gated"
    if attn.proj.bias is None:
        return "its output projection has no bias (proj_bias=False)"
    if attn.proj.out_features != attn.qkv.in_features:
        return f"its attention maps {attn.qkv.in_features} → {attn.proj.out_features} channels (dim_out)"
    return None


def carry_weights(old: nn.Module, new: nn.Module) -> None:
    """Copy every tensor of timm's attention that has a place of the same name and shape in
    attnexp's; a module with separate q, k, v projections (ConvNN) gets the thirds of timm's qkv."""
    source, target = old.state_dict(), new.state_dict()
    carried = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    for kind in ("weight", "bias"):
        fused = source.get(f"qkv.{kind}")
        if fused is None or f"qkv.{kind}" in carried:
            continue
        for name, part in zip("qkv", fused.chunk(3)):
            if target.get(f"{name}.{kind}") is not None and target[f"{name}.{kind}"].shape == part.shape:
                carried[f"{name}.{kind}"] = part
    with warnings.catch_warnings():  # on the meta device (the preflight) copying is a no-op torch warns about
        warnings.filterwarnings("ignore", message=".*non-meta parameter.*")
        new.load_state_dict(carried, strict=False)


def timm_call(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """timm's Block calls attn(x, attn_mask=..., is_causal=...); attnexp's contract is
    attn(x, attn_mask=None): image ViTs pass neither, anything else is refused."""
    if kwargs.pop("is_causal", False):
        raise ValueError("causal attention is not supported by attnexp's attention modules")
    if kwargs.get("attn_mask") is not None:
        raise ValueError("timm's attention masks are not supported by attnexp's attention modules")
    return args, kwargs


def replace_attention(net: nn.Module, attn_layer: Callable[..., nn.Module]) -> None:
    blocks = list(net.blocks)
    for index, (block, make) in enumerate(zip(blocks, attention_per_block(attn_layer, len(blocks)))):
        old = block.attn
        dim, heads = old.qkv.in_features, old.num_heads
        new = make(
            dim=dim,
            num_heads=heads,
            head_dim=old.head_dim if old.head_dim * heads != dim else None,  # timm's attn_head_dim
            qkv_bias=old.qkv.bias is not None,
            attn_drop=old.attn_drop.p,
            proj_drop=old.proj_drop.p,
        )
        carry_weights(old, new)
        new.register_forward_pre_hook(timm_call, with_kwargs=True)
        block.attn = new


# ---------------------------------------------------------------- the backbone


class TimmViT(nn.Module):
    """timm model `name` with attnexp attention in every block (`attention.layers` picks blocks)."""

    loads_pretrained = True  # `pretrained` is a constructor argument here (timm's loader), not attnexp's

    def __init__(
        self,
        name: str,
        num_classes: int,
        attn_layer: Callable[..., nn.Module] | None = None,
        in_channels: int = 3,
        image_size: int | None = None,
        pretrained: Any = None,
        drop_path_rate: float = 0.0,
        backbone_lr_scale: float = 1.0,
        kwargs: dict | None = None,
    ):
        super().__init__()
        timm = import_timm()
        require(timm.is_model(name), "name", name, "not a timm model (timm.list_models() lists them)")
        require(backbone_lr_scale >= 0, "backbone_lr_scale", backbone_lr_scale, "must be ≥ 0")
        require(pretrained is None or isinstance(pretrained, (bool, str)), "pretrained", pretrained, "true or a PATH")
        options = dict(kwargs or {}, num_classes=num_classes, in_chans=in_channels, drop_path_rate=drop_path_rate)
        if image_size:
            options["img_size"] = image_size
        self.weights = self._weights(name, pretrained, options)
        try:
            with warnings.catch_warnings():  # the preflight loads onto the meta device: a no-op torch warns about
                warnings.filterwarnings("ignore", message=".*non-meta parameter.*")
                self.net = timm.create_model(name, pretrained=bool(pretrained), **options)
        except RuntimeError as e:  # the state_dict does not fit the architecture
            first = [line.strip() for line in str(e).splitlines() if line.strip()][1:2] or [str(e)]
            require(False, "pretrained", pretrained, f"does not fit model.name={name}: {first[0]}")
        except OSError as e:  # missing from the hub cache while offline, or no network
            require(False, "pretrained", pretrained, f"timm's weights for {name} cannot be fetched: {type(e).__name__}")
        self._refuse_unsupported(name)
        self.backbone_lr_scale = backbone_lr_scale
        if attn_layer is not None:
            replace_attention(self.net, attn_layer)

    @staticmethod
    def check_source(node: Any) -> None:
        """Weights that cannot be had, said before the run imports Lightning (attnexp.sweep.plan.check_job)."""
        if node.get("pretrained") is True:
            cached_weights(node.name)

    @staticmethod
    def _weights(name: str, pretrained: Any, options: dict) -> dict | None:
        """Where the weights come from (recorded in metrics.json); points timm's loader at a local file."""
        if not pretrained:
            return None
        if pretrained is True:  # timm's cache first: loaded as a file, the hub is not asked
            pretrained = cached_weights(name)
            if pretrained is None:
                return {"name": name, "source": "timm"}
        require(os.path.isfile(pretrained), "pretrained", pretrained, "no such file")
        rows = head_rows(pretrained)
        # timm keeps the file's head only when it matches num_classes (else re-initialises it)
        options["pretrained_cfg_overlay"] = {"file": pretrained, **({"num_classes": rows} if rows else {})}
        return {"name": name, "file": os.path.abspath(pretrained)}  # attnexp adds the file's sha256

    def _refuse_unsupported(self, name: str) -> None:
        net = self.net
        require(not hasattr(net, "head_dist"), "name", name, "a distilled DeiT (a second head, head_dist)")
        blocks = getattr(net, "blocks", None)
        ok = blocks is not None and all(hasattr(b, "attn") for b in blocks)
        require(ok, "name", name, f"a timm {type(net).__name__}, not a ViT of timm.layers.Attention blocks")
        for index, block in enumerate(blocks):
            why = unsupported(block.attn)
            require(why is None, "name", name, f"block {index}: {why}")

    @staticmethod
    def data_spec(node: dict) -> dict:
        """The input the model was pretrained on: its resolution and normalisation win over the
        data's (for one-channel data, the mean over the pretrained channels)."""
        timm = import_timm()
        cfg = timm.get_pretrained_cfg(node["name"])
        cfg = cfg.to_dict() if cfg is not None else {}
        spec = {"image_size": int(node.get("image_size") or (cfg.get("input_size") or (3, 224, 224))[-1])}
        channels = node.get("in_channels", 3)
        for key in ("mean", "std"):
            stats = list(cfg.get(key) or ())
            if stats:
                spec[key] = stats if len(stats) == channels else [sum(stats) / len(stats)] * channels
        return spec

    def param_groups(self) -> list[dict]:
        """The pretrained body at backbone_lr_scale × the rate, the new head at the rate."""
        head = {id(p) for p in self.net.get_classifier().parameters()}
        body = [p for p in self.parameters() if id(p) not in head]
        return [
            {"params": body, "lr_scale": self.backbone_lr_scale},
            {"params": [p for p in self.parameters() if id(p) in head]},
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
