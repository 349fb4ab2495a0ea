"""Run a quantized variant through the ordinary onnxruntime backend, without touching the runtime.

`OrtBackend` opens ``manifest.graph(name).path`` for each graph, i.e. ``root / graphs[name]['file']``.
So a variant is just a manifest *view* whose prefill/decode entries point at the quantized files: the
I/O contract is unchanged (same names, fp32 logits and caches), the caches are still aliased in place,
and the files are the hash-checked ones listed in the package manifest. An absolute path (a scratch
graph of the sensitivity sweep) works too, since ``root / '/abs/x.onnx'`` is ``/abs/x.onnx``.

The minimal runtime change that would make this first-class is an ``OrtBackend(..., graph_files=
{"decode": "calibration/decode.int8.onnx"})`` override (and ``open_package_backend(..., variant=
"int8")`` reading ``manifest['calibration']['variants']``); until then this module builds the view.
"""

from __future__ import annotations

import copy
from pathlib import Path

from runtime.errors import DartrtError
from runtime.manifest import Manifest
from runtime.ort_backend import OrtBackend


def variant_graph_files(data: dict, variant: str) -> dict[str, str]:
    """The package-relative graph files of a recorded variant (``calibration.variants[variant]``)."""
    variants = (data.get("calibration") or {}).get("variants") or {}
    if variant not in variants:
        known = ", ".join(variants) or "none"
        raise DartrtError(f"the package has no calibration variant {variant!r} (it has: {known}); "
                          "run `dartrt calibrate`")
    return {g: v["file"] for g, v in variants[variant]["graphs"].items()}


def variant_manifest(manifest: Manifest, graph_files: dict[str, str]) -> Manifest:
    """A copy of ``manifest`` whose graphs point at ``graph_files`` (package-relative or absolute)."""
    data = copy.deepcopy(manifest.data)
    for graph, file in graph_files.items():
        if graph not in data["graphs"]:
            raise DartrtError(f"the package has no {graph!r} graph to replace")
        data["graphs"][graph] = {**data["graphs"][graph], "file": str(file)}
    return Manifest(manifest.root, data)


def open_variant(pkg: str | Path, variant: str | None = None, graph_files: dict[str, str] | None = None,
                 intra_op_threads: int = 1, **options) -> OrtBackend:
    """An onnxruntime CPU backend for the package's FP32 graphs (``variant=None``), a recorded variant,
    or explicit ``graph_files``. One thread by default: the report compares backends, not machines."""
    manifest = Manifest.load(pkg)
    files = dict(graph_files or {})
    if variant is not None:
        files = {**variant_graph_files(manifest.data, variant), **files}
    backend = OrtBackend(variant_manifest(manifest, files) if files else manifest, providers="cpu",
                         intra_op_threads=intra_op_threads, **options)
    backend.name = f"onnxruntime-cpu[{variant or ('custom' if files else 'fp32')}]"
    return backend
