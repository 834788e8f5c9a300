"""ConvNN attention (seed 004; "Convolutional Nearest Neighbor Attention", arXiv 2511.14137).

Ordinary attention mixes every token into every other with softmax weights.
ConvNN attention lets each token pick its K most similar tokens instead, lines
their similarity-weighted values up side by side (the log's "prime": a
sequence of length N·K, token i's neighbours at positions iK … iK+K−1, most
similar first) and mixes them with a Conv1d whose kernel and stride are both
K, so the conv learns one filter tap per neighbour rank and returns one vector
per token. The output projection follows, as in attention.

All heads and tokens go through one similarity matmul, one topk and one
gather; nothing loops over tokens or heads.

Options (each a constructor argument and a config key, see conf/attention/convnn.yaml):
- similarity: cosine (a token's score with itself is 1.1, above any cosine, so
  it always picks itself) or euclidean (score −‖q_i − k_j‖, self 0.1, so the K
  nearest win and the token itself first);
- projection: which of q, k, v get a learned Linear (the others are x itself);
- softmax_similarity / topk_softmax / topk_normalize: softmax over the whole
  score row (before topk), softmax over the K kept scores, or the K kept scores
  divided by their sum; `temperature` divides the scores in both softmaxes;
- sampling: compare against all tokens, an evenly spaced sub-grid, or a fresh
  random subset in training (the sub-grid in eval);
- prime_conv: regular Conv1d(c, c', K, stride K) or depthwise-separable
  (K depthwise taps, then a pointwise conv);
- head_layout: split (per-head channels, one conv shared by the heads) or the
  log's NoSplitHead layouts, where the similarity uses the full width and V is
  narrowed to d/h² or h channels that the conv widens back to d;
- branch: a fraction `branch_ratio` of the channels through ConvNN, the rest
  through a Conv1d over the token sequence or ordinary softmax attention,
  concatenated before the shared output projection.

Padded text (`attn_mask`, attnexp/layers/contract.py) is defined, not refused:
padded tokens are never a real query's neighbours while real ones are left
(they score −finfo.max), and when K exceeds an example's real tokens the
neighbour slots past them weigh exactly 0 (also inside topk_softmax and
topk_normalize), so a real token's output never reads a padded one. The conv1d
branch sees padded tokens as zeros, the attention branch masks them as keys.
Sampling a sub-grid assumes an image, so a mask with sampling≠all is refused.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnexp.errors import ArgumentError, require
from attnexp.layers.attention import pair_bias
from attnexp.layers.contract import AttentionLayer, inner_width
from attnexp.layers.randomness import Dropout

# ---------------------------------------------------------------- similarity


def cosine_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(…, N, c) × (…, M, c) → (…, N, M) cosines."""
    return F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)


def negative_distances(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(…, N, c) × (…, M, c) → (…, N, M) of −‖q_i − k_j‖: the nearest score highest."""
    return -torch.cdist(q, k)


SIMILARITIES = {"cosine": cosine_scores, "euclidean": negative_distances}
# a token's score with itself: above every other score of that similarity (cosines ≤ 1,
# negative distances ≤ 0), so topk always keeps the token itself, in first place
SELF_SCORE = {"cosine": 1.1, "euclidean": 0.1}

# which of q, k, v get a learned projection (the rest are the block input itself)
PROJECTIONS = {"kqv": ("q", "k", "v"), "v": ("v",), "kq": ("q", "k"), "none": ()}

# ---------------------------------------------------------------- head layouts
# per layout: (channels of V given the ConvNN width c and the head count h, similarity heads)
HEAD_LAYOUTS = {
    "split": (lambda c, h: c, lambda h: h),  # channels split per head, one conv shared by the heads
    "v_d_over_h2": (lambda c, h: c // h**2, lambda h: 1),  # NoSplitHead, log line 10
    "v_h": (lambda c, h: h, lambda h: 1),  # NoSplitHead, log line 11
}

# ---------------------------------------------------------------- prime convolution


def regular_prime(c_in: int, c_out: int, K: int) -> nn.Module:
    return nn.Conv1d(c_in, c_out, K, stride=K)


def depthwise_prime(c_in: int, c_out: int, K: int) -> nn.Module:
    """Depthwise-separable: K taps per channel, then a 1×1 conv mixing the channels."""
    return nn.Sequential(nn.Conv1d(c_in, c_in, K, stride=K, groups=c_in), nn.Conv1d(c_in, c_out, 1))


PRIME_CONVS = {"regular": regular_prime, "depthwise": depthwise_prime}

# ---------------------------------------------------------------- sampling


def grid_layout(num_tokens: int) -> tuple[int, int]:
    """(leading extra tokens, grid side): the largest square of patches, the rest (class token) in front."""
    side = math.isqrt(num_tokens)
    return num_tokens - side * side, side


def spatial_candidates(num_tokens: int, samples: int, device: torch.device) -> torch.Tensor:
    """The extra tokens plus an evenly spaced ⌊√samples⌋² sub-grid of the patches."""
    extra, side = grid_layout(num_tokens)
    per_side = min(math.isqrt(samples), side)
    rows = torch.linspace(0, side - 1, per_side, device=device).round().long()
    grid = (rows[:, None] * side + rows[None, :]).flatten()  # (per_side²,) row-major patch indices
    return torch.cat([torch.arange(extra, device=device), extra + grid])


def random_candidates(num_tokens: int, samples: int, device: torch.device) -> torch.Tensor:
    """The extra tokens plus `samples` patches drawn without replacement (fresh every call)."""
    extra, side = grid_layout(num_tokens)
    grid = torch.randperm(side * side, device=device)[:samples]
    return torch.cat([torch.arange(extra, device=device), extra + grid])


SAMPLINGS = ("all", "spatial", "random")

# ---------------------------------------------------------------- the ConvNN mixer


class ConvNNMixer(nn.Module):
    """Tokens (B, N, dim) → (B, N, width): the nearest-neighbour gather and the prime conv (no output projection)."""

    def __init__(
        self,
        dim: int,
        width: int,
        num_heads: int,
        K: int,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        similarity: str = "cosine",
        projection: str = "kqv",
        softmax_similarity: bool = False,
        topk_softmax: bool = False,
        topk_normalize: bool = False,
        temperature: float = 1.0,
        sampling: str = "all",
        samples: int | None = None,
        prime_conv: str = "regular",
        prime_dropout: bool = True,
        head_layout: str = "split",
    ):
        super().__init__()
        projected = PROJECTIONS[projection]
        v_channels, sim_heads = HEAD_LAYOUTS[head_layout]
        require(
            head_layout == "split" or "v" in projected,
            "head_layout",
            head_layout,
            "narrows V's projection: needs projection=kqv or v",
        )
        require(sampling == "all" or (samples or 0) >= 1, "samples", samples, f"sampling={sampling} needs samples ≥ 1")
        require(K >= 1, "K", K, "must be ≥ 1")
        require(temperature > 0, "temperature", temperature, "must be > 0")
        self.K, self.heads = K, sim_heads(num_heads)
        qk_width = width if "q" in projected else dim
        v_width = v_channels(width, num_heads) if "v" in projected else dim
        for name, channels in (("q/k", qk_width), ("V", v_width), ("output", width)):
            ok = channels >= 1 and channels % self.heads == 0
            require(ok, "num_heads", num_heads, f"the {name} width {channels} does not split into {self.heads} heads")
        self.q = nn.Linear(dim, width, bias=qkv_bias) if "q" in projected else nn.Identity()
        self.k = nn.Linear(dim, width, bias=qkv_bias) if "k" in projected else nn.Identity()
        self.v = nn.Linear(dim, v_width, bias=qkv_bias) if "v" in projected else nn.Identity()
        self.score = SIMILARITIES[similarity]
        self.self_score = SELF_SCORE[similarity]
        self.softmax_similarity, self.topk_softmax, self.topk_normalize = (
            softmax_similarity,
            topk_softmax,
            topk_normalize,
        )
        self.temperature = temperature
        self.sampling, self.samples = sampling, samples
        self.prime = PRIME_CONVS[prime_conv](v_width // self.heads, width // self.heads, K)
        self.prime_drop = Dropout(attn_drop) if prime_dropout else nn.Identity()

    def candidates(self, num_tokens: int, device: torch.device) -> torch.Tensor | None:
        """Indices of the tokens the similarity is computed against (None: all of them)."""
        if self.sampling == "all":
            return None
        patches = grid_layout(num_tokens)[1] ** 2
        require(self.samples <= patches, "samples", self.samples, f"at most the {patches} patches")
        if self.sampling == "random" and self.training:
            return random_candidates(num_tokens, self.samples, device)
        return spatial_candidates(num_tokens, self.samples, device)

    def weights_and_neighbours(
        self, q: torch.Tensor, k: torch.Tensor, cand: torch.Tensor | None, real: torch.Tensor | None = None
    ):
        """(B, h, N, c) queries, (B, h, M, c) candidate keys → (B, h, N, K) weights and candidate indices.
        `real`: None or (B, M) bool, the keys that are real tokens (padded ones weigh 0)."""
        N, M = q.shape[2], k.shape[2]
        if self.K > M:
            what = "tokens" if self.sampling == "all" else f"tokens of the {self.sampling} sample"
            raise ArgumentError("K", self.K, f"must not exceed the {M} {what} the similarity is computed against")
        scores = self.score(q, k)  # (B, h, N, M)
        cand = torch.arange(M, device=q.device) if cand is None else cand
        is_self = torch.arange(N, device=q.device)[:, None] == cand[None, :]  # (N, M)
        scores = scores.masked_fill(is_self, self.self_score)
        lowest = torch.finfo(scores.dtype).min
        if real is not None:
            scores = scores.masked_fill(~real[:, None, None, :], lowest)  # below every real key's score
        if self.softmax_similarity:
            scores = (scores / self.temperature).softmax(dim=-1)
        weights, neighbours = scores.topk(self.K, dim=-1)  # (B, h, N, K), most similar first
        kept = None if real is None else real[:, None, None, :].expand_as(scores).gather(-1, neighbours)
        if kept is not None:
            weights = weights.masked_fill(~kept, lowest if self.topk_softmax else 0.0)
        if self.topk_softmax:
            weights = (weights / self.temperature).softmax(dim=-1)
            weights = weights if kept is None else weights.masked_fill(~kept, 0.0)
        if self.topk_normalize:
            total = weights.sum(dim=-1, keepdim=True)
            weights = weights / torch.where(total.abs() < 1e-6, 1e-6, total)  # a zero sum must not blow up
        return weights, neighbours

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        h, K = self.heads, self.K
        ok = attn_mask is None or self.sampling == "all"
        require(ok, "sampling", self.sampling, "samples an image grid: padded text needs sampling=all")
        q = self.q(x).view(B, N, h, -1).transpose(1, 2)  # (B, h, N, c_qk)
        k = self.k(x).view(B, N, h, -1).transpose(1, 2)  # (B, h, N, c_qk)
        v = self.v(x).view(B, N, h, -1).transpose(1, 2)  # (B, h, N, c_v)
        cand = self.candidates(N, x.device)
        if cand is not None:
            k, v = k[:, :, cand], v[:, :, cand]  # (B, h, M, ·)
        weights, neighbours = self.weights_and_neighbours(q, k, cand, attn_mask)
        c_v = v.shape[-1]
        index = neighbours.reshape(B, h, N * K, 1).expand(-1, -1, -1, c_v)
        prime = v.gather(2, index) * weights.reshape(B, h, N * K, 1)  # (B, h, N·K, c_v)
        prime = prime.reshape(B * h, N * K, c_v).transpose(1, 2)  # (B·h, c_v, N·K)
        out = self.prime_drop(self.prime(prime))  # (B·h, c_out, N): kernel K, stride K → one per token
        return out.view(B, h, -1, N).permute(0, 3, 1, 2).reshape(B, N, -1)  # (B, N, h·c_out)


# ---------------------------------------------------------------- second branches


class TokenConv1d(nn.Module):
    """The `conv1d` branch: a K-wide Conv1d along the token sequence (same length)."""

    def __init__(self, dim: int, width: int, num_heads: int, K: int, qkv_bias: bool, attn_drop: float):
        super().__init__()
        self.conv = nn.Conv1d(dim, width, K, padding="same")

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attn_mask is not None:
            x = x * attn_mask[..., None]  # padded tokens read as zeros, like the conv's own padding
        return self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, N, dim) → (B, N, width)


class SoftmaxHeads(nn.Module):
    """The `attention` branch: ordinary multi-head softmax(QKᵀ/√d_h)·V, without the output projection."""

    def __init__(self, dim: int, width: int, num_heads: int, K: int, qkv_bias: bool, attn_drop: float):
        super().__init__()
        require(
            width % num_heads == 0,
            "num_heads",
            num_heads,
            f"the attention branch's width {width} does not split into {num_heads} heads",
        )
        self.num_heads = num_heads
        self.q = nn.Linear(dim, width, bias=qkv_bias)
        self.k = nn.Linear(dim, width, bias=qkv_bias)
        self.v = nn.Linear(dim, width, bias=qkv_bias)
        self.attn_drop = attn_drop

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = (p(x).view(B, N, self.num_heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        bias = None if attn_mask is None else pair_bias(attn_mask, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, bias, dropout_p=self.attn_drop if self.training else 0.0)
        return out.transpose(1, 2).reshape(B, N, -1)  # (B, h, N, d_h) → (B, N, width)


BRANCHES = {"none": None, "conv1d": TokenConv1d, "attention": SoftmaxHeads}

# ---------------------------------------------------------------- the attention layer


class ConvNNAttention(AttentionLayer):
    """(B, N, dim) → (B, N, dim): ConvNN mixing (optionally beside a second branch), then the output projection.

    Takes the contract's keywords (attnexp/layers/contract.py). attn_drop is the rate
    of the dropout after the prime conv and of the attention branch's maps. head_dim
    is honoured as in `Attention`: ConvNN and its branch work in num_heads · head_dim
    channels, which the output projection maps back to dim (seed 003's ViTs: 4 × 64
    on a 128-wide stream).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        K: int = 9,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        head_dim: int | None = None,
        similarity: str = "cosine",
        projection: str = "kqv",
        softmax_similarity: bool = False,
        topk_softmax: bool = False,
        topk_normalize: bool = False,
        temperature: float = 1.0,
        sampling: str = "all",
        samples: int | None = None,
        prime_conv: str = "regular",
        prime_dropout: bool = True,
        head_layout: str = "split",
        branch: str = "none",
        branch_ratio: float = 0.5,
    ):
        super().__init__()
        for name, value, allowed in (
            ("similarity", similarity, SIMILARITIES),
            ("projection", projection, PROJECTIONS),
            ("sampling", sampling, SAMPLINGS),
            ("prime_conv", prime_conv, PRIME_CONVS),
            ("head_layout", head_layout, HEAD_LAYOUTS),
            ("branch", branch, BRANCHES),
        ):
            require(value in allowed, name, value, f"one of {', '.join(allowed)}")
        require(0.0 <= branch_ratio <= 1.0, "branch_ratio", branch_ratio, "a fraction in [0, 1]")
        require(num_heads >= 1, "num_heads", num_heads, "must be ≥ 1")
        inner = inner_width(dim, num_heads, head_dim)
        convnn_width = inner if branch == "none" else round(inner * branch_ratio)
        self.convnn = None
        if convnn_width:
            self.convnn = ConvNNMixer(
                dim, convnn_width, num_heads, K, qkv_bias, attn_drop, similarity, projection,
                softmax_similarity, topk_softmax, topk_normalize, temperature, sampling, samples,
                prime_conv, prime_dropout, head_layout,
            )  # fmt: skip
        other = BRANCHES[branch]
        self.branch = (
            other(dim, inner - convnn_width, num_heads, K, qkv_bias, attn_drop)
            if other and inner > convnn_width
            else None
        )
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        parts = [m(x, attn_mask) for m in (self.convnn, self.branch) if m is not None]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)  # (B, N, dim)
        return self.proj_drop(self.proj(out))
