"""Multi-head self-attention with a pluggable value map.

Two code paths, chosen once at construction (`impl`):
- `sdpa`: torch's fused scaled_dot_product_attention. Every value map is just a
  different V, so softmaxᵀ(V), remix and shift all run fused.
- `explicit`: scale, matmul, softmax, dropout, matmul, written out. It is the
  path that can be instrumented (attention maps for statistics) and the one
  DeepViT's re-attention needs, since that mixes the maps across heads.
`auto` takes sdpa unless re-attention asks for the maps.

Parameter layout is the official Compact-Transformers one: a single `qkv`
linear viewed as [3, heads, head_dim] and a `proj` linear with bias.

A padding mask (text) follows the official MaskedAttention on both paths: every
query×key pair with a padded side scores −finfo.max. A real query then gives
padded keys exactly no weight; a padded query, all of whose scores are equal,
attends uniformly to every token. That last part is what the official text
models' SeqPool reads at padded positions (a boolean SDPA mask would mask the
whole row and return zeros there instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.errors import require, require_rate
from attnexp.layers import randomness
from attnexp.layers.contract import AttentionLayer
from attnexp.layers.randomness import Dropout
from attnexp.layers.value_maps import Identity

IMPLS = ("auto", "sdpa", "explicit")


def key_mask(attn_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N) bool of real tokens → (B, 1, 1, N), broadcast over heads and queries."""
    return None if attn_mask is None else attn_mask[:, None, None, :]


def pair_mask(attn_mask: torch.Tensor) -> torch.Tensor:
    """(B, N) bool of real tokens → (B, 1, N, N): True where query and key are both real."""
    return attn_mask[:, None, :, None] & attn_mask[:, None, None, :]


def pair_bias(attn_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive form of the official fill for SDPA: 0 on real pairs, −finfo.max elsewhere."""
    pairs = pair_mask(attn_mask)
    return torch.zeros(pairs.shape, dtype=dtype, device=pairs.device).masked_fill(~pairs, torch.finfo(dtype).min)


class ReAttention(nn.Module):
    """DeepViT re-attention: a learned heads×heads mix of the attention maps, then LayerNorm over heads."""

    def __init__(self, num_heads: int):
        super().__init__()
        self.reattn_weights = nn.Parameter(torch.randn(num_heads, num_heads))
        self.reattn_norm = nn.LayerNorm(num_heads)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        # (B, h, N, N) -> mix heads -> (B, g, N, N)
        attn = torch.einsum("bhij,hg->bgij", attn, self.reattn_weights)
        return self.reattn_norm(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Attention(AttentionLayer):
    """softmax(c·QKᵀ)·f(V), f the value map (identity: classic attention)."""

    has_attention_maps = True
    has_fused_kernel = True  # SDPA computes softmax(c·QKᵀ)·V; a variant with other maps sets False

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        scale: float | None = None,
        impl: str = "auto",
        value_map: nn.Module | None = None,
        reattention: bool = False,
        head_dim: int | None = None,
    ):
        super().__init__()
        require(impl in IMPLS, "impl", impl, f"one of {', '.join(IMPLS)}")
        name = type(self).__name__
        require(
            impl != "sdpa" or self.has_fused_kernel, "impl", impl, f"{name} has no fused kernel: use auto or explicit"
        )
        require(num_heads >= 1, "num_heads", num_heads, "must be ≥ 1")
        require(bool(head_dim) or dim % num_heads == 0, "num_heads", num_heads, f"must divide the width {dim}")
        require(head_dim is None or head_dim >= 1, "head_dim", head_dim, "must be ≥ 1")
        require(scale is None or scale > 0, "scale", scale, "must be > 0 (or null: head_dim^-0.5)")
        require_rate("attn_drop", attn_drop)
        require_rate("proj_drop", proj_drop)
        self.num_heads = num_heads
        # head_dim decouples the inner width from `dim` (the seed-003 ViT: 4 heads × 64 on a 128 stream)
        self.head_dim = head_dim or dim // num_heads
        inner = self.head_dim * num_heads
        self.scale = scale if scale is not None else self.head_dim**-0.5
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.attn_drop = Dropout(attn_drop)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = Dropout(proj_drop)
        self.value_map = value_map if value_map is not None else Identity()
        self.reattn = ReAttention(num_heads) if reattention else None
        self.fused = impl == "sdpa" or (impl == "auto" and not reattention and self.has_fused_kernel)
        require(
            not (self.fused and reattention),
            "impl",
            impl,
            "re-attention (DeepViT) needs the explicit maps: use auto or explicit",
        )
        # set to a dict by the attention_stats callback to collect V / map statistics
        self.stats: dict | None = None

    def attention_maps(self, q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, N, N)
        if attn_mask is not None:
            attn = attn.masked_fill(~pair_mask(attn_mask), torch.finfo(attn.dtype).min)
        return attn.softmax(dim=-1)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, h, N, hd)
        v_mapped = self.value_map(v) if attn_mask is None else self.value_map(v, attn_mask[:, None, :, None])
        if self.stats is not None:
            self._record(q, k, v, v_mapped)
        p = self.attn_drop.p if self.training else 0.0
        if self.fused and not self.explicit_here(x, p):
            bias = None if attn_mask is None else pair_bias(attn_mask, q.dtype)
            out = F.scaled_dot_product_attention(q, k, v_mapped, bias, dropout_p=p, scale=self.scale)
        else:
            attn = self.attention_maps(q, k, attn_mask)
            if self.reattn is not None:
                attn = self.reattn(attn)
            out = self.attn_drop(attn) @ v_mapped  # (B, h, N, hd)
        out = out.transpose(1, 2).reshape(B, N, -1)
        return self.proj_drop(self.proj(out))

    @staticmethod
    def explicit_here(x: torch.Tensor, p: float) -> bool:
        """The explicit path although fused was chosen: in a packed run (vmap has no batching rule
        for the fused kernels, and each member replays its own dropout masks), and for attention
        dropout on the CPU, where SDPA takes its math path anyway (same cost) but draws its masks
        itself; a GPU run keeps the fused kernel's dropout."""
        return randomness.taping() or (p > 0 and x.device.type == "cpu")

    @torch.no_grad()
    def _record(self, q, k, v, v_mapped) -> None:
        attn = self.attention_maps(q.float(), k.float())
        entropy = -(attn * attn.clamp_min(1e-12).log()).sum(-1).mean()
        self.stats.update(
            v_min=v.min(), v_max=v.max(), fv_min=v_mapped.min(), fv_max=v_mapped.max(), attn_entropy=entropy
        )
