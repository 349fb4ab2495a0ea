"""The precisions a bench run times: ORT FP32 plus the package's calibration variants, each as a Side.

Why several precisions in one run: at batch 1 a decode step is bound by the bytes of weights it
reads, so an INT8 graph (a quarter of the fp32 weight bytes) is the main CPU lever, and its speed-up
only means something against FP32 and torch timed in the same minute on the same machine. A
precision is whatever `dartrt.runtime.precisions` lists for the package: a calibration variant (its own,
hash-checked ``calibration/<graph>.<variant>.onnx``, written by `dartrt calibrate`) or the prepared
FP16 graphs, opened by `open_package_backend(precision=...)`. Its roofline is counted from those
same files, so the floor uses the precision's real weight bytes (INT8: about a quarter of fp32).

Parity vs FP32 is measured on what the bench runs anyway: the cache fill before the timed decode step
feeds the same filler tokens to every side, i.e. it is teacher-forced, so comparing each step's
argmax with FP32's costs nothing extra. On random weights (or random filler tokens) it shows that the
variant computes the same function, not its quality on real images: that is `dartrt calibrate`'s report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dartrt.runtime.cfg import combine
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.precisions import FP32, Precision, list_precisions, precision_manifest, resolve_precision

ALL = "all"
__all__ = ["ALL", "FP32", "FillTrace", "Precision", "open_precision", "resolve_precisions", "top1_agreement"]


def _tensorrt_only(data: dict, precision: Precision) -> bool:
    """A calibration variant written for TensorRT: INT8/FP8 Q/DQ with the rest of the graph in fp16
    (``int8-fp16``, ``fp8-fp16``), which onnxruntime's CPU EP does not run."""
    if precision.source != "calibration":
        return False
    entry = ((data.get("calibration") or {}).get("variants") or {}).get(precision.name) or {}
    return entry.get("format") != "fp16" and entry.get("high_precision_dtype", "fp32") == "fp16"


def resolve_precisions(data: dict, requested, device: str, pkg: str | Path | None = None) -> list[Precision]:
    """``requested`` names (``--precision``, repeatable) → the precisions to time, fp32 first.

    fp32 is always timed (every ratio is taken against it); ``all`` adds every precision the package
    records (`runtime.precisions.list_precisions`) that runs on ``device``: on the CPU that leaves out the
    fp16-rest Q/DQ graphs made for TensorRT, on CUDA nothing (nodes the CUDA EP lacks run on the CPU
    and show as slow). Nothing requested = fp32 alone, as before variants existed."""
    names = [str(n) for n in requested or ()]
    if ALL in names:
        listed = list_precisions(data).values()
        names = [n for n in names if n != ALL] + [p.name for p in listed
                                                  if device != "cpu" or not _tensorrt_only(data, p)]
    out = [resolve_precision(data, FP32, pkg)]
    for name in dict.fromkeys(names):
        if name == FP32:
            continue
        chosen = resolve_precision(data, name, pkg)  # one-line error naming what the package has
        if device == "cpu" and _tensorrt_only(data, chosen):
            raise DartrtError(f"precision {name!r} keeps fp16 outside its quantized GEMMs (a TensorRT graph); "
                              "onnxruntime's CPU EP does not run it")
        out.append(chosen)
    return out


def open_precision(pkg: str | Path, manifest: Manifest, precision: Precision, device: str, threads: int):
    """(backend, manifest view) of one non-fp32 precision: the backend from `open_package_backend`
    (hashes were checked when the bench opened the package), the view for the roofline."""
    from dartrt.runtime.package import open_package_backend

    backend = open_package_backend(pkg, f"onnxruntime-{device}", precision=precision.name, verify_hashes=False,
                                   intra_op_threads=threads)
    return backend, precision_manifest(manifest, precision)


# ---- parity vs fp32, from the teacher-forced cache fill ----------------------------------------------
@dataclass
class FillTrace:
    """Per-step argmax of the teacher-forced fill: every row, and the CFG-guided rows (if CFG)."""

    rows: list[np.ndarray] = field(default_factory=list)
    guided: list[np.ndarray] = field(default_factory=list)

    def add(self, logits: np.ndarray, cfg_scale: float | None) -> None:
        self.rows.append(np.argmax(logits, axis=-1))
        if cfg_scale is not None:
            self.guided.append(np.argmax(combine(logits, cfg_scale), axis=-1))


def top1_agreement(ref: FillTrace, test: FillTrace) -> dict[str, float | int | None]:
    """Share of (step, row) whose argmax equals the reference's; guided = after the CFG combine,
    i.e. the distribution that is sampled (None without CFG)."""
    rows = float(np.mean(np.stack(ref.rows) == np.stack(test.rows)))
    guided = float(np.mean(np.stack(ref.guided) == np.stack(test.guided))) if ref.guided else None
    return {"teacher_forced_steps": len(ref.rows), "top1_rows": rows, "top1_guided": guided}
