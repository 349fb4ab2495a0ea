"""D-AR's pixel-space velocity network v = f(x, s, cond_g): one call per ODE step, one group of conditions.

    patches = pixel_unshuffle(x, p)  → conv_in (1×1) → tokens [B, (H/p)·(W/p), dim]
    c       = LN(cond_mlp(cond_g))                           (once per call)
    block:  t  = time_embed(s)                               (each block has its own)
            c' = LN(cond_embed(c)),  sc = CrossAttn(q = LN(x) rotated, k = v = c')
            (shift1, scale1, gate1, shift2, scale2, gate2) = Linear(SiLU(t + sc))   per token
            x += gate1 · SelfAttn(LN(x)(1 + scale1) + shift1)   (2D RoPE on q and k)
            x += gate2 · MLP(LN(x)(1 + scale2) + shift2)
    out     = pixel_shuffle(conv_out(LN(x)), p)   (prediction "data": the image x̂; v = (x̂ − x) / (1 − s))

Every LN here has no affine. The forward takes tensors only (x, s, cond), so that it exports as one graph;
the sampler around it runs on the host. ``repa_out`` (a training-time alignment head) is not built.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import MIN_ONE_MINUS_S, TokenizerConfig
from .layers import Mlp, QKNormAttention, Rope, grid_rope, plain_layer_norm


def timestep_features(s: torch.Tensor, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoid of scale·s [B] → [B, dim], cos then sin, frequencies exp(-ln(max_period)·k/half) in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=s.device) / half)
    args = (s * scale)[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """``time_embed.mlp.{0,2}``: the sinusoid (as wide as the model) through Linear, SiLU, Linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(s, self.dim).to(self.mlp[0].weight.dtype))


class VelocityBlock(nn.Module):
    """SiT-style block with per-token AdaLN driven by its own time embedding plus a cross attention of the
    image tokens to the group's conditions."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.attention = QKNormAttention(d, cfg.head_dim)
        self.cross_attn = QKNormAttention(d, cfg.head_dim)
        self.mlp = Mlp(d, d * cfg.mlp_ratio)
        self.norm = plain_layer_norm(d)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.time_embed = TimestepEmbedder(d)
        self.cond_embed = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, s: torch.Tensor, rope: Rope) -> torch.Tensor:
        t = self.time_embed(s)[:, None, :]
        c = self.norm(self.cond_embed(cond))
        k, v = self.cross_attn.key_value(c)
        sc = self.cross_attn.attend(self.cross_attn.query(self.norm(x), rope), k, v)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(t + sc).chunk(6, dim=-1)
        h = self.norm(x) * (1 + scale1) + shift1
        k, v = self.attention.key_value(h, rope)
        x = x + gate1 * self.attention.attend(self.attention.query(h, rope), k, v)
        return x + gate2 * self.mlp(self.norm(x) * (1 + scale2) + shift2)


class VelocityNet(nn.Module):
    """``diff_decoder.net``: keys ``cond_mlp``, ``conv_in``, ``conv_out``, ``blocks.{i}.*``."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cond_mlp = nn.Linear(cfg.cond_dim, cfg.dim)
        self.norm = plain_layer_norm(cfg.dim)
        self.conv_in = nn.Conv2d(cfg.patch_dim, cfg.dim, 1)
        self.conv_out = nn.Conv2d(cfg.dim, cfg.patch_dim, 1)
        self.blocks = nn.ModuleList(VelocityBlock(cfg) for _ in range(cfg.depth))

    def forward(self, x: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] at time s [B] (or a scalar), cond [B, S, cond_dim] → velocity [B, C, H, W]."""
        cfg = self.cfg
        b = x.shape[0]
        s = s.reshape(-1).expand(b) if s.numel() == 1 else s.reshape(b)
        c = self.norm(self.cond_mlp(cond))
        patches = F.pixel_unshuffle(x, cfg.patch_size)  # channels ordered (c, row in patch, col in patch)
        rows, cols = patches.shape[-2:]
        cos, sin = grid_rope(int(rows), int(cols), cfg.head_dim, float(cfg.rope_base))
        rope = (cos.to(x.device), sin.to(x.device))
        h = self.conv_in(patches).flatten(2).transpose(1, 2)
        for block in self.blocks:
            h = block(h, c, s, rope)
        h = self.norm(h).transpose(1, 2).reshape(b, cfg.dim, rows, cols)
        out = F.pixel_shuffle(self.conv_out(h), cfg.patch_size)
        if cfg.prediction == "data":  # x̂ (data_std-scaled) → v = (x̂ − x) / (1 − s) (config.prediction)
            return (out - x) / (1 - s.to(out.dtype)).clamp(min=MIN_ONE_MINUS_S).reshape(b, 1, 1, 1)
        return out


class DiffusionDecoder(nn.Module):
    """``diff_decoder``: only a holder for ``net`` (the public module's sampler lives in sampler.py here)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.net = VelocityNet(cfg)
