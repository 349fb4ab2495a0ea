"""Pass 1: the ONNX checker and shape inference, on a path.

Path-based on purpose: `onnx.checker.check_model(path)` resolves external data next to the file, so
a >2 GiB decoder is checked without being pulled through protobuf in memory. Shape inference runs in
strict mode, because the later passes (the FP16 rewrite, the TensorRT op-support report) read the
inferred element types and ranks and must not work from a half-typed graph.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from dartrt.runtime.errors import DartrtError


@dataclass(frozen=True)
class CheckResult:
    """What the checker saw: opsets, IR version and the op histogram (for the manifest and logs)."""

    path: Path
    ir_version: int
    opsets: dict[str, int]
    nodes: int
    op_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"ir_version": self.ir_version, "opsets": self.opsets, "nodes": self.nodes,
                "op_counts": dict(sorted(self.op_counts.items()))}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_graph(path: str | Path) -> CheckResult:
    """Full ONNX check plus strict shape inference of the file at ``path``; DartrtError on failure."""
    path = Path(path)
    if not path.is_file():
        raise DartrtError(f"graph file not found: {path}")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise DartrtError(f"{path.name} fails the ONNX checker: {_first_line(exc)}") from None
    model = onnx.load(str(path), load_external_data=False)
    infer(model, path.name)
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return CheckResult(path, int(model.ir_version), {o.domain or "ai.onnx": int(o.version) for o in model.opset_import},
                       len(model.graph.node), dict(counts))


def infer(model: onnx.ModelProto, name: str = "graph") -> onnx.ModelProto:
    """Strict shape/type inference on an in-memory model (external weights need not be loaded:
    inference reads the initializers' dtype and dims, never their bytes)."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise DartrtError(f"{name}: ONNX shape inference fails: {_first_line(exc)}") from None


ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64",
               onnx.TensorProto.INT32: "int32", onnx.TensorProto.BOOL: "bool", onnx.TensorProto.INT8: "int8",
               onnx.TensorProto.UINT8: "uint8"}


def io_specs(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as [{'name', 'dtype', 'shape'}], the manifest's format (symbolic dims by name)."""
    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}

    return value_specs(v for v in model.graph.input if v.name not in init), value_specs(model.graph.output)


def value_specs(values) -> list[dict]:
    """ONNX value infos → [{'name', 'dtype', 'shape'}], symbolic dims by name."""
    out = []
    for v in values:
        tt = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim]
        out.append({"name": v.name, "dtype": ONNX_DTYPES.get(tt.elem_type, str(tt.elem_type)), "shape": shape})
    return out


def load_inferred(path: str | Path) -> onnx.ModelProto:
    """The graph at ``path`` (weights left on disk) with every value's inferred type and shape."""
    return infer(onnx.load(str(path), load_external_data=False), Path(path).name)
