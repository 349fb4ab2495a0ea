"""Run a quantized variant through the ordinary onnxruntime backend.

A calibration variant is a first-class runtime precision (`dartrt.runtime.precisions`): `open_package_backend(
pkg, precision="int8")` opens the package (hashes checked) with the variant's prefill/decode files in
place of the exported ones. The I/O contract is unchanged (same names, fp32 logits and caches), so the
caches are still aliased in place. The sensitivity sweep's scratch graphs, which no manifest lists,
go in as explicit ``graph_files`` (absolute paths) on top.
"""

from __future__ import annotations

from pathlib import Path

from dartrt.runtime.ort_backend import OrtBackend
from dartrt.runtime.package import open_package_backend


def open_variant(pkg: str | Path, variant: str | None = None, graph_files: dict[str, str] | None = None,
                 intra_op_threads: int = 1, **options) -> OrtBackend:
    """An onnxruntime CPU backend for the package's FP32 graphs (``variant=None``), a recorded variant,
    or explicit ``graph_files`` (over the variant's). One thread by default: the report compares
    backends, not machines."""
    backend = open_package_backend(pkg, "onnxruntime-cpu", precision=variant, graph_files=graph_files,
                                   intra_op_threads=intra_op_threads, **options)
    backend.name = f"onnxruntime-cpu[{variant or ('custom' if graph_files else 'fp32')}]"
    return backend
