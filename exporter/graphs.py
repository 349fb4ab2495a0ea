"""The modules that become ONNX graphs: flat tensor signatures around the reference model.

Their argument and result order is `dartrt.runtime.contract.graph_io`'s (Optimum's names for the
tokens, caches and logits, plus dartrt's step inputs and, for AdaLN models, the per-image modulation
table that prefill computes and every decode step gathers); the exporter names them from there.
"""

from __future__ import annotations

import torch
from torch import nn

from dartrt.dar.model import Transformer
from dartrt.dar.vq import VQDecoder


def _pairs(flat: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


class PrefillGraph(nn.Module):
    """(input_ids=class ids [R,1], positions [1,4], direction [1], write_index [R], *past)
    → (logits [R,1,V], [adaln_modulation [R,9,M]], *present)."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, positions, direction, write_index, *past):
        logits, caches, modulation = self.model.prefill(input_ids, positions, direction, write_index, _pairs(past))
        extra = (modulation,) if modulation is not None else ()
        return (logits, *extra, *[t for kv in caches for t in kv])


class DecodeGraph(nn.Module):
    """(input_ids=token ids [R,S], positions [S,4], direction [S], write_index [R],
    [adaln_modulation], *past) → (logits [R,S,V], *present)."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        self.adaln = model.cfg.adaln

    def forward(self, input_ids, positions, direction, write_index, *rest):
        modulation, past = (rest[0], rest[1:]) if self.adaln else (None, rest)
        logits, caches = self.model.decode(input_ids, positions, direction, write_index, _pairs(past), modulation)
        return (logits, *[t for kv in caches for t in kv])


class VQDecoderGraph(nn.Module):
    """token_grid [B,G,G] int64 → image [B,3,H,W] float32 (the codebook is pre-normalised)."""

    def __init__(self, vq: VQDecoder) -> None:
        super().__init__()
        self.vq = vq

    def forward(self, token_grid):
        return self.vq.decode_indices(token_grid)
