"""Which ONNX nodes of an exported decoder graph are which module: the basis of every exclusion.

The dynamo exporter names nodes ``node_linear_12`` and the like, but it stores the module path of each
node in ``metadata_props['pkg.torch.onnx.name_scopes']`` (``[..., 'model.layers.0.attention.wqkv',
'linear_2']``). Exclusions are therefore chosen by *module* (the logits head is ``model.output``,
whatever the node is called) and handed to the quantizers as exact node-name regexes. Graphs without
that metadata fall back to structure: the head is the GEMM that produces ``logits``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

import numpy as np
import onnx

from dartrt.runtime.contract import LOGITS

GEMM_OPS = ("MatMul", "Gemm")
# Ops whose numerics the recipe keeps in high precision: RoPE, the attention core (QK^T, softmax, PV
# inside ONNX Attention), the norms if a later pass fuses them, and the elementwise math around them.
SENSITIVE_OP_TYPES = ("RotaryEmbedding", "Attention", "Softmax", "RMSNormalization", "LayerNormalization",
                      "SimplifiedLayerNormalization", "ReduceMean", "Pow", "Sqrt", "Reciprocal", "Sigmoid")
HEAD_SCOPE = "model.output"
# AdaLN: the modulation table is computed once per image (prefill) and steers every later step; an
# error there is a bias on all 256 steps, and as a once-per-image GEMM INT8 buys nothing.
MODULATION_SCOPES = ("adaLN_modulation", "final_modulation")


@dataclass(frozen=True)
class GemmNode:
    name: str
    op_type: str
    scope: str  # module path, e.g. "model.layers.3.feed_forward.w2" ("" if unknown)
    weight: str | None  # initializer name of the weight operand
    weight_elems: int

    @property
    def group(self) -> str:
        """Layer group used by the sensitivity sweep: ``layers.3``, ``tok_mlp``, ``output``, ``other``."""
        m = re.match(r"model\.(layers\.\d+)", self.scope)
        if m:
            return m.group(1)
        parts = self.scope.split(".")
        return parts[1] if len(parts) > 1 and parts[0] == "model" else "other"

    @property
    def kind(self) -> str:
        """Sublayer kind across layers: ``wqkv``, ``wo``, ``w1``, ``w2``, ``w3``, or the group."""
        m = re.match(r"model\.layers\.\d+\.(?:attention|feed_forward)\.(\w+)", self.scope)
        return m.group(1) if m else self.group


def node_scope(node: onnx.NodeProto) -> str:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            modules = [s for s in scopes[:-1] if s]
            return modules[-1] if modules else ""
    return ""


def gemm_nodes(model: onnx.ModelProto) -> list[GemmNode]:
    """Every MatMul/Gemm with a constant (initializer) weight: the GEMMs INT8 applies to."""
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    out = []
    for node in model.graph.node:
        if node.op_type not in GEMM_OPS:
            continue
        weight = next((i for i in node.input[1:2] if i in inits or i in consts), None)
        elems = 0
        if weight in inits:
            elems = 1
            for d in inits[weight].dims:
                elems *= int(d)
        out.append(GemmNode(node.name, node.op_type, node_scope(node), weight, elems))
    return out


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """The logits head: by module scope, else the GEMM whose output is the graph output ``logits``."""
    gemms = gemm_nodes(model)
    named = [g.name for g in gemms if g.scope == HEAD_SCOPE]
    if named:
        return named
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(LOGITS)
    # Walk back through casts/reshapes to the GEMM (an fp16 graph ends in Cast).
    while node is not None and node.op_type not in GEMM_OPS and node.input:
        node = producers.get(node.input[0])
    return [node.name] if node is not None and node.op_type in GEMM_OPS else []


def modulation_nodes(model: onnx.ModelProto) -> list[str]:
    return [g.name for g in gemm_nodes(model) if any(s in g.scope for s in MODULATION_SCOPES)]


def present_op_types(model: onnx.ModelProto, candidates=SENSITIVE_OP_TYPES) -> list[str]:
    types = {n.op_type for n in model.graph.node}
    return [t for t in candidates if t in types]


def exact(names) -> list[str]:
    """Node names as anchored regexes (ModelOpt treats ``nodes_to_exclude`` as regexes)."""
    return [f"^{re.escape(n)}$" for n in names]


def scope_matches(model: onnx.ModelProto, patterns) -> list[str]:
    """GEMM node names whose module scope (or node name) matches any of ``patterns`` (regexes)."""
    regs = [re.compile(p) for p in patterns]
    return [g.name for g in gemm_nodes(model) if any(r.search(g.scope) or r.search(g.name) for r in regs)]


INT8_GEMM_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "MatMulNBits")


def int8_gemms(model: onnx.ModelProto) -> list[str]:
    """The GEMMs that really run with INT8 weights in a quantized graph: Q/DQ MatMuls whose weight comes
    out of a DequantizeLinear, and onnxruntime's integer/n-bit MatMul ops. Quantizers apply their own
    filters on top of ours (ModelOpt skips GEMMs with a tiny inner dim), so this is read off the result."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in model.graph.node:
        if node.op_type in INT8_GEMM_OPS:
            out.append(node.name)
        elif node.op_type in GEMM_OPS and len(node.input) > 1:
            src = producers.get(node.input[1])
            if src is not None and src.op_type == "DequantizeLinear":
                out.append(node.name)
    return out


LOW_PRECISION_FLOATS = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def low_precision_gemms(model: onnx.ModelProto) -> list[str]:
    """`int8_gemms` plus the GEMMs whose weight initializer is itself fp16/bf16 (an AutoCast graph):
    every GEMM that reads fewer weight bytes than fp32, whatever the format. Despite its name
    `int8_gemms` already covers any Q/DQ'd weight (INT8, FP8, INT4), since it looks at the DQ only."""
    inits = {i.name: i.data_type for i in model.graph.initializer}
    out = set(int8_gemms(model))
    for node in model.graph.node:
        if node.op_type in GEMM_OPS and len(node.input) > 1 and inits.get(node.input[1]) in LOW_PRECISION_FLOATS:
            out.add(node.name)
    return [n.name for n in model.graph.node if n.name in out]


def _dtype_name(elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower()


def quant_layout(model: onnx.ModelProto) -> dict:
    """What the quantized GEMMs of a graph really hold, read off the graph (not off the recipe):
    weight dtypes and scale granularity (``per-tensor``, ``per-channel``, ``block-<n>``) of the DQs
    feeding GEMM weights, the same for the activation Q/DQs in front of GEMMs, MatMulNBits bits, and
    fp16/bf16 weight initializers (scale ``none``).
    The manifest records it so that "FP8, per-tensor activations" is a checked fact, not a label."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def granularity(node: onnx.NodeProto) -> str:
        block = next((a.i for a in node.attribute if a.name == "block_size"), 0)
        scale = inits.get(node.input[1])
        if block:
            return f"block-{block}"
        if scale is None or not list(scale.dims) or int(np.prod(scale.dims)) == 1:
            return "per-tensor"
        return "per-channel"

    def count(table: dict, key: str) -> None:
        table[key] = table.get(key, 0) + 1

    weights: dict[str, dict[str, int]] = {"dtype": {}, "scale": {}}
    acts: dict[str, dict[str, int]] = {"dtype": {}, "scale": {}}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            block = next((a.i for a in node.attribute if a.name == "block_size"), 0)
            count(weights["dtype"], f"int{bits} (MatMulNBits)")
            count(weights["scale"], f"block-{block}")
            continue
        if node.op_type not in GEMM_OPS:
            continue
        direct = inits.get(node.input[1]) if len(node.input) > 1 else None
        if direct is not None and direct.data_type in LOW_PRECISION_FLOATS:  # an AutoCast graph: no scales
            count(weights["dtype"], _dtype_name(direct.data_type))
            count(weights["scale"], "none")
        for slot, table in ((1, weights), (0, acts)):
            dq = producers.get(node.input[slot]) if len(node.input) > slot else None
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            data = inits.get(dq.input[0])
            if data is not None:
                dtype = data.data_type
            else:  # an activation: the dtype is the zero point's (or the Q's output_dtype)
                zp = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
                dtype = zp.data_type if zp is not None else onnx.TensorProto.UINT8
            count(table["dtype"], _dtype_name(dtype))
            count(table["scale"], granularity(dq))
    return {"weights": weights, "activations": acts}
