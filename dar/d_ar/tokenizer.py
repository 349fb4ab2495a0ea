"""D-AR's tokenizer, decode path only: token ids → per-token conditions → (with the sampler) pixels.

The module tree mirrors the public ``VQModel`` attribute for attribute (``quantize.embedding``,
``quant_out_conv``, ``decoder_embedding``, ``decoder_layers``, ``norm``, ``diff_decoder.net``), so that a
public checkpoint's decode-path keys load unchanged; the encoder-side modules are not built.

Conditions: the ids' L2-normalised codebook vectors, projected by the 1×1 ``quant_out_conv`` (no bias), plus
learned absolute positions, through the causal ``decoder_layers`` and a final LayerNorm without affine.
Causality makes them streamable: ``conditions_step`` runs one group of tokens against a KV cache and gives
exactly the rows the whole pass (``conditions``) gives for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conditions import KV, ConditionBlock
from .config import TokenizerConfig
from .layers import plain_layer_norm
from .velocity import DiffusionDecoder


class Codebook(nn.Module):
    """``quantize.embedding`` [codebook_size, codebook_dim]; rows are L2-normalised at lookup."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.embedding(ids, self.embedding.weight), p=2, dim=-1)


class DARTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.quantize = Codebook(cfg)
        self.quant_out_conv = nn.Conv2d(cfg.codebook_dim, cfg.cond_dim, 1, bias=False)
        self.decoder_embedding = nn.Embedding(cfg.max_tokens, cfg.cond_dim)
        self.decoder_layers = nn.ModuleList(ConditionBlock(cfg) for _ in range(cfg.cond_layers))
        self.norm = plain_layer_norm(cfg.cond_dim)
        self.diff_decoder = DiffusionDecoder(cfg)

    # ---- conditions ----------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids [B, S] at positions [S] or [B, S] → the first block's input [B, S, cond_dim]."""
        return self.embed_vectors(self.quantize(ids), positions)

    def embed_vectors(self, vectors: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Code vectors [B, S, codebook_dim] (L2-normalised) → the first block's input. Training feeds the
        encoder's straight-through vectors here; decoding feeds the codebook rows of the ids."""
        vec = vectors.transpose(1, 2).unsqueeze(2)  # [B, C, 1, S], the public layout
        tokens = self.quant_out_conv(vec.to(self.quant_out_conv.weight.dtype)).squeeze(2).transpose(1, 2)
        return tokens + self.decoder_embedding(positions)

    def conditions(self, ids: torch.Tensor) -> torch.Tensor:
        """The whole causal pass: ids [B, n] (n ≤ num_tokens, a prefix is fine) → conditions [B, n, cond_dim]."""
        return self.conditions_of_vectors(self.quantize(ids))

    def conditions_of_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """The whole causal pass from code vectors [B, n, codebook_dim] (see `embed_vectors`)."""
        h = self.embed_vectors(vectors, torch.arange(vectors.shape[1], device=vectors.device))
        for layer in self.decoder_layers:
            h, _ = layer(h)
        return self.norm(h)

    def new_condition_cache(self, batch: int, dtype: torch.dtype | None = None,
                            device: torch.device | str | None = None) -> list[KV]:
        """Static per-layer key/value caches [B, H, num_tokens, Dh]."""
        ref = self.decoder_embedding.weight
        cfg = self.cfg
        shape = (batch, cfg.cond_dim // cfg.head_dim, cfg.num_tokens, cfg.head_dim)
        kw = dict(dtype=dtype or ref.dtype, device=device or ref.device)
        return [(torch.zeros(shape, **kw), torch.zeros(shape, **kw)) for _ in range(cfg.cond_layers)]

    def conditions_step(self, ids: torch.Tensor, write_index: torch.Tensor,
                        caches: list[KV]) -> tuple[torch.Tensor, list[KV]]:
        """ids [B, S] at positions write_index[b] + s → (their conditions [B, S, cond_dim], updated caches).

        Positions and cache slots come from ``write_index`` as a tensor, so one exported graph serves every
        group (and any chunking of the tokens, e.g. one token per AR step)."""
        positions = write_index[:, None] + torch.arange(ids.shape[1], device=ids.device)
        h = self.embed(ids, positions)
        new: list[KV] = []
        for layer, cache in zip(self.decoder_layers, caches):
            h, kv = layer(h, cache, write_index)
            new.append(kv)
        return self.norm(h), new

    # ---- velocity ------------------------------------------------------------------------------------
    def velocity(self, x: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One velocity-network call: x [B, C, H, W] at time s [B], conditions of one group [B, S, cond_dim]."""
        return self.diff_decoder.net(x, s, cond)


def build_tokenizer(cfg: TokenizerConfig, device: str | torch.device = "cpu", seed: int | None = 0) -> DARTokenizer:
    """A tokenizer with random weights (``device='meta'`` allocates nothing, for loading).

    Random init is normal(0.02) everywhere except LayerNorms (ones/zeros) and the codebook (normal), with the
    residual gates and AdaLN non-zero so that every path of an untrained model does work in tests (the
    public init zeroes gates, AdaLN and conv_out, which would make an untrained decoder trivial)."""
    if seed is not None and str(device) != "meta":
        torch.manual_seed(seed)
    with torch.device(device):
        model = DARTokenizer(cfg)
    if str(device) != "meta":
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name.rsplit(".", 2)[-2]:
                    param.copy_(torch.ones_like(param) if name.endswith("weight") else torch.zeros_like(param))
                elif name.startswith("quantize."):
                    param.normal_()
                elif name.endswith(("gate1", "gate2")):
                    param.uniform_(0.5, 1.0)
                else:
                    param.normal_(std=0.02)
    return model.eval()
