"""ONNX files in a package: checking their opset (`dartrt.runtime.contract.OPSET`), when weights go to
external data, and saving them atomically.

A pass must never leave a half-written graph where the manifest (or a reader racing it) expects a
whole one, so the .onnx is written under a hidden temporary name (the manifest ignores dot-files) and
renamed into place. Weights above `EXTERNAL_DATA_BYTES` go to `<name>.data` beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from dartrt.runtime.contract import MAX_OPSET, MIN_OPSET
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write

# protobuf refuses messages of 2 GiB; above this many weight bytes a graph keeps them in external data.
EXTERNAL_DATA_BYTES = 1 << 30
# Initializers up to this size stay in the proto even with external data: shape inference (and so
# onnx.checker's full check) cannot read external data, and shapes depend on small integer tensors.
INLINE_BYTES = 1024


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or int(opset) != opset or not MIN_OPSET <= opset <= MAX_OPSET:
        raise DartrtError(f"opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}: the dynamo exporter writes broken "
                          "files at 17 and at 26 and above")


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers (raw or external), without loading external data."""
    total = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if t.dims else 1
        try:
            total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except (KeyError, TypeError):
            total += len(t.raw_data)
    return total


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` to ``path`` atomically (external data file ``<name>.data`` when large)."""
    path = Path(path)
    external = weight_bytes(model) > EXTERNAL_DATA_BYTES

    def write(tmp: str) -> None:
        if external:
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{path.name}.data", size_threshold=INLINE_BYTES)
        else:
            onnx.save_model(model, tmp)

    try:
        atomic_write(path, write)
    except (OSError, ValueError) as exc:
        raise DartrtError(f"cannot write {path}: {exc}") from None
    return path
