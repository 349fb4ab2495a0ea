"""The one validation layer for what a caller passes: the API and the CLI give the same value the same
one-line `DartrtError`, never numpy's or Python's own ValueError, TypeError or OverflowError.

Strict on types on purpose: a string is not a number (``cfg="2"`` is refused, not parsed), a float is
not an integer (``seed=1.7`` and ``class_ids=[3.0]`` are refused, not truncated), a bool is neither.
numpy integer and floating scalars count as integers and numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .errors import DartrtError

# Guidance and temperature are applied to fp32 logits; beyond these the float32 arithmetic of the combine
# overflows (a CFG of 1e39 turned every logit into inf and every token into 0) or the result is
# indistinguishable from greedy / uniform sampling. No model uses values near them.
MAX_CFG = 1e4
MAX_TEMPERATURE = 1e4


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within [low, high]; anything else is one line naming ``name``."""
    if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        bound = f" >= {low}" if low is not None else ""
        bound += f" and <= {high:g}" if high is not None else ""
        raise DartrtError(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)


def number(name: str, value, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    """``value`` as a finite float within its bounds (``low_open``: strictly above ``low``)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok:
        raise DartrtError(f"{name} must be a number, got {value!r}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or below or (high is not None and value > high):
        parts = [f"> {low:g}" if low_open else f">= {low:g}"] if low is not None else []
        parts += [f"<= {high:g}"] if high is not None else []
        raise DartrtError(f"{name} must be a finite number{' ' + ' and '.join(parts) if parts else ''}, got {value!r}")
    return value


def class_id_list(class_ids, num_classes: int) -> list[int]:
    """A non-empty list (or 1-D array) of integer class ids in [0, num_classes)."""
    if isinstance(class_ids, (str, bytes)) or not isinstance(class_ids, (list, tuple, np.ndarray)) \
            or np.ndim(class_ids) != 1:
        raise DartrtError(f"class_ids must be a list of integers, got {class_ids!r}")
    out = []
    for c in class_ids:
        if not _is_int(c):
            raise DartrtError(f"class id {c!r} is not an integer")
        if not 0 <= int(c) < num_classes:
            raise DartrtError(f"class id {int(c)} is outside [0, {num_classes})")
        out.append(int(c))
    if not out:
        raise DartrtError("no class ids given")
    return out


def callback(name: str, value) -> Callable | None:
    if value is not None and not callable(value):
        raise DartrtError(f"{name} must be a callable or None, got {value!r}")
    return value
