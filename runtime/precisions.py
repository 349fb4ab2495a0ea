"""The precisions a package can run, and the graph files each one means.

A package holds its exported FP32 graphs and, once later steps ran, other forms of the decoder graphs:

- ``fp16``: `graphs.prepare` (what `dartrt build --precision fp16` runs first) records
  ``prepared["prefill.fp16"]`` and ``prepared["decode.fp16"]``;
- INT8 calibration variants: `dartrt calibrate` records ``calibration.variants[NAME].graphs[GRAPH].file``
  (``int8``, ``int8-fp16``, ``int8-ort``, ``int8-dynamic``, ``int8-wo``).

Every form keeps the runtime's I/O contract (same names; FP16 graphs keep their KV cache in fp16, which
the onnxruntime backend reads off the decode graph), so running one is only a matter of opening other
files: a precision resolves to per-graph file overrides. Those files must be listed in the manifest's
hashed ``files``, so they are verified exactly like the exports. The VQ decoder always stays the
exported FP32 graph (it runs once per image, off the per-step path).

TensorRT is different: it runs built engines, chosen by engine precision (``engines["decode.fp16"]``
...); `engine_precision` maps a requested name onto one. Nothing here imports onnxruntime or TensorRT.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from .contract import DECODER_GRAPHS
from .errors import DartrtError
from .manifest import Manifest

FP32 = "fp32"
FP16 = "fp16"
ENGINE_PRECISIONS = ("fp16", "int8", "fp8", "int4-awq", "fp32")
# How each calibration variant is made (calibration.quantize.QuantizeConfig.variant, reversed).
CALIBRATE_FLAGS = {"int8": "--format qdq", "int8-fp16": "--format qdq --high-precision fp16",
                   "int8-ort": "--format qdq-ort", "int8-dynamic": "--format dynamic",
                   "int8-wo": "--format weight-only", "fp8": "--format fp8",
                   "fp8-fp16": "--format fp8 --high-precision fp16", "int4-awq": "--format int4-awq"}


@dataclass(frozen=True)
class Precision:
    """One runnable precision: ``graph_files`` maps graph → package-relative file (empty for fp32,
    which runs the exported graphs); ``source`` says which manifest section it came from."""

    name: str
    source: str  # "export" | "prepared" | "calibration"
    graph_files: dict[str, str] = field(default_factory=dict)
    detail: str = ""


def _fp16(data: dict) -> Precision | None:
    """FP16 needs both decoder graphs: prefill writes the cache decode reads, so their dtypes must agree."""
    prepared = data.get("prepared") or {}
    entries = [prepared.get(f"{g}.{FP16}") for g in DECODER_GRAPHS]
    if not all(isinstance(e, dict) and e.get("file") for e in entries):
        return None
    seq = ((entries[1].get("fp16") or {}).get("sequence_check") or {}).get("tokens_identical")
    detail = "prepared FP16 prefill/decode" + (f"; greedy tokens identical to fp32: {seq}" if seq is not None else "")
    return Precision(FP16, "prepared", {g: e["file"] for g, e in zip(DECODER_GRAPHS, entries)}, detail)


def list_precisions(data: dict) -> dict[str, Precision]:
    """Every precision the manifest dict ``data`` records, fp32 first, then fp16, then the calibration
    variants in the order they were recorded. A variant named like a built-in (fp32/fp16) is shadowed."""
    out = {FP32: Precision(FP32, "export", {}, "the exported graphs")}
    if (fp16 := _fp16(data)) is not None:
        out[FP16] = fp16
    variants = (data.get("calibration") or {}).get("variants") or {}
    for name, variant in variants.items():
        if name in out or not isinstance(variant, dict):
            continue
        graphs = variant.get("graphs") or {}
        files = {g: e["file"] for g, e in graphs.items() if isinstance(e, dict) and e.get("file")}
        if files:
            rest = variant.get("high_precision_dtype", "fp32")
            out[name] = Precision(name, "calibration", files, f"calibration variant ({variant.get('format', '?')}, "
                                                             f"{rest} outside the INT8 GEMMs)")
    return out


def how_to_make(name: str, pkg: str | Path | None = None) -> str:
    """The command that creates precision ``name`` in a package."""
    where = str(pkg) if pkg is not None else "PKG"
    if name == FP16:
        return (f"make it with `dartrt calibrate {where} --format fp16`, `dartrt build {where} --precision fp16` "
                f"(needs TensorRT) or graphs.prepare.prepare({where!r}, 'fp16')")
    if name in CALIBRATE_FLAGS:
        return f"make it with `dartrt calibrate {where} {CALIBRATE_FLAGS[name]}`"
    return "fp16 comes from `dartrt build --precision fp16`, INT8 variants from `dartrt calibrate`"


def resolve_precision(data: dict, name: str | None, pkg: str | Path | None = None) -> Precision:
    """The precision ``name`` (None: fp32) of the manifest dict ``data``, its files checked to be graphs
    the package has and files its manifest hashes. One-line DartrtError naming what exists otherwise."""
    name = FP32 if name is None else str(name)
    known = list_precisions(data)
    where = str(pkg) if pkg is not None else "the package"
    if name not in known:
        raise DartrtError(f"{where} has no precision {name!r} (it has: {', '.join(known)}); {how_to_make(name, pkg)}")
    chosen = known[name]
    graphs, files = data.get("graphs") or {}, data.get("files") or {}
    for graph, file in chosen.graph_files.items():
        if graph not in graphs:
            raise DartrtError(f"precision {name!r} replaces a {graph!r} graph that {where} does not have")
        if file not in files:
            raise DartrtError(f"precision {name!r}: {file} is not among {where}'s hashed files; "
                              f"re-run the step that made it ({how_to_make(name, pkg).removeprefix('make it with ')})")
    return chosen


def precision_manifest(manifest: Manifest, precision: Precision) -> Manifest:
    """A copy of ``manifest`` whose graphs are ``precision``'s files, for tools that read graph files off
    the manifest (verify's graph rows, Polygraphy). I/O specs come from the prepared entry when it
    recorded them (FP16: fp16 cache I/O); calibration variants keep the exported I/O contract."""
    data = copy.deepcopy(manifest.data)
    prepared = data.get("prepared") or {}
    for graph, file in precision.graph_files.items():
        entry = {**data["graphs"][graph], "file": file}
        if precision.source == "prepared":
            recorded = prepared.get(f"{graph}.{precision.name}") or {}
            entry.update({k: recorded[k] for k in ("inputs", "outputs") if k in recorded})
        data["graphs"][graph] = entry
    return Manifest(manifest.root, data)


def engine_precision(data: dict, name: str | None, pkg: str | Path | None = None) -> str | None:
    """The TensorRT engine precision for a requested ``name``: None lets the backend pick (the first of
    ENGINE_PRECISIONS it has); fp16/int8/fp32 pass through; a calibration variant means the int8 engine when
    that engine was built from the variant's decode graph (the manifest's ``engines`` records its ONNX)."""
    if name is None or name in ENGINE_PRECISIONS:
        return name
    engines = data.get("engines") or {}
    variant = list_precisions(data).get(name)
    built = (engines.get("decode.int8") or {}).get("onnx")
    if variant is not None and variant.source == "calibration" and built == variant.graph_files.get("decode"):
        return "int8"
    origin = f"; the int8 engine was built from {built}" if built else ""
    where = str(pkg) if pkg is not None else "the package"
    raise DartrtError(f"tensorrt runs engines by precision ({', '.join(ENGINE_PRECISIONS)}; {where} has "
                      f"{', '.join(sorted(engines)) or 'none'}), and {name!r} is not one{origin}; "
                      f"build one with `dartrt build {pkg if pkg is not None else 'PKG'} --precision int8`")
