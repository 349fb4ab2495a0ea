"""RoPE tables for the 1D, 2D and 4D members, and the interleaved-pair rotation.

Every member uses one table of per-position angles shared by all of its axes (the chunks of head_dim
use the same frequencies). A step gathers one row per axis with its ``positions`` column and
concatenates them, giving cos/sin [..., D/2] for positions [..., 4]: [S, D/2] for one order shared
by the batch (training), [B, S, D/2] for the per-row positions of the step graphs. Row ``G`` of the
2D/4D tables is the class token's "no current cell" row: identity (cos 1, sin 0) for DAR, all zeros
for LlamaGen, whose released ``freqs_cis`` zeroes the class token's q and k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import ModelConfig

ROPE_AXES = {"1d": (0,), "2d": (0, 1), "4d": (0, 1, 2, 3)}


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [rows, D / (2·axes)] in fp32."""
    axes = len(ROPE_AXES[cfg.rope])
    pairs = cfg.head_dim // (2 * axes)
    k = torch.arange(pairs, dtype=torch.float64)
    omega = cfg.rope_base ** (-2.0 * axes * k / cfg.head_dim)
    rows = cfg.seq_len if cfg.rope == "1d" else cfg.grid_size
    angles = torch.arange(rows, dtype=torch.float64)[:, None] * omega[None, :]
    cos, sin = torch.cos(angles), torch.sin(angles)
    if cfg.rope != "1d":
        fill = 0.0 if cfg.rope_class_row == "zero" else 1.0
        cos = torch.cat([cos, torch.full((1, pairs), fill, dtype=torch.float64)])
        sin = torch.cat([sin, torch.zeros(1, pairs, dtype=torch.float64)])
    return cos.float(), sin.float()


def gather_cos_sin(cos_table: torch.Tensor, sin_table: torch.Tensor, positions: torch.Tensor,
                   rope: str) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [..., 4] → cos, sin [..., D/2], one table row per axis, concatenated."""
    axes = ROPE_AXES[rope]
    # F.embedding exports as plain Gather (axis 0), which every backend maps to a row lookup.
    cos = torch.cat([F.embedding(positions[..., a], cos_table) for a in axes], dim=-1)
    sin = torch.cat([F.embedding(positions[..., a], sin_table) for a in axes], dim=-1)
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2j, 2j+1) of x [B, H, S, D] by cos/sin [S, D/2] (one order for the batch)
    or [B, S, D/2] (per row), in fp32.

    While exporting, this becomes one ONNX ``RotaryEmbedding`` (interleaved, per-token cos/sin [B, S, D/2]),
    which TensorRT maps onto its native rotary layer.
    """
    if torch.onnx.is_in_onnx_export():
        if cos.dim() == 2:
            cos, sin = (t.unsqueeze(0).expand(x.shape[0], -1, -1) for t in (cos, sin))
        return torch.onnx.ops.rotary_embedding(x, cos.to(x.dtype), sin.to(x.dtype), interleaved=True)
    if cos.dim() == 3:  # per row: broadcast over the heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(-2).type_as(x)
