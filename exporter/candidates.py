"""The adaptive-order graphs (``candidates``, ``commit``) and the editing graph (``vq_encoder``).

- ``candidates``: the last token scored with C candidate next cells in one call (`Transformer.forward_
  candidates`): each candidate query attends to the cached slots < write_index and to its own key only,
  under one bool mask [R, 1, C, T_max + C] over the cache concatenated with the C new keys (ONNX
  ``Attention`` with 4-D q/k/v/mask, as TensorRT's parser wants them). The caches are inputs only.
- ``commit``: the chosen candidate's K/V row of every layer, gathered by ``choice`` [R] and written with
  ``TensorScatter`` at ``write_index``; a runtime binds ``present.{i}.*`` to the cache buffers, so the
  write is in place, and the candidate rows stay on the device between the two calls (no host round
  trip, no second forward). A few kB of work, but it has to be a graph: the cache lives in the runtime's
  device buffers, which only a graph (or a device copy API) may write.
- ``vq_encoder``: an image [B, 3, H, W] in [-1, 1] → its token grid, for editing; exported only when the
  checkpoint carries the VQ's encoder.

Each is checked in onnxruntime against eager torch under the step rule (`runtime.metrics.FP32_STEP`) at
several row and candidate counts, like the step graphs; the result goes into the manifest's
``export_check``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dartrt.dar.checkpoint import Checkpoint
from dartrt.dar.model import Transformer, commit_candidate
from dartrt.runtime.candidates import candidate_inputs
from dartrt.runtime.contract import (
    BATCH_DIM,
    CANDIDATES,
    CANDIDATES_DIM,
    COMMIT,
    IMAGE,
    TOKEN_GRID,
    VQ_ENCODER,
    graph_io,
)
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.metrics import FP32_STEP, Tolerance

from .onnx_export import ExportedGraph, export_graph


def _pairs(flat) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


class CandidatesGraph(nn.Module):
    """(input_ids [R,1], positions [R,C,4], direction [R,C], write_index [R], [adaln_modulation], *past)
    → (logits [R,C,V], *candidate rows [R,H,C,D])."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model
        self.adaln = model.cfg.adaln

    def forward(self, input_ids, positions, direction, write_index, *rest):
        modulation, past = (rest[0], rest[1:]) if self.adaln else (None, rest)
        logits, rows = self.model.decode_candidates(input_ids, positions, direction, write_index, _pairs(past),
                                                    modulation)
        return (logits, *[t for kv in rows for t in kv])


class CommitGraph(nn.Module):
    """(choice [R], write_index [R], *candidate rows, *past) → *present (the chosen rows written)."""

    def __init__(self, n_layer: int) -> None:
        super().__init__()
        self.n_layer = n_layer

    def forward(self, choice, write_index, *rest):
        rows, past = rest[:2 * self.n_layer], rest[2 * self.n_layer:]
        caches = commit_candidate(_pairs(past), _pairs(rows), choice, write_index)
        return tuple(t for kv in caches for t in kv)


def _candidate_args(model: Transformer, rows: int, count: int, write: int, seed: int) -> tuple:
    """Valid inputs: a last token on a random cell, ``count`` distinct free candidate cells, random caches."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    n = cfg.grid_size ** 2
    last = rng.integers(0, n, rows)
    cells = np.stack([rng.choice(np.setdiff1d(np.arange(n), [c]), count, replace=False) for c in last])
    pos, dirs = (torch.from_numpy(a) for a in candidate_inputs(last, np.sort(cells, axis=1), cfg.grid_size))
    shape = (rows, cfg.n_head, cfg.seq_len, cfg.head_dim)
    past = [torch.randn(shape, generator=g) * 0.5 for _ in range(2 * cfg.n_layer)]
    ids = torch.randint(0, cfg.vocab_size, (rows, 1), generator=g)
    extra = ()
    if cfg.adaln:
        with torch.no_grad():
            extra = (model.modulation_table(torch.randint(0, cfg.num_classes + 1, (rows,), generator=g)),)
    return (ids, pos, dirs, torch.full((rows,), write, dtype=torch.long), *extra, *past)


def _commit_args(model: Transformer, rows: int, count: int, write: int, seed: int) -> tuple:
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    cand = [torch.randn(rows, cfg.n_head, count, cfg.head_dim, generator=g) for _ in range(2 * cfg.n_layer)]
    past = [torch.randn(rows, cfg.n_head, cfg.seq_len, cfg.head_dim, generator=g) for _ in range(2 * cfg.n_layer)]
    choice = torch.randint(0, count, (rows,), generator=g)
    return (choice, torch.full((rows,), write, dtype=torch.long), *cand, *past)


def export_candidate_graphs(model: Transformer, folder: Path, opset: int, check: bool, external_data: bool,
                            tolerance: Tolerance = FP32_STEP) -> dict[str, ExportedGraph]:
    """candidates.onnx and commit.onnx, rows and candidates dynamic, T_max static. The example inputs use 4
    rows and 3 candidates (torch.export specialises dims of 0 or 1)."""
    cfg = model.cfg
    n = cfg.seq_len
    batch = torch.export.Dim(BATCH_DIM, min=1, max=1024)
    cands = torch.export.Dim(CANDIDATES_DIM, min=1, max=n)
    out: dict[str, ExportedGraph] = {}

    io = graph_io(CANDIDATES, cfg.n_layer, cfg.adaln)
    rest = tuple({0: batch} for _ in io.inputs[4:])
    shapes = ({0: batch}, {0: batch, 1: cands}, {0: batch, 1: cands}, {0: batch}, rest)
    checks = [_candidate_args(model, r, c, w, 20 + i)
              for i, (r, c, w) in enumerate(((2, 1, 1), (1, n - 1, 1), (3, 5, n - 1)))] if check else []
    out[CANDIDATES] = export_graph(CandidatesGraph(model), _candidate_args(model, 4, 3, 5, 0),
                                   folder / f"{CANDIDATES}.onnx", list(io.inputs), list(io.outputs), shapes, opset,
                                   external_data, checks, tolerance)

    io = graph_io(COMMIT, cfg.n_layer, cfg.adaln)
    layers = 2 * cfg.n_layer
    rest = tuple([{0: batch, 2: cands}] * layers + [{0: batch}] * layers)
    checks = [_commit_args(model, r, c, w, 30 + i)
              for i, (r, c, w) in enumerate(((2, 1, 0), (1, 7, n - 1), (3, 5, 4)))] if check else []
    out[COMMIT] = export_graph(CommitGraph(cfg.n_layer), _commit_args(model, 4, 3, 5, 1), folder / f"{COMMIT}.onnx",
                               list(io.inputs), list(io.outputs), ({0: batch}, {0: batch}, rest), opset, False,
                               checks, tolerance)
    return out


def export_vq_encoder(ckpt: Checkpoint, folder: Path, opset: int, check: bool = True,
                      tolerance: Tolerance = FP32_STEP) -> ExportedGraph:
    """vq_encoder.onnx: images [B, 3, H, W] → token grids [B, G, G]. Judged on its token ids (the rule with
    these bounds means identical ids), on images decoded from random grids: real inputs, whose codes are
    not near-ties of a random image."""
    encoder = copy.deepcopy(ckpt.vq_encoder).float().eval()
    decoder = ckpt.vq.float().eval()
    g = ckpt.config.grid_size
    gen = torch.Generator().manual_seed(0)
    codes = encoder.quantize.embedding.weight.shape[0]

    def images(batch: int) -> torch.Tensor:
        with torch.no_grad():
            return decoder.decode_indices(torch.randint(0, codes, (batch, g, g), generator=gen)).clamp(-1, 1)

    batch = torch.export.Dim(BATCH_DIM, min=1, max=1024)
    checks = [(images(b),) for b in (1, 3)] if check else []
    return export_graph(encoder, (images(2),), folder / f"{VQ_ENCODER}.onnx", [IMAGE], [TOKEN_GRID], ({0: batch},),
                        opset, False, checks, tolerance)


def export_editing_graphs(ckpt: Checkpoint, model: Transformer, folder: Path, opset: int, check: bool,
                          external_data: bool, tolerance: Tolerance, adaptive: bool | None, log
                          ) -> dict[str, ExportedGraph]:
    """What `export_package` adds: the adaptive graphs (``adaptive`` True, or None and the model trained for
    any order) and the VQ encoder (when the checkpoint has one)."""
    cfg = model.cfg
    check_adaptive_export(cfg, adaptive)
    out: dict[str, ExportedGraph] = {}
    if adaptive or (adaptive is None and cfg.any_order and cfg.rope == "4d"):
        out.update(export_candidate_graphs(model, folder, opset, check, external_data, tolerance))
    if ckpt.vq_encoder is not None:
        out[VQ_ENCODER] = export_vq_encoder(ckpt, folder, opset, check, tolerance)
    for name, g in out.items():
        log(f"  {name}: exported in {g.seconds:.1f}s, onnxruntime vs torch max-abs {g.max_abs_err:.2e}")
    return out


def check_adaptive_export(cfg, adaptive: bool | None) -> None:
    """Asked for adaptive graphs on a model whose inputs do not name the next cell: refused before exporting."""
    if adaptive and cfg.rope != "4d":
        raise DartrtError(f"adaptive-order graphs need a 4D-RoPE model (told which cell it predicts); {cfg.name} "
                          f"has {cfg.rope} RoPE")
