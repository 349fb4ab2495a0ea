"""Classifier-free guidance schedules and the logit combination (numpy only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .arguments import MAX_CFG, number
from .errors import DartrtError

SCHEDULES = ("constant", "linear", "power-cosine")


@dataclass(frozen=True)
class CFGSchedule:
    """Guidance weight w_t over the N sampled tokens.

    - constant: w_t = scale (LlamaGen);
    - linear: from ``start`` to ``scale`` over the steps (D-AR);
    - power-cosine: w_t = 1 + (scale-1)·½·(1 - cos(π·(t/N)^power)) (DAR).
    """

    scale: float = 4.0
    kind: str = "constant"
    start: float = 1.0
    power: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise DartrtError(f"unknown cfg schedule {self.kind!r}: use one of {', '.join(SCHEDULES)}")
        number("cfg", self.scale, 0.0, MAX_CFG)
        number("cfg start", self.start, 0.0, MAX_CFG)
        number("cfg power", self.power, 0.0, 100.0, low_open=True)

    def weight(self, step: int, num_steps: int) -> float:
        """w for sampled token ``step`` in [0, num_steps); t/N runs from 0 to 1 inclusive, so the
        schedule hits both of its endpoints."""
        frac = step / max(num_steps - 1, 1)
        if self.kind == "constant":
            return float(self.scale)
        if self.kind == "linear":
            return float(self.start + (self.scale - self.start) * frac)
        return float(1.0 + (self.scale - 1.0) * 0.5 * (1.0 - math.cos(math.pi * frac**self.power)))

    @property
    def enabled(self) -> bool:
        """CFG off means w ≡ 1: the null-class rows can be skipped entirely."""
        return not (self.scale == 1.0 and (self.kind != "linear" or self.start == 1.0))


def combine(logits: np.ndarray, weight: float | np.ndarray) -> np.ndarray:
    """[2B, V] (cond rows then null rows) → [B, V]: l_u + w·(l_c − l_u).

    ``weight``: one float for every image, or one per image ([B], a batch that merges requests with
    different scales). Per-image weights are cast to the logits' dtype first, which is what numpy does
    with a Python float, so an image's row comes out bit for bit the same either way."""
    half = logits.shape[0] // 2
    cond, uncond = logits[:half], logits[half:]
    if not np.isscalar(weight):
        weight = np.asarray(weight, dtype=logits.dtype).reshape(half, 1)
    return uncond + weight * (cond - uncond)


def weight_table(schedules: list[CFGSchedule] | tuple[CFGSchedule, ...], num_steps: int) -> np.ndarray:
    """w of every step for every image: [num_steps, B] float64, row t for sampled token t."""
    return np.asarray([[s.weight(t, num_steps) for s in schedules] for t in range(num_steps)], dtype=np.float64)
