"""Pass 3: FP16 via ModelOpt AutoCast, with FP32 islands where FP16 is known to break decoders.

TensorRT 11 is strongly typed: an "FP16 engine" is an FP16-typed ONNX, so precision is decided here.
AutoCast (`modelopt.onnx.autocast.convert_to_mixed_precision`) casts the graph and keeps in FP32 any
node whose observed values exceed `data_max` / `init_max` on the calibration feeds (real decode steps
from `feeds.decode_trace`, never random noise). On top of that we pin, by structure:

- RMSNorm: the decomposed Pow → ReduceMean → Add(eps) → Sqrt → Reciprocal → Mul(x, ·) chain (or Div),
  and `RMSNormalization` / `LayerNormalization` nodes: a sum of squares overflows FP16 early;
- RoPE: every `RotaryEmbedding` node and the cos/sin table path that feeds it (an FP16 table row
  loses ~3 decimal digits of angle);
- logits: the final MatMul (and its bias/reshape tail) and the `logits` output: CFG computes
  u + s·(c − u) on them and the sampler's top-k/top-p tail needs the resolution.

Attention: the KV cache I/O becomes **fp16** by default (`kv_cache_fp16=True`). Decode is memory-bound
and the cache is read in full every step, so halving its bytes is the point; and TensorRT's in-place
`IKVCacheUpdateLayer` needs the cache input to be exactly the tensor `TensorScatter` updates and the
present output exactly its result, so a Cast at either boundary would break the aliasing (and copy
the whole cache every step). With fp16 caches the `Attention` op runs on fp16 Q/K/V. Its scores and
softmax cannot be pinned to FP32 in the ONNX for TensorRT: the parser's static checker rejects the
`softmax_precision` attribute (onnx/onnx-tensorrt onnxOpCheckers.cpp, `checkAttention`), so that
accumulation is the fused kernel's business. `attention_fp32=True` keeps the Attention op itself in
FP32 instead, at the price of casting both caches of every layer to FP32 on every step (measured on
the tiny model in tests; use it to bisect an accuracy problem, not in production).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from dartrt.runtime.contract import LOGITS, PAST, PRESENT
from dartrt.runtime.errors import DartrtError

from .check import ONNX_DTYPES, check_graph, load_inferred
from .feeds import Feed
from .onnxfile import save_model

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
NORM_OPS = ("RMSNormalization", "LayerNormalization")
SHAPE_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Slice", "Gather", "Add"}
KV_PREFIXES = (f"{PAST}.", f"{PRESENT}.")


@dataclass(frozen=True)
class Fp16Policy:
    """What stays FP32 and how the I/O is typed (recorded in the manifest next to the graph)."""

    kv_cache_fp16: bool = True
    attention_fp32: bool = False
    data_max: float = 512.0
    init_max: float = 65504.0
    extra_op_types: tuple[str, ...] = ()
    extra_nodes: tuple[str, ...] = ()  # regexes, as AutoCast takes them

    @property
    def op_types(self) -> list[str]:
        return ["RotaryEmbedding", *NORM_OPS, "Softmax", *(["Attention"] if self.attention_fp32 else []),
                *self.extra_op_types]


@dataclass
class Fp16Result:
    """The pinned FP32 islands (by reason) and the resulting I/O dtypes."""

    policy: Fp16Policy
    pinned: dict[str, list[str]] = field(default_factory=dict)
    io_dtypes: dict[str, str] = field(default_factory=dict)
    fp16_nodes: int = 0
    fp32_nodes: int = 0

    def to_dict(self) -> dict:
        return {"tool": "modelopt.onnx.autocast", "low_precision_type": "fp16", "keep_io_types": True,
                "kv_cache_dtype": "float16" if self.policy.kv_cache_fp16 else "float32",
                "attention": "fp32 (Attention op excluded)" if self.policy.attention_fp32
                else "fp16 Q/K/V; softmax accumulation left to the engine's fused kernel",
                "op_types_to_exclude": self.policy.op_types, "data_max": self.policy.data_max,
                "init_max": self.policy.init_max, "pinned_fp32": {k: len(v) for k, v in self.pinned.items()},
                "compute_nodes": {"fp16": self.fp16_nodes, "fp32": self.fp32_nodes}, "io_dtypes": self.io_dtypes}


# ---- finding the FP32 islands ---------------------------------------------------------------------------
class _Graph:
    """Producer/consumer maps of a graph (names → nodes)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.producer = {o: n for n in model.graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in model.graph.node:
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.initializers = {i.name for i in model.graph.initializer}
        self.inputs = {i.name for i in model.graph.input}

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def rmsnorm_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of every decomposed RMSNorm (and native norm ops) in the graph."""
    g = _Graph(model)
    found: list[str] = [n.name for n in model.graph.node if n.op_type in NORM_OPS]
    for pow_node in (n for n in model.graph.node if n.op_type == "Pow"):
        x = pow_node.input[0]
        chain = [pow_node]
        for op in ("ReduceMean", "Add", "Sqrt"):
            nxt = g.only_consumer(chain[-1].output[0], op)
            if nxt is None:
                break
            chain.append(nxt)
        else:
            users = g.consumers.get(chain[-1].output[0], [])
            tail = []
            for user in users:
                if user.op_type == "Reciprocal":
                    muls = [m for m in g.consumers.get(user.output[0], []) if m.op_type == "Mul" and x in m.input]
                    tail += [user, *muls] if muls else []
                elif user.op_type == "Div" and user.input[0] == x:
                    tail.append(user)
            if tail:
                found += [n.name for n in chain + tail]
    return found


def rope_table_nodes(model: onnx.ModelProto) -> list[str]:
    """`RotaryEmbedding` nodes and every node on the path from their cos/sin inputs back to the
    tables (initializers) or graph inputs."""
    g = _Graph(model)
    found: list[str] = []
    seen: set[str] = set()
    for node in (n for n in model.graph.node if n.op_type == "RotaryEmbedding"):
        found.append(node.name)
        stack = [name for name in node.input[1:3] if name]
        while stack:
            name = stack.pop()
            producer = g.producer.get(name)
            if producer is None or producer.name in seen:
                continue
            seen.add(producer.name)
            found.append(producer.name)
            stack += [i for i in producer.input if i and i not in g.initializers and i not in g.inputs]
    return found


def logits_head_nodes(model: onnx.ModelProto, output: str = LOGITS) -> list[str]:
    """The final MatMul/Gemm that produces ``output`` and the shape/bias tail after it."""
    g = _Graph(model)
    if output not in {o.name for o in model.graph.output}:
        return []
    found: list[str] = []
    name = output
    while (node := g.producer.get(name)) is not None:
        found.append(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            return found
        if node.op_type not in SHAPE_OPS:
            return []  # not a plain head: let AutoCast decide, and say so through the pinned count
        data = [i for i in node.input if i and i not in g.initializers]
        if not data:
            return []
        name = data[0]
    return []


# ---- typing the KV cache I/O ----------------------------------------------------------------------------
def _rename_uses(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _set_io_type(values, name: str, elem_type: int) -> None:
    for v in values:
        if v.name == name:
            v.type.tensor_type.elem_type = elem_type


def retype_input(model: onnx.ModelProto, name: str, elem_type: int = FLOAT16) -> None:
    """Make graph input ``name`` an fp16 tensor: drop the Cast-to-fp16 that AutoCast put after it,
    and give any consumer that still wants fp32 one explicit Cast."""
    g = _Graph(model)
    to_fp32: list[onnx.NodeProto] = []
    for user in g.consumers.get(name, []):
        to = next((a.i for a in user.attribute if a.name == "to"), None) if user.op_type == "Cast" else None
        if to == elem_type:
            _rename_uses(model, user.output[0], name)
            _replace_graph_output(model, user.output[0], name)
            model.graph.node.remove(user)
        else:
            to_fp32.append(user)
    if to_fp32:
        cast_out = f"{name}_as_fp32"
        model.graph.node.insert(0, helper.make_node("Cast", [name], [cast_out], name=f"{name}_to_fp32", to=FLOAT))
        for user in to_fp32:
            for i, inp in enumerate(user.input):
                if inp == name:
                    user.input[i] = cast_out
    _set_io_type(model.graph.input, name, elem_type)


def _replace_graph_output(model: onnx.ModelProto, old: str, new: str) -> None:
    for v in model.graph.output:
        if v.name == old:
            v.name = new


def retype_output(model: onnx.ModelProto, name: str, elem_type: int = FLOAT16) -> None:
    """Make graph output ``name`` an fp16 tensor produced directly by the node that computes it."""
    g = _Graph(model)
    producer = g.producer.get(name)
    if producer is None:
        raise DartrtError(f"graph output {name} has no producer")
    source = producer.input[0] if producer.op_type == "Cast" else None
    readers = list(g.consumers.get(name, []))
    if readers:  # nodes that read the fp32 output inside the graph (Attention kept in FP32) keep an fp32 view
        view = f"{name}_as_fp32"
        for user in readers:
            for i, inp in enumerate(user.input):
                if inp == name:
                    user.input[i] = view
        model.graph.node.append(helper.make_node("Cast", [name], [view], name=f"{name}_view_fp32", to=FLOAT))
    if source is not None and source not in g.inputs and source not in g.initializers:
        model.graph.node.remove(producer)
        upstream = g.producer.get(source)
        if upstream is not None:
            upstream.output[list(upstream.output).index(source)] = name
        _rename_uses(model, source, name)
    else:
        inner = f"{name}_fp32"
        producer.output[list(producer.output).index(name)] = inner
        _rename_uses(model, name, inner)
        model.graph.node.append(helper.make_node("Cast", [inner], [name], name=f"{name}_to_fp16", to=elem_type))
    _set_io_type(model.graph.output, name, elem_type)


def _topological(model: onnx.ModelProto) -> None:
    """Re-sort nodes after the rewrites (ONNX requires producers before consumers)."""
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise DartrtError("FP16 rewrite left a cycle or a dangling input in the graph")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if n not in ready]
    del model.graph.node[:]
    model.graph.node.extend(ordered)


# ---- the pass -----------------------------------------------------------------------------------------
def _pinned(model: onnx.ModelProto) -> dict[str, list[str]]:
    return {"rmsnorm": rmsnorm_nodes(model), "rope": rope_table_nodes(model), "logits": logits_head_nodes(model)}


def _count_precisions(inferred: onnx.ModelProto) -> tuple[int, int]:
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    fp16 = fp32 = 0
    for node in inferred.graph.node:
        if node.op_type == "Cast":
            continue
        outs = [types.get(o) for o in node.output]
        fp16 += FLOAT16 in outs
        fp32 += FLOAT in outs
    return fp16, fp32


def convert_fp16(src: str | Path, dst: str | Path, feeds: list[Feed], policy: Fp16Policy = Fp16Policy()) -> Fp16Result:
    """Write the FP16 version of ``src`` to ``dst`` (AutoCast + pinned FP32 islands + KV I/O typing)."""
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as exc:
        raise DartrtError(f"FP16 conversion needs nvidia-modelopt ({exc}); pip install 'dartrt[quant]'") from None
    src, dst = Path(src), Path(dst)
    source = onnx.load(str(src), load_external_data=False)
    pinned = _pinned(source)
    nodes = [f"^{re.escape(n)}$" for names in pinned.values() for n in names] + list(policy.extra_nodes)
    with tempfile.TemporaryDirectory(prefix="dartrt-autocast-") as calib:
        for i, feed in enumerate(feeds):
            np.savez(Path(calib) / f"{i:04d}.npz", **feed)
        quiet = [logging.getLogger(n) for n in ("modelopt", "modelopt.onnx", "modelopt.onnx.autocast", "root")]
        levels = [lg.level for lg in quiet]
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        try:
            model = convert_to_mixed_precision(
                str(src), low_precision_type="fp16", nodes_to_exclude=nodes, op_types_to_exclude=policy.op_types,
                data_max=policy.data_max, init_max=policy.init_max, keep_io_types=True,
                calibration_data=calib if feeds else None, providers=["cpu"])
        except Exception as exc:  # AutoCast surfaces ORT/ONNX errors as they come
            raise DartrtError(f"{src.name}: ModelOpt AutoCast failed: {str(exc).splitlines()[0]}") from None
        finally:
            for lg, level in zip(quiet, levels):
                lg.setLevel(level)
    # AutoCast's own value_info carried wrong symbolic dims on the tiny decoder (ORT refused to run it);
    # drop it and let ONNX infer shapes afresh from the I/O.
    del model.graph.value_info[:]
    if policy.kv_cache_fp16:
        for value in list(model.graph.input):
            if value.name.startswith(KV_PREFIXES[0]):
                retype_input(model, value.name)
        for value in list(model.graph.output):
            if value.name.startswith(KV_PREFIXES[1]):
                retype_output(model, value.name)
        _topological(model)
    save_model(model, dst)
    try:  # path-based: a multi-GB decoder cannot go through protobuf in memory
        check_graph(dst)
    except DartrtError as exc:
        dst.unlink(missing_ok=True)
        raise DartrtError(f"{src.name}: the FP16 graph is invalid: {exc}") from None
    model = load_inferred(dst)
    fp16, fp32 = _count_precisions(model)
    io = {v.name: ONNX_DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))
          for v in list(model.graph.input) + list(model.graph.output)}
    return Fp16Result(policy, pinned, io, fp16, fp32)
