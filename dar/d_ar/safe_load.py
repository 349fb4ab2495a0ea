"""Read the public D-AR ``.pt`` files without running any code from them.

The public trainers save more than tensors: the tokenizer's ``config`` is their own ``config_util.Config``
object (a mapping that keeps the YAML dict in ``_data``) and both trainers save ``args``, an
``argparse.Namespace``. ``torch.load(weights_only=True)`` refuses such files, and ``weights_only=False``
would import and run whatever classes the pickle names.

How we read them: torch lists the non-allowlisted globals a checkpoint names
(``get_unsafe_globals_in_checkpoint``, which scans the pickle without executing it); each one is mapped to
a fresh ``Opaque`` class, which only records the arguments and state it is given; then torch's
``weights_only`` unpickler loads the file with those stand-ins allowlisted. Nothing of the named classes is
imported or called, torch's own restrictions stay (modules such as ``os`` or ``subprocess`` are refused
outright, and only plain containers can be filled), and tensors load as usual (memory-mapped for zip files,
so a multi-GB training checkpoint with optimizer state costs little memory).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from dartrt.runtime.errors import DartrtError


class Opaque:
    """A stand-in for a class or function named in a checkpoint: records how it was built, runs nothing."""

    qualified_name: ClassVar[str] = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"Opaque({self.qualified_name})"


def _stand_ins(names: list[str]) -> list[tuple[type, str]]:
    return [(type(f"Opaque_{i}", (Opaque,), {"qualified_name": name}), name) for i, name in enumerate(names)]


def _reason(exc: BaseException) -> str:
    """The informative line of a (often multi-line) loader error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "blocked" in line:
            return line[:200]
    return lines[0][:200] if lines else "no message"


def read_pt(path_or_obj: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """A checkpoint's top-level dict and a name for messages. A mapping passes through (tests, callers
    that already hold the dict); a path is read as described in the module docstring."""
    if isinstance(path_or_obj, Mapping):
        return path_or_obj, "state dict"
    path = Path(path_or_obj)
    name = f"checkpoint {path.name}"
    if not path.is_file():
        raise DartrtError(f"{name}: file not found ({path})")
    try:
        is_zip = zipfile.is_zipfile(path)
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if is_zip else []
        with torch.serialization.safe_globals(_stand_ins(names)):
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
            except RuntimeError:
                if not is_zip:
                    raise
                # Memory-mapping needs a layout some old writers do not produce; read it into memory.
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader failure is the same user error
        raise DartrtError(f"{name}: cannot read ({type(exc).__name__}: {_reason(exc)})") from None
    if not isinstance(obj, Mapping):
        raise DartrtError(f"{name}: expected a dict, got {type(obj).__name__}")
    return obj, name


def plain_config(value: Any, name: str) -> Mapping[str, Any]:
    """A stored ``config`` as a plain mapping: a dict as is, the public ``Config`` object by its ``_data``."""
    if isinstance(value, Mapping):
        return value
    if isinstance(value, Opaque):
        state = value.state
        if isinstance(state, Mapping) and isinstance(state.get("_data"), Mapping):
            return state["_data"]
        raise DartrtError(f"{name}: its stored config is a {value.qualified_name} object whose fields cannot be "
                          "read (expected a dict or the public trainer's Config)")
    raise DartrtError(f"{name}: its stored config is a {type(value).__name__}, not a dict")
