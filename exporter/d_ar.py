"""`dartrt export` of a D-AR checkpoint: the AR graphs as for every model, plus the tokenizer's two graphs.

The package holds ``prefill.onnx`` and ``decode.onnx`` (D-AR's GPT is the family's 1D member, exported by
the same code as every other member), ``conditions.onnx`` and ``velocity.onnx`` (names and I/O in
`dartrt.runtime.contract`, D-AR section) and a manifest with ``family: "d-ar"`` and a ``d_ar`` entry that
carries everything the host-side sampler needs: groups, tokens per step, the shifted time grid as float32
values, the token range of every step, AB2's coefficients, data_std and the image shape. The runtime reads
the grid from there rather than recomputing it, so the package is the one definition of its sampler.

Every graph is checked in onnxruntime against eager torch under the step graphs' tolerance rule
(`dartrt.runtime.metrics.FP32_STEP`) before the package is renamed into place.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from dartrt.dar.d_ar.checkpoint import DARCheckpoint
from dartrt.dar.d_ar.sampler import time_grid
from dartrt.dar.d_ar.spec import d_ar_manifest_entry
from dartrt.dar.d_ar.tokenizer import DARTokenizer
from dartrt.graphs.onnxfile import EXTERNAL_DATA_BYTES
from dartrt.runtime.contract import (
    BATCH_DIM,
    CONDITIONS,
    D_AR_FAMILY,
    OPSET,
    TOKENS_DIM,
    VELOCITY,
    d_ar_graph_io,
)
from dartrt.runtime.metrics import FP32_STEP, Tolerance

from .onnx_export import ExportedGraph, export_graph
from .target import staging_folder


def _pairs(flat: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


class ConditionsGraph(nn.Module):
    """(input_ids [R, S], write_index [R], *past) → (conditions [R, S, cond_dim], *present)."""

    def __init__(self, tokenizer: DARTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, input_ids, write_index, *past):
        cond, caches = self.tokenizer.conditions_step(input_ids, write_index, _pairs(past))
        return (cond, *[t for kv in caches for t in kv])


class VelocityGraph(nn.Module):
    """(x [R, 3, H, W], s [R], conditions [R, tokens_per_step, cond_dim]) → velocity [R, 3, H, W]."""

    def __init__(self, tokenizer: DARTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, x, s, conditions):
        return self.tokenizer.velocity(x, s, conditions)


def _cache_shape(tokenizer: DARTokenizer, rows: int) -> tuple[int, int, int, int]:
    cfg = tokenizer.cfg
    return rows, cfg.cond_dim // cfg.head_dim, cfg.num_tokens, cfg.head_dim


def conditions_args(tokenizer: DARTokenizer, rows: int, seq: int, write: int, seed: int) -> tuple:
    """Valid conditions-graph inputs: ids of the codebook at slots write..write+seq-1, random caches."""
    cfg = tokenizer.cfg
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.codebook_size, (rows, seq), generator=g)
    past = [torch.randn(_cache_shape(tokenizer, rows), generator=g) * 0.5 for _ in range(2 * cfg.cond_layers)]
    return (ids, torch.full((rows,), write, dtype=torch.long), *past)


def velocity_args(tokenizer: DARTokenizer, rows: int, step: int, seed: int) -> tuple:
    """Valid velocity-graph inputs: x ~ N(0, 1), the grid's time of ``step``, unit-scale conditions."""
    cfg = tokenizer.cfg
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cfg.channels, cfg.image_size, cfg.image_size, generator=g)
    s = time_grid(cfg)[step].repeat(rows)
    cond = torch.randn(rows, cfg.tokens_per_step, cfg.cond_dim, generator=g)
    return x, s, cond


def _weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def export_tokenizer_graphs(tokenizer: DARTokenizer, folder: Path, opset: int = OPSET, check: bool = True,
                            tolerance: Tolerance = FP32_STEP) -> dict[str, ExportedGraph]:
    """conditions.onnx (batch and S dynamic, cache slots static) and velocity.onnx (batch dynamic).

    As for the AR graphs, the examples use 4 rows and S = 3: torch.export specialises dims of 0 or 1."""
    cfg = tokenizer.cfg
    batch = torch.export.Dim(BATCH_DIM, min=1, max=1024)
    tokens = torch.export.Dim(TOKENS_DIM, min=1, max=cfg.num_tokens)
    external = _weight_bytes(tokenizer) > EXTERNAL_DATA_BYTES
    out: dict[str, ExportedGraph] = {}
    io = d_ar_graph_io(CONDITIONS, cfg.cond_layers)
    per = cfg.tokens_per_step
    cases = ((2, per, 0), (1, 1, cfg.num_tokens - 1), (3, min(3, cfg.num_tokens), 1), (1, cfg.num_tokens, 0))
    checks = [conditions_args(tokenizer, r, s, w, 20 + i) for i, (r, s, w) in enumerate(cases)] if check else []
    cache_dims = tuple({0: batch} for _ in range(2 * cfg.cond_layers))
    out[CONDITIONS] = export_graph(
        ConditionsGraph(tokenizer), conditions_args(tokenizer, 4, min(3, cfg.num_tokens), 1, 0),
        folder / f"{CONDITIONS}.onnx", list(io.inputs), list(io.outputs),
        ({0: batch, 1: tokens}, {0: batch}, cache_dims), opset, external, checks, tolerance)
    io = d_ar_graph_io(VELOCITY, cfg.cond_layers)
    last = cfg.denoising_steps - 1
    checks = [velocity_args(tokenizer, r, step, 30 + r) for r, step in ((1, 0), (3, last), (2, last // 2))] \
        if check else []
    out[VELOCITY] = export_graph(
        VelocityGraph(tokenizer), velocity_args(tokenizer, 4, 1, 1), folder / f"{VELOCITY}.onnx",
        list(io.inputs), list(io.outputs), ({0: batch}, {0: batch}, {0: batch}), opset, external, checks,
        tolerance)
    return out


def export_d_ar_package(ckpt: DARCheckpoint, out: str | Path, *, force: bool = False, opset: int = OPSET,
                        check: bool = True, log=print, external_data: bool | None = None,
                        tolerance: Tolerance = FP32_STEP) -> tuple[Path, dict[str, ExportedGraph], float]:
    """Export a D-AR checkpoint to the package folder ``out`` (built aside, renamed into place)."""
    from dartrt.runtime.manifest import write_manifest

    from .package import _producer, export_decoder_graphs

    ckpt.check()
    out = Path(out)
    source = Path(ckpt.source) if Path(ckpt.source).is_dir() else None
    start = time.perf_counter()
    model = ckpt.model.float().eval()
    tokenizer = ckpt.tokenizer.float().eval()
    with staging_folder(out, force, source) as tmp:
        graphs = export_decoder_graphs(model, tmp, opset, check, external_data, tolerance)
        graphs.update(export_tokenizer_graphs(tokenizer, tmp, opset, check, tolerance))
        for name, g in graphs.items():
            log(f"  {name}: exported in {g.seconds:.1f}s, onnxruntime vs torch max-abs {g.max_abs_err:.2e}")
        cfg = model.cfg
        manifest = {
            "family": D_AR_FAMILY,
            "model": cfg.to_dict(), "vq": None, "image_size": tokenizer.cfg.image_size,
            "opset": opset, "precision": "fp32",
            "kv_cache": {"layers": cfg.n_layer, "heads": cfg.n_head, "head_dim": cfg.head_dim,
                         "max_len": cfg.seq_len, "dtype": "float32",
                         "update": "in place: bind present.{i}.* to the buffer of past_key_values.{i}.*"},
            "adaln_modulation": None,
            "d_ar": d_ar_manifest_entry(tokenizer.cfg),
            "graphs": {name: {"file": g.path.name, "inputs": g.inputs, "outputs": g.outputs}
                       for name, g in graphs.items()},
            "export_check": {name: {"max_abs_err": g.max_abs_err, "worst_bound": g.worst.bound,
                                    "worst_ratio": g.worst.ratio, "checked": check,
                                    "tolerance": g.tolerance.to_dict()} for name, g in graphs.items()},
            "source": ckpt.source,
            "producer": _producer(),
            "engines": {},
        }
        write_manifest(tmp, manifest)
    return out, graphs, time.perf_counter() - start
