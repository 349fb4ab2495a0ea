"""One graph out of PyTorch: dynamo export at a pinned opset, then checked before anyone trusts it.

The dynamo exporter silently writes invalid files at opset 17 and at 26 and above, so the opset is
pinned (`dartrt.graphs.onnxfile`) and every file is verified: `onnx.checker` (full check, path-based so
external data works), shape inference, and a real onnxruntime run against the eager module.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from dartrt.graphs.check import value_specs
from dartrt.graphs.onnxfile import INLINE_BYTES, check_opset
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write
from dartrt.runtime.metrics import Deviation, Tolerance


@dataclass
class ExportedGraph:
    path: Path
    inputs: list[dict]
    outputs: list[dict]
    seconds: float
    max_abs_err: float  # the largest difference over every output and check input
    worst: Deviation  # the output that came closest to its bound (of ``tolerance``)
    tolerance: Tolerance


def export_graph(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str],
                 output_names: list[str], dynamic_shapes, opset: int, external_data: bool,
                 check_args: list[tuple], tolerance: Tolerance) -> ExportedGraph:
    """Export ``module`` to ``path`` and verify it on every tuple of ``check_args``."""
    check_opset(opset)
    start = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_shapes=dynamic_shapes, opset_version=opset, dynamo=True,
                          external_data=external_data, verbose=False)
    seconds = time.perf_counter() - start
    if external_data:
        inline_small_tensors(path)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    if proto.opset_import[0].version != opset and not any(o.version == opset for o in proto.opset_import):
        raise DartrtError(f"{path.name}: exporter wrote opset {[o.version for o in proto.opset_import]}, not {opset}")
    err, worst = check_with_onnxruntime(module, path, input_names, check_args, tolerance)
    return ExportedGraph(path, value_specs(proto.graph.input), value_specs(proto.graph.output), seconds, err, worst,
                         tolerance)


def inline_small_tensors(path: Path, threshold: int = INLINE_BYTES) -> None:
    """Move tiny initializers (split sizes, shapes) from the external data file back into the proto.

    The dynamo exporter externalises every initializer. Shape inference, and so ``onnx.checker``'s full
    check and every consumer that folds shapes, cannot read external data, so the small integer tensors
    that shapes depend on must live in the model itself (onnx's own converter uses the same 1 KiB rule).
    """
    proto = onnx.load(str(path), load_external_data=False)
    changed = False
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        length = int(info.get("length", 0))
        if length > threshold:
            continue
        with open(path.parent / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            tensor.raw_data = f.read(length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        changed = True
    if changed:
        atomic_write(path, lambda tmp: onnx.save(proto, tmp))


def check_with_onnxruntime(module: torch.nn.Module, path: Path, input_names: list[str],
                           check_args: list[tuple], tolerance: Tolerance) -> tuple[float, Deviation]:
    """Run the file in onnxruntime (CPU) on each args tuple; every output must match eager under
    ``tolerance``. Returns (the largest difference, the deviation closest to its bound)."""
    from dartrt.runtime.sessions import CHECK, open_session

    gc.collect()
    session = open_session(path, CHECK)
    largest, worst = 0.0, Deviation(0.0, tolerance.atol)
    for args in check_args:
        feed = {name: a.detach().cpu().numpy() for name, a in zip(input_names, args)}
        got = session.run(None, feed)
        with torch.no_grad():
            want = module(*[a.clone() for a in args])
        want = want if isinstance(want, (tuple, list)) else (want,)
        for out_info, g, w in zip(session.get_outputs(), got, want):
            w = w.detach().float().cpu().numpy()
            if g.shape != w.shape:
                raise DartrtError(f"{path.name}: output {out_info.name} has shape {g.shape}, expected {w.shape}")
            dev = tolerance.judge(w, g)
            largest = max(largest, dev.max_abs)
            worst = max(worst, dev, key=lambda d: d.ratio)
            if not dev.ok:
                raise DartrtError(f"{path.name}: onnxruntime output {out_info.name} differs from torch by "
                                  f"{dev.max_abs:.3g} (> {dev.bound:.3g} = {tolerance.describe()}; --atol/--rtol "
                                  "set the rule)")
    return largest, worst
