"""Building blocks both of D-AR's tokenizer transformers share: QK-normalised attention, the MLP, 2D RoPE.

Attribute names are the public code's (``q``, ``k``, ``v``, ``q_norm``, ``k_norm``, ``proj``; ``fc1``, ``fc2``)
so that checkpoints load unchanged. Attention is split into its projections and the attention proper, so
that a caller can write keys/values into a cache in between (the streamed conditions transformer) or give
queries and keys different inputs and rotations (the velocity network's cross attention).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..rope import apply_rope

# Every LayerNorm in the public tokenizer uses eps 1e-6.
LN_EPS = 1e-6

Rope = tuple[torch.Tensor, torch.Tensor]


class QKNormAttention(nn.Module):
    """Multi-head attention with biased q/k/v projections and a LayerNorm (with affine) on every head's q
    and k, applied before any rotation."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.n_head, self.head_dim = dim // head_dim, head_dim
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(head_dim, eps=LN_EPS)
        self.k_norm = nn.LayerNorm(head_dim, eps=LN_EPS)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.n_head, self.head_dim).transpose(1, 2)

    def query(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        """[B, S, dim] → normalised (and rotated) queries [B, H, S, Dh]."""
        q = self.q_norm(self._heads(self.q(x)))
        return apply_rope(q, *rope) if rope is not None else q

    def key_value(self, x: torch.Tensor, rope: Rope | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, S, dim] → normalised (and rotated) keys and plain values, [B, H, S, Dh] each."""
        k = self.k_norm(self._heads(self.k(x)))
        if rope is not None:
            k = apply_rope(k, *rope)
        return k, self._heads(self.v(x))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               causal: bool = False) -> torch.Tensor:
        """Scaled dot-product attention (scale Dh^-1/2) and the output projection → [B, S, dim]."""
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        b, _, s, _ = q.shape
        return self.proj(y.transpose(1, 2).reshape(b, s, -1))


class Mlp(nn.Module):
    """fc1, SiLU, fc2 (timm's ``Mlp`` with ``act_layer=nn.SiLU``: both linears biased)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


def plain_layer_norm(dim: int) -> nn.LayerNorm:
    """A LayerNorm without weight or bias (it holds no state-dict entries)."""
    return nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False, bias=False)


def grid_rope(rows: int, cols: int, head_dim: int, base: float) -> Rope:
    """cos, sin [rows·cols, Dh/2] for row-major image tokens: the first Dh/4 rotary pairs turn with the row,
    the last Dh/4 with the column (Flux's two-axis RoPE as D-AR uses it, axes of 32 dims at Dh = 64).

    Each axis of a dims has ω_k = 1 / base^(2k/a), k < a/2, computed in float64 as the public code does,
    so the float32 tables match it bit for bit. Cached in eager mode (the image size is fixed per model);
    never while tracing (export, compile), whose fake tensors must not land in the cache.
    """
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
        return _grid_rope(rows, cols, head_dim, base)
    return _cached_grid_rope(rows, cols, head_dim, base)


@functools.lru_cache(maxsize=16)
def _cached_grid_rope(rows: int, cols: int, head_dim: int, base: float) -> Rope:
    return _grid_rope(rows, cols, head_dim, base)


def _grid_rope(rows: int, cols: int, head_dim: int, base: float) -> Rope:
    axis = head_dim // 2
    omega = 1.0 / (base ** (torch.arange(0, axis, 2, dtype=torch.float64) / axis))
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    angles = torch.cat([r.reshape(-1, 1) * omega, c.reshape(-1, 1) * omega], dim=-1)
    return torch.cos(angles).float(), torch.sin(angles).float()
