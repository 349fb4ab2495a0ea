"""`dartrt export`: a checkpoint → a package folder (prefill, decode and VQ graphs + manifest).

The package is built in a temporary sibling folder and renamed into place only when every graph has
passed its checks, so a failed export never leaves half a package behind.
"""

from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import dartrt
from dartrt.dar.checkpoint import Checkpoint
from dartrt.graphs.onnxfile import EXTERNAL_DATA_BYTES
from dartrt.runtime.contract import (
    BATCH_DIM,
    DECODE,
    DIRECTION,
    IMAGE,
    INPUT_IDS,
    OPSET,
    POSITIONS,
    PREFILL,
    SEQ_DIM,
    STEP_INPUTS,
    TOKEN_GRID,
    VQ_DECODER,
    WRITE_INDEX,
    StepTables,
    graph_io,
)
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.metrics import FP32_IMAGE, FP32_STEP, Tolerance

from .candidates import check_adaptive_export, export_editing_graphs
from .graphs import DecodeGraph, PrefillGraph, VQDecoderGraph
from .onnx_export import ExportedGraph, export_graph
from .target import staging_folder


@dataclass
class ExportReport:
    package: Path
    graphs: dict[str, ExportedGraph]
    seconds: float


def _producer() -> dict:
    import onnx
    import onnxscript

    versions = {"dartrt": dartrt.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                "onnxscript": onnxscript.__version__, "python": platform.python_version()}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return versions


def _step_args(model, rows: int, seq: int, write: int, seed: int, prefill: bool) -> tuple:
    """Valid, non-trivial graph inputs: real positions/directions of the model's order, random caches."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    pos, dirs = (torch.from_numpy(np.array(a)) for a in StepTables.native(cfg).at(write, rows, seq))
    shape = (rows, cfg.n_head, cfg.seq_len, cfg.head_dim)
    past = [torch.randn(shape, generator=g) * 0.5 for _ in range(2 * cfg.n_layer)]
    write_index = torch.full((rows,), write, dtype=torch.long)
    classes = torch.randint(0, cfg.num_classes + 1, (rows,), generator=g)
    if prefill:
        return (classes[:, None], pos, dirs, write_index, *past)
    ids = torch.randint(0, cfg.vocab_size, (rows, seq), generator=g)
    extra = ()
    if cfg.adaln:
        with torch.no_grad():
            extra = (model.modulation_table(classes),)
    return (ids, pos, dirs, write_index, *extra, *past)


def _weight_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def export_decoder_graphs(model, folder: Path, opset: int = OPSET, check: bool = True,
                          external_data: bool | None = None, tolerance: Tolerance = FP32_STEP
                          ) -> dict[str, ExportedGraph]:
    """prefill.onnx and decode.onnx, with batch (and decode's S) dynamic and T_max static.

    torch.export specialises dims that are 0 or 1 in the example inputs, so the examples use
    batch 4 and S 3 (prefill's prefix length of 1 is meant to be static)."""
    cfg = model.cfg
    batch = torch.export.Dim(BATCH_DIM, min=1, max=1024)
    seq = torch.export.Dim(SEQ_DIM, min=1, max=cfg.seq_len)
    external = _weight_bytes(model) > EXTERNAL_DATA_BYTES if external_data is None else external_data
    out: dict[str, ExportedGraph] = {}

    def dims(graph: str, step: dict) -> tuple:
        """dynamic_shapes for forward(*STEP_INPUTS, *rest): the four step inputs' dims from ``step``, then
        one tuple for the varargs (the AdaLN table and every cache: batch-dynamic, T_max static)."""
        rest = graph_io(graph, cfg.n_layer, cfg.adaln).inputs[len(STEP_INPUTS):]
        return tuple(step[n] for n in STEP_INPUTS) + (tuple({0: batch} for _ in rest),)

    io = graph_io(PREFILL, cfg.n_layer, cfg.adaln)
    checks = [_step_args(model, r, 1, 0, seed, prefill=True) for seed, r in enumerate((2, 1, 5))] if check else []
    out[PREFILL] = export_graph(
        PrefillGraph(model), _step_args(model, 4, 1, 0, 0, prefill=True), folder / "prefill.onnx",
        list(io.inputs), list(io.outputs),
        dims(PREFILL, {INPUT_IDS: {0: batch}, POSITIONS: {0: batch}, DIRECTION: {0: batch}, WRITE_INDEX: {0: batch}}),
        opset, external, checks, tolerance)

    io = graph_io(DECODE, cfg.n_layer, cfg.adaln)
    checks = [_step_args(model, r, s, w, 10 + i, prefill=False)
              for i, (r, s, w) in enumerate(((2, 1, 1), (1, 1, cfg.seq_len - 1), (3, 4, 7)))] if check else []
    out[DECODE] = export_graph(
        DecodeGraph(model), _step_args(model, 4, 3, 5, 1, prefill=False), folder / "decode.onnx",
        list(io.inputs), list(io.outputs),
        dims(DECODE, {INPUT_IDS: {0: batch, 1: seq}, POSITIONS: {0: batch, 1: seq}, DIRECTION: {0: batch, 1: seq},
                      WRITE_INDEX: {0: batch}}),
        opset, external, checks, tolerance)
    return out


def export_package(ckpt: Checkpoint, out: str | Path, *, force: bool = False, opset: int = OPSET,
                   check: bool = True, log=print, external_data: bool | None = None,
                   tolerance: Tolerance = FP32_STEP, image_tolerance: Tolerance = FP32_IMAGE,
                   adaptive: bool | None = None) -> ExportReport:
    """Export ``ckpt`` to the package folder ``out``: built aside and renamed into place, under a lock;
    ``force`` replaces an existing dartrt package and nothing else (`dartrt.exporter.target`).

    ``external_data``: None decides by size (weights over 1 GiB go to ``<graph>.onnx.data``). ``tolerance``
    judges the step graphs against eager torch, ``image_tolerance`` the VQ decoder (`runtime.metrics`);
    both are recorded in the manifest's ``export_check``. ``adaptive``: also export the adaptive-order
    graphs (candidates, commit; `exporter.candidates`); None = when the model was trained for any order.
    A VQ encoder in the checkpoint is exported as ``vq_encoder`` (editing from images)."""
    from dartrt.runtime.manifest import write_manifest

    if getattr(ckpt, "family", None) == "d-ar":  # D-AR: the AR graphs plus the tokenizer's (exporter.d_ar)
        from .d_ar import export_d_ar_package

        if adaptive:
            raise DartrtError("a D-AR model (1D RoPE) cannot choose its order: no adaptive-order graphs")

        return ExportReport(*export_d_ar_package(ckpt, out, force=force, opset=opset, check=check, log=log,
                                                 external_data=external_data, tolerance=tolerance))
    check_adaptive_export(ckpt.config, adaptive)
    out = Path(out)
    source = Path(ckpt.source) if Path(ckpt.source).is_dir() else None
    start = time.perf_counter()
    model = ckpt.model.float().eval()
    with staging_folder(out, force, source) as tmp:
        external = _weight_bytes(model) > EXTERNAL_DATA_BYTES if external_data is None else external_data
        graphs = export_decoder_graphs(model, tmp, opset, check, external, tolerance)
        for name, g in graphs.items():
            log(f"  {name}: exported in {g.seconds:.1f}s, onnxruntime vs torch max-abs {g.max_abs_err:.2e}")
        graphs[VQ_DECODER] = export_vq(ckpt, tmp, opset, check, image_tolerance)
        log(f"  vq_decoder: exported in {graphs[VQ_DECODER].seconds:.1f}s, "
            f"max-abs {graphs[VQ_DECODER].max_abs_err:.2e}")
        graphs.update(export_editing_graphs(ckpt, model, tmp, opset, check, external, tolerance, adaptive, log))
        cfg = model.cfg
        manifest = {
            "model": cfg.to_dict(), "vq": ckpt.vq.config.to_dict(), "image_size": ckpt.image_size,
            "opset": opset, "precision": "fp32",
            "kv_cache": {"layers": cfg.n_layer, "heads": cfg.n_head, "head_dim": cfg.head_dim,
                         "max_len": cfg.seq_len, "dtype": "float32",
                         "update": "in place: bind present.{i}.* to the buffer of past_key_values.{i}.*"},
            "adaln_modulation": {"width": model.modulation_width} if cfg.adaln else None,
            "graphs": {name: {"file": g.path.name, "inputs": g.inputs, "outputs": g.outputs}
                       for name, g in graphs.items()},
            "export_check": {name: {"max_abs_err": g.max_abs_err, "worst_bound": g.worst.bound,
                                    "worst_ratio": g.worst.ratio, "checked": check, "tolerance": g.tolerance.to_dict()}
                             for name, g in graphs.items()},
            "source": ckpt.source,
            "producer": _producer(),
            "engines": {},
        }
        write_manifest(tmp, manifest)
    return ExportReport(out, graphs, time.perf_counter() - start)


def export_vq(ckpt: Checkpoint, folder: Path, opset: int, check: bool = True,
              tolerance: Tolerance = FP32_IMAGE) -> ExportedGraph:
    vq = copy.deepcopy(ckpt.vq).float().eval().prenormalize_()
    g = ckpt.config.grid_size
    batch = torch.export.Dim("batch", min=1, max=1024)
    gen = torch.Generator().manual_seed(0)
    n_codes = vq.quantize.embedding.weight.shape[0]
    example = torch.randint(0, n_codes, (2, g, g), generator=gen)
    checks = [(torch.randint(0, n_codes, (b, g, g), generator=gen),) for b in (1, 3)] if check else []
    # Image outputs are ~[-1, 1] after ~20 conv layers; fp32 reassociation gives ~1e-5 differences.
    return export_graph(VQDecoderGraph(vq), (example,), folder / "vq_decoder.onnx", [TOKEN_GRID], [IMAGE],
                        ({0: batch},), opset, _weight_bytes(vq) > EXTERNAL_DATA_BYTES, checks, tolerance)

