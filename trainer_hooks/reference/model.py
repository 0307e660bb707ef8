"""A small Llama-style GPT with Megatron-style tensor parallelism (TP 1 or 2), readable in one sitting.

RoPE, RMSNorm, SwiGLU MLP, causal attention through `F.scaled_dot_product_attention`.
Tensor parallelism follows Megatron-LM (Shoeybi et al. 2019, section 3): the q/k/v and
gate/up projections are column-parallel (each TP rank owns a slice of the heads / hidden
units), the attention-out and down projections are row-parallel, followed by one
all-reduce. Two autograd-aware collectives make it work:

    copy_to_tp:      forward identity,   backward all-reduce  ("f" in the paper)
    reduce_from_tp:  forward all-reduce, backward identity    ("g" in the paper)

Every rank first draws the full-size weight from the same seed and keeps its slice, so a
TP=2 model holds exactly the weights of the TP=1 model built with the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Config


@dataclass(kw_only=True, slots=True)
class GPTConfig:
    """Shape of the reference model."""

    vocab_size: int = 256
    """Byte-level tokens."""
    seq_len: int = 128
    """Longest sequence (RoPE tables are built for it)."""
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    mlp_ratio: float = 8 / 3
    """SwiGLU hidden size = mlp_ratio * d_model, rounded up to a multiple of 32 (Llama)."""
    tie_embeddings: bool = True
    rope_base: float = 10_000.0
    norm_eps: float = 1e-5
    poison_token: int | None = 255
    """Token id whose embedding row is corrupt (+inf), like a damaged row in a real checkpoint.
    Clean text never contains it, so only batches whose DATA contain it go non-finite. None: off."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "d_model"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"GPTConfig.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"head size d_model/n_head = {self.d_model // self.n_head} must be even for RoPE")
        if self.poison_token is not None and not 0 <= self.poison_token < self.vocab_size:
            raise ValueError(f"GPTConfig.poison_token must be in [0, {self.vocab_size}) or None")

    @property
    def mlp_hidden(self) -> int:
        return 32 * math.ceil(self.mlp_ratio * self.d_model / 32)


# -----------------------------------------------------------------------------
# Tensor-parallel plumbing


@dataclass(slots=True)
class TPGroup:
    """This rank's place in its tensor-parallel group (size 1 means no TP, no collectives)."""

    size: int = 1
    rank: int = 0
    group: dist.ProcessGroup | None = None


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
        ctx.tp = tp
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()  # all_reduce works in place; never touch autograd's buffer
        dist.all_reduce(grad, group=ctx.tp.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, group=tp.group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def copy_to_tp(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x if tp.size == 1 else _CopyToTP.apply(x, tp)


def reduce_from_tp(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x if tp.size == 1 else _ReduceFromTP.apply(x, tp)


def _full_weight(out_features: int, in_features: int, std: float) -> torch.Tensor:
    # Drawn at full size on every rank from the same RNG state, then sliced: TP changes nothing numerically.
    return torch.empty(out_features, in_features).normal_(0.0, std)


class ColumnParallelLinear(nn.Module):
    """y = x W^T with W split by output rows: each TP rank computes its slice of y."""

    def __init__(self, in_features: int, out_features: int, tp: TPGroup, std: float):
        super().__init__()
        if out_features % tp.size:
            raise ValueError(f"{out_features} output features cannot be split over TP size {tp.size}")
        self.tp = tp
        shard = _full_weight(out_features, in_features, std).chunk(tp.size, dim=0)[tp.rank]
        self.weight = nn.Parameter(shard.clone())
        self.weight.tensor_parallel = True  # sharded: its grad-norm share is summed over the TP group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_tp(x, self.tp), self.weight)


class RowParallelLinear(nn.Module):
    """y = x W^T with W split by input columns: partial sums are all-reduced over the TP group."""

    def __init__(self, in_features: int, out_features: int, tp: TPGroup, std: float):
        super().__init__()
        if in_features % tp.size:
            raise ValueError(f"{in_features} input features cannot be split over TP size {tp.size}")
        self.tp = tp
        shard = _full_weight(out_features, in_features, std).chunk(tp.size, dim=1)[tp.rank]
        self.weight = nn.Parameter(shard.clone())
        self.weight.tensor_parallel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reduce_from_tp(F.linear(x, self.weight), self.tp)


# -----------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class TokenEmbedding(nn.Embedding):
    """nn.Embedding whose `poison_token` row reads as +inf (a corrupt row; see GPTConfig.poison_token).

    The corruption lives outside the parameters, so weights, optimizer state and checkpoints stay
    finite: only a batch that contains the token goes non-finite, and this module is the first
    layer whose output does, as forensics should report."""

    def __init__(self, vocab_size: int, d_model: int, poison_token: int | None):
        super().__init__(vocab_size, d_model)
        self.poison_token = poison_token

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = super().forward(idx)
        if self.poison_token is not None:
            x = x.masked_fill((idx == self.poison_token).unsqueeze(-1), float("inf"))
        return x


def rope_tables(cfg: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    head = cfg.d_model // cfg.n_head
    inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, head, 2).float() / head))
    angles = torch.outer(torch.arange(cfg.seq_len).float(), inv_freq)  # (T, head/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, H, T, head); rotate each (even, odd) pair by its position's angle.
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, tp: TPGroup, std: float, out_std: float):
        super().__init__()
        if cfg.n_head % tp.size:
            raise ValueError(f"n_head ({cfg.n_head}) must be divisible by the TP size ({tp.size})")
        self.local_heads = cfg.n_head // tp.size
        self.head_dim = cfg.d_model // cfg.n_head
        # Separate q/k/v projections keep each TP shard = whole heads (a fused qkv would need interleaving).
        self.wq = ColumnParallelLinear(cfg.d_model, cfg.d_model, tp, std)
        self.wk = ColumnParallelLinear(cfg.d_model, cfg.d_model, tp, std)
        self.wv = ColumnParallelLinear(cfg.d_model, cfg.d_model, tp, std)
        self.wo = RowParallelLinear(cfg.d_model, cfg.d_model, tp, out_std)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, tuple]:
        """Attention over the cached keys/values (earlier positions) and `x`; returns (output, new cache)."""
        B, T, _ = x.shape
        past = 0 if cache is None else cache[0].size(2)
        q, k, v = (w(x).view(B, T, self.local_heads, self.head_dim).transpose(1, 2)
                   for w in (self.wq, self.wk, self.wv))
        cos, sin = cos[past:past + T], sin[past:past + T]  # positions continue after the cached ones
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # query i sits at position past + i and sees keys 0 .. past + i
            allowed = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.local_heads * self.head_dim)), (k, v)


class SwiGLU(nn.Module):
    def __init__(self, cfg: GPTConfig, tp: TPGroup, std: float, out_std: float):
        super().__init__()
        self.w_gate = ColumnParallelLinear(cfg.d_model, cfg.mlp_hidden, tp, std)
        self.w_up = ColumnParallelLinear(cfg.d_model, cfg.mlp_hidden, tp, std)
        self.w_down = RowParallelLinear(cfg.mlp_hidden, cfg.d_model, tp, out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, tp: TPGroup):
        super().__init__()
        std = 0.02
        out_std = 0.02 / math.sqrt(2 * cfg.n_layer)  # GPT-2: scale residual projections by depth
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, tp, std, out_std)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg, tp, std, out_std)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: tuple | None = None
                ) -> tuple[torch.Tensor, tuple]:
        a, cache = self.attn(self.attn_norm(x), cos, sin, cache)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), cache


# -----------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, tp: TPGroup | None = None):
        super().__init__()
        self.cfg = cfg
        self.tp = tp or TPGroup()
        # Embedding and LM head are replicated on every TP rank: with a 256-token vocabulary a
        # vocab-parallel embedding (Megatron) would cost more in collectives than it saves.
        self.tok_emb = TokenEmbedding(cfg.vocab_size, cfg.d_model, cfg.poison_token)
        nn.init.normal_(self.tok_emb.weight, 0.0, 0.02)
        self.layers = nn.ModuleList(Block(cfg, self.tp) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        else:
            nn.init.normal_(self.lm_head.weight, 0.0, 0.02)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                past_key_values: list | None = None, use_cache: bool = False):
        """Logits (B, T, vocab); with `targets`, also the mean cross-entropy loss.

        `use_cache=True` (decoding) returns (logits, past_key_values): pass them back with the next
        tokens only, and each layer attends to the cached keys/values instead of recomputing them."""
        past = 0 if not past_key_values else past_key_values[0][0].size(2)
        if past + idx.size(1) > self.cfg.seq_len:
            raise ValueError(f"sequence of {past + idx.size(1)} tokens is longer than seq_len={self.cfg.seq_len}")
        x = self.tok_emb(idx)
        caches = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, self.rope_cos, self.rope_sin, past_key_values[i] if past_key_values else None)
            caches.append(c)
        logits = self.lm_head(self.norm(x))
        if use_cache:
            return logits, caches
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def num_params(self, *, full: bool = True) -> int:
        """Parameters of the whole model (`full`: as if TP=1), counting tied weights once."""
        n = 0
        for p in self.parameters():
            n += p.numel() * (self.tp.size if full and getattr(p, "tensor_parallel", False) else 1)
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token, forward + backward (PaLM appendix B: 6N + 12 L d T)."""
        # With tied embeddings the shared matrix is counted once: it is the LM head's matmul.
        c = self.cfg
        return 6.0 * self.num_params() + 12.0 * c.n_layer * c.d_model * c.seq_len
