"""Pass 4: which nodes the target TensorRT's ONNX parser will take, before a GPU ever sees the graph.

The op table is data, versioned by TensorRT release (`data/trt_ops_<major.minor>.json`, transcribed
from onnx/onnx-tensorrt `docs/operators.md` at the commit it names). This module adds the checks the
table states in words and that decide dartrt's graph contract: ONNX `Attention` without past/present
or `nonpad_kv_seqlen`, 4-D Q/K/V and mask, no softcap or `softmax_precision`; `TensorScatter` 4-D
with axis -2 in linear mode, on a cache that is a graph input with a static T_max and an update that
is a graph output (that is what TensorRT's in-place `IKVCacheUpdateLayer` demands); `RotaryEmbedding`
with INT64 position ids; and no `If`/`Loop`/`Scan` inside a step graph (the parser takes them, but a
static, CUDA-graph-captured decode step cannot have them).

Each node gets one row: supported, restricted (the parser takes it under a condition this static
check could not prove, e.g. an unknown rank), or unsupported (with the reason).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from dartrt.runtime.contract import is_cache
from dartrt.runtime.errors import DartrtError

from .check import infer

DATA_DIR = Path(__file__).with_name("data")
DEFAULT_TRT = "11.0"
SUPPORTED, RESTRICTED, UNSUPPORTED = "supported", "restricted", "unsupported"
_RANK = {SUPPORTED: 0, RESTRICTED: 1, UNSUPPORTED: 2}
TYPE_NAMES = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
              TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.INT8: "INT8",
              TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL", TensorProto.DOUBLE: "DOUBLE",
              TensorProto.FLOAT8E4M3FN: "FP8", TensorProto.INT4: "INT4", TensorProto.FLOAT4E2M1: "FP4"}
# Which input carries the op's data type T (default 0); None: the table's types do not apply to inputs.
TYPE_INPUT = {"Where": 1, "Shape": None, "Size": None, "Constant": None, "ConstantOfShape": None}
CONTROL_FLOW = ("If", "Loop", "Scan")
CONSTANT_AXES = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
                 "ReduceProd", "ReduceSum", "ReduceSumSquare", "Squeeze", "Unsqueeze"}


@dataclass(frozen=True)
class SupportRow:
    """One node's verdict for the target TensorRT parser."""

    node: str
    op_type: str
    status: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=4)
def load_op_table(version: str = DEFAULT_TRT) -> dict:
    """The versioned op-support table (ops, opset range and the source it was read from)."""
    path = DATA_DIR / f"trt_ops_{version}.json"
    if not path.is_file():
        have = sorted(p.stem.removeprefix("trt_ops_") for p in DATA_DIR.glob("trt_ops_*.json"))
        raise DartrtError(f"no TensorRT op table for {version} (have: {', '.join(have) or 'none'})")
    return json.loads(path.read_text(encoding="utf-8"))


class _Facts:
    """Types, ranks and constant-ness of every value of an inferred graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
        self.types = {v.name: v.type.tensor_type.elem_type for v in values}
        self.shapes = {v.name: tuple(d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                                     for d in v.type.tensor_type.shape.dim)
                       for v in values if v.type.tensor_type.HasField("shape")}
        self.initializers = {t.name: t for t in model.graph.initializer}
        for t in model.graph.initializer:
            self.types.setdefault(t.name, t.data_type)
            self.shapes.setdefault(t.name, tuple(t.dims))
        self.constants = set(self.initializers) | {o for n in model.graph.node if n.op_type == "Constant"
                                                   for o in n.output}
        self.graph_inputs = {v.name for v in model.graph.input} - set(self.initializers)
        self.graph_outputs = {v.name for v in model.graph.output}

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def type_name(self, name: str) -> str | None:
        t = self.types.get(name)
        return TYPE_NAMES.get(t, f"type {t}") if t else None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _given(node: onnx.NodeProto, index: int) -> bool:
    return len(node.input) > index and bool(node.input[index])


# ---- op-specific rules: each returns a list of (status, reason) findings ------------------------------
def _attention(node, facts: _Facts) -> list[tuple[str, str]]:
    out = []
    for i, what in ((4, "past_key"), (5, "past_value"), (6, "nonpad_kv_seqlen")):
        if _given(node, i):
            out.append((UNSUPPORTED, f"{what} input is not supported (use TensorScatter + a static cache)"))
    extra = [o for o in node.output[1:] if o]
    if extra:
        out.append((UNSUPPORTED, f"only output Y is supported, not present_key/present_value/qk_matmul_output "
                                 f"({', '.join(extra)})"))
    if float(_attr(node, "softcap", 0.0) or 0.0) != 0.0:
        out.append((UNSUPPORTED, "softcap is not supported"))
    if _attr(node, "softmax_precision") is not None:
        out.append((UNSUPPORTED, "the softmax_precision attribute is rejected by the parser's static checker"))
    for i, what in ((0, "Q"), (1, "K"), (2, "V"), (3, "attn_mask")):
        if not _given(node, i):
            continue
        rank = facts.rank(node.input[i])
        if rank is None:
            out.append((RESTRICTED, f"{what} must be 4-D; its rank is unknown here"))
        elif rank != 4:
            out.append((UNSUPPORTED if i < 3 else RESTRICTED, f"{what} is {rank}-D; operators.md requires 4-D"))
    return out


def _tensor_scatter(node, facts: _Facts) -> list[tuple[str, str]]:
    out = []
    cache, update = node.input[0], node.input[1]
    for name, what in ((cache, "past_cache"), (update, "update")):
        rank = facts.rank(name)
        if rank is None:
            out.append((RESTRICTED, f"{what} must be 4-D; its rank is unknown here"))
        elif rank != 4:
            out.append((UNSUPPORTED, f"{what} is {rank}-D; must be 4-D"))
    axis = int(_attr(node, "axis", -2))
    rank = facts.rank(cache) or 4
    if axis not in (-2, rank - 2):
        out.append((UNSUPPORTED, f"axis is {axis}; must be -2"))
    mode = _attr(node, "mode", b"linear")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "linear":
        out.append((UNSUPPORTED, f"mode {mode!r}: only linear is supported"))
    if cache not in facts.graph_inputs:
        out.append((UNSUPPORTED, f"the cache {cache} is not a graph input (IKVCacheUpdateLayer needs the cache as "
                                 "a network input, updated in place)"))
    else:
        shape = facts.shapes.get(cache, ())
        if len(shape) >= 2 and not isinstance(shape[-2], int):
            out.append((UNSUPPORTED, f"the cache {cache} has a dynamic sequence dim {shape[-2]!r}; must be static"))
    if node.output[0] not in facts.graph_outputs:
        out.append((UNSUPPORTED, f"the updated cache {node.output[0]} is not a graph output (it must be, bound to "
                                 "the cache's device address)"))
    return out


def _rotary(node, facts: _Facts) -> list[tuple[str, str]]:
    if _given(node, 3) and facts.types.get(node.input[3]) not in (None, TensorProto.INT64):
        return [(UNSUPPORTED, f"position_ids is {facts.type_name(node.input[3])}; must be INT64")]
    return []


def _quantize(node, facts: _Facts) -> list[tuple[str, str]]:
    if not _given(node, 2):
        return []
    zp = facts.initializers.get(node.input[2])
    if zp is None:
        return [(RESTRICTED, "zero point must be 0; it is not an initializer here")]
    if np.any(numpy_helper.to_array(zp).astype(np.float64) != 0):
        return [(UNSUPPORTED, "zero point must be 0")]
    return []


def _resize(node, facts: _Facts) -> list[tuple[str, str]]:
    out = []
    mode = (_attr(node, "mode", b"nearest") or b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = _attr(node, "coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    if mode not in ("nearest", "linear"):
        out.append((UNSUPPORTED, f"resize mode {mode!r} is not supported"))
    if ctm not in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"):
        out.append((UNSUPPORTED, f"coordinate_transformation_mode {ctm!r} is not supported"))
    if int(_attr(node, "antialias", 0) or 0):
        out.append((UNSUPPORTED, "antialiasing is not supported"))
    return out


def _single_output(node, facts: _Facts) -> list[tuple[str, str]]:
    extra = [o for o in node.output[1:] if o]
    return [(UNSUPPORTED, f"only the first output is supported ({', '.join(extra)} requested)")] if extra else []


def _constant(node, facts: _Facts) -> list[tuple[str, str]]:
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return [(UNSUPPORTED, f"attribute {bad[0]} is not supported")] if bad else []


def _cast(node, facts: _Facts) -> list[tuple[str, str]]:
    to = _attr(node, "to")
    name = TYPE_NAMES.get(to, f"type {to}")
    ok = ("FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL", "FP8", "FP4", "INT4", "INT8")
    return [] if name in ok else [(UNSUPPORTED, f"cast to {name} is not supported")]


RULES = {"Attention": _attention, "TensorScatter": _tensor_scatter, "RotaryEmbedding": _rotary,
         "QuantizeLinear": _quantize, "DequantizeLinear": _quantize, "Resize": _resize, "Cast": _cast,
         "LayerNormalization": _single_output, "MaxPool": _single_output, "BatchNormalization": _single_output,
         "Constant": _constant}


def _generic(node, facts: _Facts, entry: dict) -> list[tuple[str, str]]:
    out = []
    index = TYPE_INPUT.get(node.op_type, 0)
    types = entry.get("types")
    if index is not None and types and _given(node, index):
        name = facts.type_name(node.input[index])
        if name == "DOUBLE":
            out.append((RESTRICTED, "DOUBLE input: TensorRT casts it down to FP32"))
        elif name is not None and name not in types:
            out.append((UNSUPPORTED, f"input type {name} is not supported (supported: {', '.join(types)})"))
    if node.op_type in CONSTANT_AXES and _given(node, 1) and node.input[1] not in facts.constants:
        out.append((RESTRICTED, "axes must be a build-time constant; here they are computed"))
    return out


def classify(node: onnx.NodeProto, facts: _Facts, table: dict, step_graph: bool) -> SupportRow:
    """The verdict for one node of an inferred graph."""
    name = node.name or f"<{node.op_type} → {node.output[0] if node.output else ''}>"
    if node.domain not in ("", "ai.onnx"):
        return SupportRow(name, node.op_type, UNSUPPORTED,
                          f"custom domain {node.domain!r}: the parser would need a plugin for it")
    entry = table["ops"].get(node.op_type)
    if entry is None or not entry.get("supported"):
        why = entry.get("restrictions") if entry else None
        return SupportRow(name, node.op_type, UNSUPPORTED,
                          why or f"{node.op_type} is not supported by the TensorRT {table['tensorrt_major_minor']} "
                                 "ONNX parser")
    findings = _generic(node, facts, entry)
    if node.op_type in RULES:
        findings += RULES[node.op_type](node, facts)
    if node.op_type in CONTROL_FLOW:
        status = UNSUPPORTED if step_graph else RESTRICTED
        what = ("control flow in a step graph: a static, CUDA-graph-captured decode step cannot branch or loop"
                if step_graph else entry.get("restrictions", "control flow"))
        findings.append((status, what))
    if not findings:
        return SupportRow(name, node.op_type, SUPPORTED, _verified(node.op_type))
    worst = max(findings, key=lambda f: _RANK[f[0]])[0]
    reasons = "; ".join(r for s, r in findings if s == worst)
    return SupportRow(name, node.op_type, worst, reasons)


def _verified(op_type: str) -> str:
    return {"Attention": "4-D Q/K/V and mask, no past/present, no softcap or softmax_precision",
            "TensorScatter": "4-D, axis -2, linear; cache is a graph input with static T_max and its update a "
                             "graph output (in-place IKVCacheUpdateLayer)",
            "RotaryEmbedding": "no position_ids or INT64 position_ids"}.get(op_type, "")


def _is_step_graph(model: onnx.ModelProto) -> bool:
    return any(is_cache(i.name) for i in model.graph.input)


def report_model(model: onnx.ModelProto, *, trt: str = DEFAULT_TRT, step_graph: bool | None = None,
                 name: str = "graph") -> list[SupportRow]:
    """Rows for every node of an in-memory model (inferred here), plus a `(model)` row for the opset."""
    table = load_op_table(trt)
    inferred = infer(model, name)
    facts = _Facts(inferred)
    step = _is_step_graph(inferred) if step_graph is None else step_graph
    rows = []
    lo, hi = table["opset_range"]
    opset = next((o.version for o in inferred.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and not lo <= opset <= hi:
        rows.append(SupportRow("(model)", "opset", UNSUPPORTED,
                               f"ai.onnx opset {opset} is outside the parser's {lo}..{hi}"))
    rows += [classify(node, facts, table, step) for node in inferred.graph.node]
    return rows


def report(model_path: str | Path, *, trt: str = DEFAULT_TRT, step_graph: bool | None = None) -> list[SupportRow]:
    """Op-support rows (node, op_type, status, reason) of the ONNX file at ``model_path`` for the
    TensorRT parser ``trt``; a graph with past_key_values inputs is judged as a step graph."""
    path = Path(model_path)
    return report_model(onnx.load(str(path), load_external_data=False), trt=trt, step_graph=step_graph,
                        name=path.name)


def summarize(rows: list[SupportRow]) -> dict:
    """Counts per status and the unsupported/restricted rows (for the manifest and the CLI)."""
    counts = Counter(r.status for r in rows)
    return {SUPPORTED: counts[SUPPORTED], RESTRICTED: counts[RESTRICTED], UNSUPPORTED: counts[UNSUPPORTED],
            "issues": [r.to_dict() for r in rows if r.status != SUPPORTED]}
