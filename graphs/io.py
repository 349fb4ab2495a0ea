"""Saving graphs inside a package: atomically, with external data when protobuf would overflow.

A pass must never leave a half-written graph where the manifest (or a reader racing it) expects a
whole one, so the .onnx is written under a hidden temporary name (the manifest ignores dot-files) and
renamed into place. Weights above `EXTERNAL_DATA_BYTES` go to `<name>.data` beside it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from dartrt.runtime.errors import DartrtError

# protobuf refuses messages of 2 GiB; stay well below it (the exporter uses the same bound).
EXTERNAL_DATA_BYTES = 1 << 30


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
    path.parent.mkdir(parents=True, exist_ok=True)
    external = weight_bytes(model) > EXTERNAL_DATA_BYTES
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if external:
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=f"{path.name}.data", size_threshold=1024)
        else:
            onnx.save_model(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        raise DartrtError(f"cannot write {path}: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
