"""Pass 2: onnxslim simplification, kept only if the outputs still match on real step inputs.

onnxslim folds constants and removes dead or redundant nodes; the dynamo exporter leaves a few (shape
arithmetic, duplicated Concat/Unsqueeze chains). A simplifier that mis-folds an opset-24 op (it has
to reason about `TensorScatter`, `RotaryEmbedding`, `Attention`) would silently corrupt the decoder,
so the result is run in onnxruntime against the input graph and thrown away, with the reason recorded,
when any output moves by more than `atol` or the graph's I/O changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.metrics import FP32_STEP, Tolerance

from .check import check_graph
from .compare import compare_graphs
from .feeds import Feed
from .onnxfile import save_model


@dataclass
class SimplifyResult:
    """Whether the simplified graph was kept, and why not when it was not."""

    kept: bool
    reason: str
    nodes_before: int
    nodes_after: int
    max_abs_err: float | None = None

    def to_dict(self) -> dict:
        return {"tool": "onnxslim", "kept": self.kept, "reason": self.reason, "nodes_before": self.nodes_before,
                "nodes_after": self.nodes_after, "max_abs_err": self.max_abs_err}


def _io_signature(model: onnx.ModelProto) -> list[tuple]:
    def sig(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)) for v in values]

    init = {i.name for i in model.graph.initializer}
    return sig(v for v in model.graph.input if v.name not in init) + sig(model.graph.output)


def simplify_graph(src: str | Path, dst: str | Path, feeds: list[Feed], tolerance: Tolerance = FP32_STEP
                   ) -> SimplifyResult:
    """Write the simplified ``src`` to ``dst`` if it checks out on ``feeds``; otherwise copy ``src``."""
    src, dst = Path(src), Path(dst)
    original = onnx.load(str(src))
    before = len(original.graph.node)

    def keep_original(reason: str, after: int = before, err: float | None = None) -> SimplifyResult:
        if src.resolve() != dst.resolve():
            save_model(original, dst)  # rewritten, not copied: external data must follow the new name
        return SimplifyResult(False, reason, before, after, err)

    try:
        import onnxslim
    except ImportError:
        return keep_original("onnxslim is not installed (pip install 'dartrt[quant]')")
    try:
        slim = onnxslim.slim(onnx.load(str(src)))
    except Exception as exc:  # onnxslim raises whatever its passes raise
        return keep_original(f"onnxslim failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if slim is None:
        return keep_original("onnxslim returned no model")
    after = len(slim.graph.node)
    if _io_signature(slim) != _io_signature(original):
        before_io, after_io = _io_signature(original), _io_signature(slim)
        lost = [sig[0] for sig in before_io if sig not in after_io]
        gained = [sig[0] for sig in after_io if sig not in before_io]
        what = ", ".join([f"dropped or changed {n}" for n in lost] + [f"added {n}" for n in gained if n not in lost])
        return keep_original(f"onnxslim changed the graph I/O the runtime binds ({what})", after)
    tmp = dst.with_name(f".{dst.name}.slim-candidate.onnx")
    try:
        save_model(slim, tmp)
        try:  # path-based, so external data works
            check_graph(tmp)
        except DartrtError as exc:
            return keep_original(f"the simplified graph fails the checker: {exc}", after)
        drift = compare_graphs(src, tmp, feeds, tolerance)
        if not drift.within:
            return keep_original(f"outputs moved by {drift.worst:.3g}, beyond {tolerance.describe()}, on "
                                 f"{drift.feeds} step inputs", after, drift.worst)
        save_model(slim, dst)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + ".data")):
            leftover.unlink(missing_ok=True)
    return SimplifyResult(True, f"{before} → {after} nodes, outputs within {tolerance.describe()} on {drift.feeds} "
                          "step inputs",
                          before, after, drift.worst)
