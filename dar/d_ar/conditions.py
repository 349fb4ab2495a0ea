"""The conditions transformer's block: D-AR's causal pre-norm block with per-channel residual gates.

    x += gate1 ⊙ Attn(LN1(x))      (causal self-attention, QK LayerNorm, no positional rotation)
    x += gate2 ⊙ MLP(LN2(x))

The same block serves the whole causal pass (no cache, ``is_causal``) and the streamed pass, where a group
of tokens at slots ``write_index + s`` writes its keys/values into a static cache [B, H, N, Dh] and attends
under the mask j <= write_index + s. The cache write and mask are the AR decoder's (``dar.model``), so the
export later maps them onto the same ONNX ops.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import attention_mask, kv_write
from .config import TokenizerConfig
from .layers import LN_EPS, Mlp, QKNormAttention

KV = tuple[torch.Tensor, torch.Tensor]


class ConditionBlock(nn.Module):
    """One of ``decoder_layers``: keys ``attention.*``, ``mlp.fc1/fc2``, ``norm1``, ``norm2``, ``gate1``, ``gate2``."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        d = cfg.cond_dim
        self.attention = QKNormAttention(d, cfg.head_dim)
        self.mlp = Mlp(d, d * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(d, eps=LN_EPS)
        self.norm2 = nn.LayerNorm(d, eps=LN_EPS)
        # Zero-initialised in the public code: an untrained block is the identity.
        self.gate1 = nn.Parameter(torch.zeros(d))
        self.gate2 = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor, cache: KV | None = None,
                write_index: torch.Tensor | None = None) -> tuple[torch.Tensor, KV]:
        """x [B, S, d] → (x, (keys, values)). Without a cache: the causal pass over x alone. With one: x sits
        at slots write_index[b] + s of the cache, which it updates (in place in eager mode)."""
        h = self.norm1(x)
        q = self.attention.query(h)
        k, v = self.attention.key_value(h)
        mask = None
        if cache is not None:
            k = kv_write(cache[0], k, write_index)
            v = kv_write(cache[1], v, write_index)
            mask = attention_mask(write_index, x.shape[1], k.shape[2])
        x = x + self.attention.attend(q, k, v, mask=mask, causal=cache is None) * self.gate1
        return x + self.mlp(self.norm2(x)) * self.gate2, (k, v)
