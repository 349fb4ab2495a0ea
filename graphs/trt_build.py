"""`dartrt build`: a prepared graph → a strongly typed TensorRT engine, recorded in the manifest.

TensorRT 11 has no FP16/INT8 builder flags: the precision is whatever the ONNX says (an FP16-cast
graph from `graphs.prepare`, or a Q/DQ graph from calibration/), and the network is parsed strongly
typed. The build goes through Polygraphy's loaders (`NetworkFromOnnxPath(strongly_typed=True)`,
`CreateConfig(profiles=..., load_timing_cache=...)`, `EngineBytesFromNetwork(save_timing_cache=...)`),
which handle the parser errors, the timing-cache file lock and append, and the TRT 10/11 differences.

Optimisation profiles come from the manifest, one per engine:
- rows (the `batch` dim) 1 … 2·max_batch for the decoder graphs (CFG doubles the batch), opt at the
  full CFG batch, the shape the runtime's CUDA graph replays; 1 … max_batch for the VQ decoder;
- decode `seq` 1 … `max_step_tokens` (opt 1): one token per step, a few for any-order / chunked work;
  prefill writes its one class token (static);
- the KV cache's T_max is static (required by the in-place KV-cache layer).

The engine file is written atomically (temp + rename) to `engines/<graph>.<precision>.plan`, and the
manifest's `engines["<graph>.<precision>"]` records the GPU, its compute capability, the TensorRT
version, the profile shapes, the build flags and the sha256 of the ONNX it came from, so that a runtime
elsewhere refuses it by name (`runtime.trt_backend.check_engine_compatible`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from dartrt.runtime.contract import PAST
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write_bytes, sha256_file
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.precisions import CALIBRATE_FLAGS, ENGINE_PRECISIONS

from .prepare import ALL_GRAPHS, DECODER_GRAPHS, prepare, prepared_key

INSTALL_HINT = "pip install dartrt[tensorrt]"
MIN_TRT = (10, 15)  # RotaryEmbedding / TensorScatter / opset-24 parsing
DEFAULT_MAX_BATCH = 8
DEFAULT_STEP_TOKENS = 4
ENGINE_DIR = "engines"
BUILD_PRECISIONS = ENGINE_PRECISIONS  # what the runtime picks engines by, so every build is runnable
# Quantized engines are built from the Q/DQ graphs `dartrt calibrate` wrote (TRT 11 is strongly typed:
# the precision is in the graph). First choice: the variant with FP16 outside the quantized GEMMs, what
# TensorRT runs fastest; the fp32-elsewhere variant (made for onnxruntime's CPU EP too) is the fallback.
# fp8 and int4-awq are for Hopper-class GPUs and unverified here (no TensorRT, no GPU).
CALIBRATED_VARIANTS: dict[str, tuple[str, ...]] = {
    "int8": ("int8-fp16", "int8"), "fp8": ("fp8-fp16", "fp8"), "int4-awq": ("int4-awq",)}

Shape = tuple[int, ...]


def require_tensorrt():
    """The `tensorrt` module, or a one-line DartrtError saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise DartrtError(f"TensorRT is not installed ({INSTALL_HINT})") from None
    version = tuple(int(p) for p in trt.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_TRT:
        raise DartrtError(f"TensorRT {trt.__version__} is too old: the step graphs need >= "
                          f"{'.'.join(map(str, MIN_TRT))} (RotaryEmbedding, TensorScatter, opset 24)")
    return trt


@dataclass(frozen=True)
class ProfileShape:
    """min/opt/max of one input of one optimisation profile."""

    name: str
    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def derive_profile(inputs: list[dict], graph: str, max_batch: int,
                   max_step_tokens: int = DEFAULT_STEP_TOKENS) -> list[ProfileShape]:
    """One profile for ``graph`` from its manifest input specs ([{'name','dtype','shape'}])."""
    if max_batch < 1:
        raise DartrtError(f"--max-batch must be >= 1, got {max_batch}")
    if max_step_tokens < 1:
        raise DartrtError(f"max step tokens must be >= 1, got {max_step_tokens}")
    rows = 2 * max_batch if graph in DECODER_GRAPHS else max_batch
    ranges = {"batch": (1, rows, rows), "seq": (1, 1, max_step_tokens)}
    out = []
    for spec in inputs:
        dims = []
        for dim in spec["shape"]:
            if isinstance(dim, int):
                dims.append((dim, dim, dim))
            elif dim in ranges:
                dims.append(ranges[dim])
            else:
                raise DartrtError(f"{graph} input {spec['name']} has a dynamic dim {dim!r} that dartrt cannot size; "
                                  "re-export the package")
        lo, opt, hi = (tuple(d[i] for d in dims) for i in range(3))
        out.append(ProfileShape(spec["name"], lo, opt, hi))
    return out


@dataclass
class EngineReport:
    key: str
    path: Path
    entry: dict
    seconds: float = 0.0
    manifest: Manifest | None = None  # the package's manifest with this engine recorded


@dataclass
class BuildReport:
    package: Path
    engines: dict[str, EngineReport] = field(default_factory=dict)


def default_variant(data: dict, precision: str, log=print) -> str:
    """The calibration variant a ``precision`` (int8, fp8, int4-awq) engine is built from when none is
    named: the FP16-elsewhere one if the manifest dict ``data`` records it, else the fp32-elsewhere one
    with a note saying how to get the FP16 one."""
    candidates = CALIBRATED_VARIANTS[precision]
    variants = (data.get("calibration") or {}).get("variants") or {}
    if candidates[0] in variants or len(candidates) == 1:
        return candidates[0]
    log(f"note: no calibration variant {candidates[0]!r} ({precision} GEMMs, FP16 elsewhere); building from "
        f"{candidates[1]!r}, FP32 outside the {precision} GEMMs (`dartrt calibrate PKG "
        f"{CALIBRATE_FLAGS[candidates[0]]}` makes {candidates[0]})")
    return candidates[1]


def _calibrated_entry(manifest: Manifest, graph: str, variant: str) -> dict:
    """The Q/DQ graph of calibration variant ``variant`` (manifest `calibration.variants`), checked and
    reported like a prepared graph: calibration/ writes it, this build only reads it."""
    from .check import check_graph, io_specs
    from .trt_support import report, summarize

    pkg = manifest.root
    variants = (manifest.data.get("calibration") or {}).get("variants") or {}
    files = {g: v.get("file") for g, v in (variants.get(variant) or {}).get("graphs", {}).items()}
    if not files.get(graph):
        raise DartrtError(f"{pkg} has no {graph} graph in calibration variant {variant!r} (variants: "
                          f"{', '.join(variants) or 'none'}); quantized engines are built from the Q/DQ graphs "
                          "that `dartrt calibrate --format ...` writes")
    path = pkg / files[graph]
    check_graph(path)
    inputs, outputs = io_specs(path)
    kv = [io["dtype"] for io in inputs if io["name"].startswith(f"{PAST}.")]
    return {"file": files[graph], "inputs": inputs, "outputs": outputs, "kv_cache_dtype": kv[0] if kv else None,
            "trt_support": summarize(report(path))}


def _prepared_entry(manifest: Manifest, graph: str, precision: str, auto_prepare: bool, variant: str,
                    log) -> tuple[Manifest, dict]:
    """(the manifest, updated if the graph had to be prepared first; the graph's entry)."""
    pkg = manifest.root
    key = prepared_key(graph, precision)
    if graph in DECODER_GRAPHS and precision in CALIBRATED_VARIANTS:
        entry = _calibrated_entry(manifest, graph, variant)
    else:
        if key not in (manifest.data.get("prepared") or {}):
            if not auto_prepare:
                raise DartrtError(f"{pkg} has no {key} graph; run graphs.prepare({str(pkg)!r}, "
                                  f"{key.split('.')[-1]!r}) first")
            log(f"preparing {key} (check, simplify, precision, op-support report)")
            prepare(pkg, key.split(".")[-1], graphs=(graph,) if graph not in DECODER_GRAPHS else DECODER_GRAPHS,
                    log=log)
            manifest = Manifest.load(pkg)  # unchanged files are not hashed again (fileio.sha256_file)
        entry = manifest.data["prepared"][key]
    if entry.get("trt_support", {}).get("unsupported"):
        first = entry["trt_support"]["issues"][0]
        raise DartrtError(f"{entry['file']} has {entry['trt_support']['unsupported']} node(s) the TensorRT parser "
                          f"does not support, e.g. {first['node']} ({first['op_type']}): {first['reason']}")
    return manifest, entry


def build_engine(pkg_dir: str | Path | Manifest, graph: str = "decode", precision: str = "fp16", *,
                 max_batch: int = DEFAULT_MAX_BATCH, max_step_tokens: int = DEFAULT_STEP_TOKENS,
                 timing_cache: str | Path | None = None, builder_optimization_level: int | None = None,
                 device: int = 0, auto_prepare: bool = True, int8_variant: str | None = None,
                 log=print) -> EngineReport:
    """Build ``engines/<graph>.<precision>.plan`` from the prepared graph (fp16/fp32, prepared on demand)
    or, for int8/fp8/int4-awq, from calibration variant ``int8_variant`` (None: `default_variant`), and
    record it in the manifest. ``pkg_dir`` may be the package's opened `Manifest` (read once per command)."""
    trt = require_tensorrt()
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    from dartrt.runtime.trt_backend import device_info

    if graph not in ALL_GRAPHS:
        raise DartrtError(f"unknown graph {graph!r}: use one of {', '.join(ALL_GRAPHS)}")
    if precision not in BUILD_PRECISIONS:
        raise DartrtError(f"unknown precision {precision!r}: use one of {', '.join(BUILD_PRECISIONS)}")
    manifest = pkg_dir if isinstance(pkg_dir, Manifest) else Manifest.load(pkg_dir)
    pkg = manifest.root
    here = device_info(device)
    quantized = graph in DECODER_GRAPHS and precision in CALIBRATED_VARIANTS
    if int8_variant is None and quantized:
        int8_variant = default_variant(manifest.data, precision, log)
    manifest, entry = _prepared_entry(manifest, graph, precision, auto_prepare, int8_variant or "", log)
    onnx_path = pkg / entry["file"]
    shapes = derive_profile(entry["inputs"], graph, max_batch, max_step_tokens)
    profile = Profile()
    for s in shapes:
        profile.add(s.name, min=s.min, opt=s.opt, max=s.max)
    cache = str(timing_cache) if timing_cache else None
    config = CreateConfig(profiles=[profile], load_timing_cache=cache,
                          builder_optimization_level=builder_optimization_level)
    start = time.perf_counter()
    key = prepared_key(graph, precision)
    rows = 2 * max_batch if graph in DECODER_GRAPHS else max_batch
    log(f"building {key} on {here.describe()}: rows 1..{rows}, strongly typed")
    try:
        plan = EngineBytesFromNetwork(NetworkFromOnnxPath(str(onnx_path), strongly_typed=True), config=config,
                                      save_timing_cache=cache)()
    except Exception as exc:  # Polygraphy reports parser/builder failures as PolygraphyException
        raise DartrtError(f"TensorRT could not build {key}: {str(exc).strip().splitlines()[-1]}") from None
    seconds = time.perf_counter() - start
    path = pkg / ENGINE_DIR / f"{key}.plan"
    atomic_write_bytes(path, bytes(plan))
    record = {
        "file": path.relative_to(pkg).as_posix(), "graph": graph, "precision": key.split(".")[-1],
        "onnx": entry["file"], "onnx_sha256": sha256_file(onnx_path), "gpu": here.gpu,
        "compute_capability": here.compute_capability, "tensorrt": trt.__version__,
        "kv_cache_dtype": entry.get("kv_cache_dtype"), "max_batch": max_batch,
        "profiles": [{s.name: s.to_dict() for s in shapes}],
        "build": {"strongly_typed": True, "builder_flags": [], "builder_optimization_level":
                  builder_optimization_level if builder_optimization_level is not None else "default (3)",
                  "timing_cache": Path(cache).name if cache else None, "seconds": round(seconds, 1),
                  "tool": "polygraphy " + _polygraphy_version()},
    }
    manifest = manifest.write({**manifest.data, "engines": {**(manifest.data.get("engines") or {}), key: record}})
    log(f"  wrote {record['file']} ({path.stat().st_size / 1e6:.1f} MB) in {seconds:.0f}s")
    return EngineReport(key, path, record, seconds, manifest)


def build_engines(pkg_dir: str | Path, precision: str = "fp16", *, graphs: tuple[str, ...] = ALL_GRAPHS,
                  **kwargs) -> BuildReport:
    """`build_engine` for each of ``graphs`` (what `dartrt build` runs), the manifest read once and
    handed from one build to the next."""
    manifest = Manifest.load(pkg_dir)
    report = BuildReport(manifest.root)
    for graph in graphs:
        built = build_engine(manifest, graph, precision, **kwargs)
        report.engines[built.key] = built
        manifest = built.manifest
    return report


def _polygraphy_version() -> str:
    import polygraphy

    return polygraphy.__version__
