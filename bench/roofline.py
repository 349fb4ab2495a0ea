"""The bandwidth floor of a step: bytes it must read / memory bandwidth.

At batch sizes a generator runs at, a decode step is a handful of matrix-vector products: every
weight is read once and used for only a few rows, so time is bounded below by bytes / bandwidth, not
by FLOPs (docs/design.md, "The performance model"). The bytes are counted from
what the exported graph holds, not from a formula of the config, so fp16 and int8 packages are
priced by what they really store:

- weights: every floating (or 8-bit quantized) initializer, once per node that consumes it. Per use,
  because the exporter deduplicates equal tensors (the zero biases and unit norms of a fresh model are
  stored once yet read by several nodes). Integer initializers are shape/index constants and scalars
  are immediates: neither is a weight.
- lookups: an initializer that is the data of a Gather/GatherND (token embedding, RoPE tables) costs
  only the rows it gathers, i.e. the gather's output, resolved for the batch; the whole table if the
  graph does not say how many rows.
- modulation: an AdaLN decode step does not read W_mod (prefill folds it into the per-image table);
  it gathers one [M] row per row and position from ``adaln_modulation``.
- KV: 2 (K, V) × layers × heads × head_dim × itemsize × current length × rows: the keys a step
  needs. The graph's Attention runs over all T_max slots under a mask, so it actually reads the full
  cache; ``full_cache_kv`` reports that too, because it explains part of the gap to the floor.

Writes (the new K/V slot, the logits) are not counted: the floor is a read bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import onnx

from dartrt.runtime.contract import MODULATION, cache_names
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest

_TP = onnx.TensorProto
# Element sizes of the dtypes a weight can be stored in (int4 packs two per byte).
WEIGHT_ITEMSIZE: dict[int, float] = {_TP.FLOAT: 4, _TP.FLOAT16: 2, _TP.BFLOAT16: 2, _TP.DOUBLE: 8,
                                     _TP.INT8: 1, _TP.UINT8: 1}
for _name in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"):
    if hasattr(_TP, _name):
        WEIGHT_ITEMSIZE[getattr(_TP, _name)] = 1
for _name in ("INT4", "UINT4"):
    if hasattr(_TP, _name):
        WEIGHT_ITEMSIZE[getattr(_TP, _name)] = 0.5
DTYPE_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1}
GATHERS = ("Gather", "GatherND")


@dataclass(frozen=True)
class Lookup:
    """A gather from an initializer table: its output shape (symbolic dims by name) prices it."""

    table: str
    out_shape: tuple[int | str, ...]
    itemsize: float
    table_bytes: int

    def bytes(self, dims: dict[str, int]) -> int:
        numel = 1
        for d in self.out_shape:
            if isinstance(d, str):
                if d not in dims:
                    return self.table_bytes
                d = dims[d]
            numel *= int(d)
        return min(math.ceil(numel * self.itemsize), self.table_bytes)

    def scaled(self, factor: float) -> "Lookup":
        return replace(self, itemsize=self.itemsize * factor, table_bytes=math.ceil(self.table_bytes * factor))


@dataclass(frozen=True)
class GraphReads:
    """What one call of a graph reads from its initializers."""

    weight_bytes: int
    lookups: tuple[Lookup, ...]

    def lookup_bytes(self, rows: int, seq: int = 1) -> int:
        dims = {"batch": rows, "seq": seq}
        return sum(lk.bytes(dims) for lk in self.lookups)

    def scaled(self, factor: float) -> "GraphReads":
        """The same reads with every element ``factor`` times as large (an fp32 graph cast to 16 bits: 0.5)."""
        return GraphReads(math.ceil(self.weight_bytes * factor), tuple(lk.scaled(factor) for lk in self.lookups))


def _tensor_bytes(init: onnx.TensorProto) -> tuple[int, float] | None:
    """(numel, itemsize) of a weight initializer, or None for index constants and scalars."""
    itemsize = WEIGHT_ITEMSIZE.get(init.data_type)
    numel = math.prod(init.dims)
    if itemsize is None or numel <= 1:
        return None
    return numel, itemsize


def graph_reads(path: str | Path) -> GraphReads:
    """Count a graph's weight and lookup reads from its protobuf (external data is not loaded)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... depending on the damage
        raise DartrtError(f"cannot read {path}: {exc}") from None
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    shapes: dict[str, tuple[int | str, ...]] = {}
    for v in (*graph.value_info, *graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in dims)
    weight = 0
    lookups: list[Lookup] = []
    for node in graph.node:
        for slot, name in enumerate(node.input):
            init = inits.get(name)
            sized = _tensor_bytes(init) if init is not None else None
            if sized is None:
                continue
            numel, itemsize = sized
            full = math.ceil(numel * itemsize)
            if node.op_type in GATHERS and slot == 0:
                lookups.append(Lookup(name, shapes.get(node.output[0], ("?",)), itemsize, full))
            else:
                weight += full
    return GraphReads(weight, tuple(lookups))


@dataclass(frozen=True)
class StepBytes:
    """Bytes one graph call reads, by kind."""

    weights: int
    lookups: int
    modulation: int
    kv: int

    @property
    def total(self) -> int:
        return self.weights + self.lookups + self.modulation + self.kv

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class Roofline:
    """The byte model of one package: prefill and decode reads, the cache geometry, the AdaLN width."""

    prefill: GraphReads
    decode: GraphReads
    n_layer: int
    heads: int
    head_dim: int
    max_len: int
    seq_len: int
    kv_itemsize: int
    mod_width: int
    mod_itemsize: int

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "Roofline":
        kv = manifest.kv_cache
        model = manifest.data["model"]
        try:
            n_layer = int(kv.get("layers", model["n_layer"]))
            heads = int(kv.get("heads", model["n_head"]))
            head_dim = int(kv.get("head_dim", model.get("head_dim") or model["d_model"] // model["n_head"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DartrtError(f"{manifest.root}: manifest lacks the cache geometry ({exc!r})") from None
        decode = manifest.graph("decode")
        inputs = {io["name"]: io for io in decode.inputs}
        # The cache dtype is the decode graph's (a prepared FP16 graph keeps an fp16 cache), else the package's.
        kv_dtype = str((inputs.get(cache_names(1)[0]) or {}).get("dtype") or kv.get("dtype", "float32"))
        if kv_dtype not in DTYPE_ITEMSIZE:
            raise DartrtError(f"{manifest.root}: unknown kv_cache dtype {kv_dtype!r}")
        mod = inputs.get(MODULATION)
        mod_width = int(manifest.adaln_width or (mod["shape"][-1] if mod else 0))
        mod_itemsize = DTYPE_ITEMSIZE.get(str(mod.get("dtype", "float32")), 4) if mod else 0
        return cls(graph_reads(manifest.graph("prefill").path), graph_reads(decode.path), n_layer, heads,
                   head_dim, int(kv.get("max_len", manifest.info.seq_len)), manifest.info.seq_len,
                   DTYPE_ITEMSIZE[kv_dtype], mod_width if mod else 0, mod_itemsize)

    def at_itemsize(self, itemsize: int) -> "Roofline":
        """This fp32 package's byte model for a copy of the model cast to ``itemsize`` bytes per element
        (the torch reference in bf16/fp16 on a GPU): weights, lookups, AdaLN rows and cache all scale."""
        if self.kv_itemsize != 4:
            raise DartrtError("only an fp32 package's byte model can be re-priced at another dtype")
        f = itemsize / 4
        return replace(self, prefill=self.prefill.scaled(f), decode=self.decode.scaled(f), kv_itemsize=itemsize,
                       mod_itemsize=itemsize if self.mod_itemsize else 0)

    def kv_bytes(self, rows: int, length: int) -> int:
        """K and V of every layer for ``length`` cache slots of ``rows`` rows."""
        return 2 * self.n_layer * self.heads * self.head_dim * self.kv_itemsize * int(length) * int(rows)

    def decode_step(self, rows: int, length: int, seq: int = 1) -> StepBytes:
        """One decode call of ``seq`` tokens whose last one sees ``length`` keys (write index + seq)."""
        mod = int(rows) * int(seq) * self.mod_width * self.mod_itemsize
        return StepBytes(self.decode.weight_bytes, self.decode.lookup_bytes(rows, seq), mod,
                         self.kv_bytes(rows, length))

    def prefill_step(self, rows: int) -> StepBytes:
        """The class-token call: all prefill weights (W_mod included), one cache slot."""
        return StepBytes(self.prefill.weight_bytes, self.prefill.lookup_bytes(rows, 1), 0, self.kv_bytes(rows, 1))

    def full_cache_kv(self, rows: int) -> int:
        """What the graph's masked Attention over all T_max slots really reads per step."""
        return self.kv_bytes(rows, self.max_len)

    def image_bytes(self, rows: int) -> int:
        """One image batch as the scheduler runs it: prefill, then decode at write index t = 1..N-1
        (the step at t sees t + 1 keys)."""
        return self.prefill_step(rows).total + sum(self.decode_step(rows, t + 1).total
                                                   for t in range(1, self.seq_len))


def floor_seconds(nbytes: float, bytes_per_s: float) -> float:
    """bytes / bandwidth; inf when the bandwidth is unknown (0)."""
    return float(nbytes) / bytes_per_s if bytes_per_s > 0 else float("inf")
