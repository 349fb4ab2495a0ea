"""Open an exported package: verify it, then hand back the Backend that runs it.

This is the one place that maps a backend name to an implementation, so the CLI and
`runtime.generate` agree on what "auto" means, and onnxruntime is imported only when it is used.
"""

from __future__ import annotations

from pathlib import Path

from .backend import Backend
from .errors import DartrtError
from .manifest import Manifest
from .precisions import FP32, engine_precision, resolve_precision

BACKENDS = ("auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
_ORT_DEVICES = {"auto": "auto", "onnxruntime": "auto", "onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda"}


def open_package_backend(pkg_dir: str | Path, backend: str = "auto", *, precision: str | None = None,
                         verify_hashes: bool = True, graph_files: dict[str, str | Path] | None = None,
                         **options) -> Backend:
    """A ready Backend for the package at ``pkg_dir``.

    ``backend``: auto (onnxruntime, on CUDA when it really runs there), onnxruntime, onnxruntime-cpu,
    onnxruntime-cuda, tensorrt (built engines). ``options`` go to the backend (for onnxruntime:
    intra_op_threads, optimization, log_severity).

    ``precision`` (`dartrt.runtime.precisions`): on onnxruntime None/"fp32" runs the exported graphs, "fp16" the
    prepared FP16 ones, any calibration variant name (int8, int8-dynamic, ...) its INT8 graphs; the
    backend's ``precision`` says which and its ``name`` shows it ("onnxruntime[int8-dynamic]"). On
    tensorrt it picks the engine (fp16/int8/fp32, or the variant the int8 engine was built from; None:
    the best one built). ``graph_files`` (onnxruntime only) replaces single graphs on top of that with
    files the caller vouches for (absolute, or relative to the package): the calibration sensitivity
    sweep's scratch graphs, which the manifest does not list.
    """
    if backend not in BACKENDS:
        hint = "; the torch backend needs a checkpoint or preset, not a package" if backend == "torch" else ""
        raise DartrtError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}{hint}")
    package = Manifest.load(pkg_dir, verify_hashes)
    if package.data.get("family") == "d-ar":  # the GPT plus the tokenizer's graphs, no VQ (runtime.d_ar)
        from .d_ar import open_d_ar_package

        return open_d_ar_package(pkg_dir, backend, precision=precision, manifest=package,
                                 **({"graph_files": graph_files} if graph_files else {}), **options)
    if backend == "tensorrt":
        if graph_files:
            raise DartrtError("graph_files overrides are for the onnxruntime backends; TensorRT runs built engines")
        from .trt_backend import TrtBackend  # imports tensorrt/cuda-python only when constructed

        return TrtBackend(package, precision=engine_precision(package.data, precision, pkg_dir), **options)
    chosen = resolve_precision(package.data, precision, pkg_dir)
    files = {graph: package.root / file for graph, file in chosen.graph_files.items()}
    for graph, file in (graph_files or {}).items():
        if graph not in package.data["graphs"]:
            raise DartrtError(f"the package has no {graph!r} graph to replace "
                              f"(it has {', '.join(package.data['graphs'])})")
        files[graph] = package.root / file  # an absolute file stays itself
    from dartrt.extras import require  # dartrt.extras imports this package: import it when called

    require(("onnxruntime",), f"the {backend} backend")
    from .ort_backend import OrtBackend
    device = options.pop("device", _ORT_DEVICES[backend])
    engine = OrtBackend(package, device=device, graph_files=files or None, **options)
    engine.precision = chosen.name
    if chosen.name != FP32:
        engine.name = f"{engine.name}[{chosen.name}]"
    return engine
