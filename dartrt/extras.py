"""Which optional install provides which module, and the one-line error when one is missing.

The base install is the runtime (numpy, Pillow, click, tqdm); everything else comes from an extra
(pyproject.toml). A command that needs a module the host lacks says which extra brings it, instead of
failing with an ImportError deep inside.
"""

from __future__ import annotations

import importlib.util

from dartrt.runtime.errors import DartrtError

# module → the extra that installs it
EXTRA_OF = {
    "torch": "export", "safetensors": "export", "onnx": "export", "onnxscript": "export", "polygraphy": "export",
    "onnxruntime": "cpu", "tensorrt": "tensorrt", "modelopt": "quant", "ray": "serve",
}
# The whole PyTorch side: what export, verify and calibrate import.
EXPORT_MODULES = ("torch", "safetensors", "onnx", "onnxscript", "polygraphy")


def missing(modules: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` this interpreter cannot import (found without importing them)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(modules: tuple[str, ...], purpose: str) -> None:
    """Raise a one-line `DartrtError` naming the extra(s) to install when any of ``modules`` is missing.

    ``purpose`` completes "... is needed for {purpose}", e.g. "`dartrt export`"."""
    absent = missing(modules)
    if not absent:
        return
    extras = sorted({EXTRA_OF.get(m, m) for m in absent})
    hint = " ".join(f"'dartrt[{e}]'" for e in extras)
    gpu = " (or 'dartrt[gpu]')" if "cpu" in extras else ""
    raise DartrtError(f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} needed for {purpose} and not "
                      f"installed: pip install {hint}{gpu}")
