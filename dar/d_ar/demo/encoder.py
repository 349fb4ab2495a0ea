"""The demo tokenizer's encoder: a 64×64 image → ``num_tokens`` 1D token vectors → codebook ids.

D-AR's encoder (showlab/D-AR ``VQModel.encode``) appends learned query tokens to the image patches and runs
one transformer over both under a mask where every token sees all patches and a query sees only the queries
before it; the queries' outputs, projected to the codebook width and L2-normalised, are quantised to the
nearest L2-normalised code. Causality over the queries is what makes the tokens sequential: token k is
computed without tokens after it, like the conditions the decoder builds from them.

This is a small version of that, written for the demo: learned absolute positions for the patches (no
2D RoPE), the same blocks as the decoder's conditions transformer (QK-LayerNorm attention, SiLU MLP, no
gates), and the codebook shared with the decode path (``DARTokenizer.quantize``), so a trained pair is one
codebook. The encoder is only needed to make training tokens and reconstructions; generation never runs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TokenizerConfig
from ..layers import LN_EPS, Mlp, QKNormAttention, plain_layer_norm


@dataclass
class EncoderConfig:
    """The encoder's own widths; the token count, codebook width and image size come from the tokenizer."""

    dim: int = 128
    layers: int = 3
    patch_size: int = 8
    head_dim: int = 64
    mlp_ratio: int = 4

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"encoder config: unknown field {unknown[0]!r}")
        return cls(**data)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block under an explicit attention mask."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: int) -> None:
        super().__init__()
        self.attention = QKNormAttention(dim, head_dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        k, v = self.attention.key_value(h)
        x = x + self.attention.attend(self.attention.query(h), k, v, mask=mask)
        return x + self.mlp(self.norm2(x))


def encoder_mask(patches: int, queries: int) -> torch.Tensor:
    """Bool [P+Q, P+Q]: every token sees every patch; a query also sees itself and the queries before it."""
    n = patches + queries
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
    mask[:, :patches] = True
    return mask


class DemoEncoder(nn.Module):
    """image [B, 3, H, W] in [-1, 1] → unnormalised token vectors [B, num_tokens, codebook_dim]."""

    def __init__(self, tok: TokenizerConfig, cfg: EncoderConfig) -> None:
        super().__init__()
        if tok.image_size % cfg.patch_size:
            raise ValueError(f"image size {tok.image_size} is not a multiple of the encoder patch {cfg.patch_size}")
        self.cfg = cfg
        self.num_tokens = tok.num_tokens
        patches = (tok.image_size // cfg.patch_size) ** 2
        self.patchify = nn.Conv2d(tok.channels, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.patch_positions = nn.Parameter(torch.zeros(1, patches, cfg.dim))
        self.queries = nn.Parameter(torch.zeros(1, tok.num_tokens, cfg.dim))
        self.blocks = nn.ModuleList(EncoderBlock(cfg.dim, cfg.head_dim, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.norm = plain_layer_norm(cfg.dim)
        self.quant_in = nn.Linear(cfg.dim, tok.codebook_dim, bias=False)
        self.register_buffer("mask", encoder_mask(patches, tok.num_tokens), persistent=False)
        self._init()

    def _init(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.patch_positions, std=0.02)
        nn.init.trunc_normal_(self.queries, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.patchify(images).flatten(2).transpose(1, 2) + self.patch_positions
        h = torch.cat([p, self.queries.expand(p.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            h = block(h, self.mask)
        return self.quant_in(self.norm(h[:, -self.num_tokens:]))


def quantize(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2-normalised z [..., C] → (ids [...], normalised z, normalised codes [..., C]) by cosine similarity,
    the rule of D-AR's quantiser (nearest L2-normalised code)."""
    zn = F.normalize(z, p=2, dim=-1)
    cn = F.normalize(codebook, p=2, dim=-1)
    ids = torch.argmax(zn.reshape(-1, zn.shape[-1]) @ cn.t(), dim=-1).reshape(zn.shape[:-1])
    return ids, zn, F.embedding(ids, cn)


@torch.no_grad()
def encode_ids(encoder: DemoEncoder, codebook: torch.Tensor, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """Token ids [B, num_tokens] of images [B, 3, H, W] in [-1, 1], ``batch`` images at a time."""
    out = [quantize(encoder(images[i:i + batch]), codebook)[0] for i in range(0, len(images), batch)]
    return torch.cat(out)
