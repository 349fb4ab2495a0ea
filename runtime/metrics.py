"""The figures every comparison in dartrt reports, and the bounds it judges them by (numpy only).

Export checks, `dartrt verify`, the graph passes, calibration and bench all compare a candidate's
outputs with a reference's; they take these definitions from here so that "KL", "top-1 agreement" or
"PSNR" mean one thing everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

# Teacher-forced top-1 agreement with the fp32 reference that a lower precision must reach (verify's bound
# for fp16/INT8, calibration's target for INT8); FP16 graph passes aim higher.
TOP1_MIN = 0.95
FP16_TOP1_MIN = 0.99


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) ‖ softmax(test)) over the last axis, one value per position, in nats (>= 0)."""
    lp, lq = log_softmax(ref), log_softmax(test)
    return np.maximum((np.exp(lp) * (lp - lq)).sum(axis=-1), 0.0)


def top1_agreement(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """1.0 where the two argmaxes over the last axis agree, else 0.0 (one value per position)."""
    return (np.argmax(ref, axis=-1) == np.argmax(test, axis=-1)).astype(np.float64)


def max_abs(ref: np.ndarray, test: np.ndarray) -> float:
    """Largest |ref - test| in float64; inf when either side holds a NaN (a NaN proves nothing)."""
    diff = np.abs(np.asarray(test, dtype=np.float64) - np.asarray(ref, dtype=np.float64))
    if diff.size == 0:
        return 0.0
    return math.inf if np.isnan(diff).any() else float(diff.max())


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images in dB; inf when they are identical."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


@dataclass(frozen=True)
class Tolerance:
    """The one rule every numeric comparison in dartrt is judged by: for each output tensor,
    ``max |test - ref| <= atol + rtol * max |ref|``.

    The bound scales with the output's range, as a relative error should: a model whose logits reach
    ±50 accumulates fp32 rounding errors about 50x larger than one whose logits stay within ±1, and an
    absolute 1e-4 alone would refuse its correct graphs (a LlamaGen GPT-B measured 1.35e-4 on logits of
    ±50: a relative error of 3e-6). Using the tensor's range rather than each element's magnitude
    (torch.testing's ``rtol * |ref|``) keeps the rule strict for elements near zero, whose errors come
    from the same large partial sums."""

    atol: float
    rtol: float

    RULE: ClassVar[str] = "max|test - ref| <= atol + rtol * max|ref| per output"

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                from .errors import DartrtError

                raise DartrtError(f"{name} must be a finite number >= 0, got {value!r}")

    def bound(self, ref: np.ndarray) -> float:
        """The largest difference allowed against ``ref``."""
        ref = np.asarray(ref)
        peak = float(np.abs(ref.astype(np.float64)).max()) if ref.size else 0.0
        return self.atol + self.rtol * (peak if math.isfinite(peak) else 0.0)

    def judge(self, ref: np.ndarray, test: np.ndarray) -> Deviation:
        return Deviation(max_abs(ref, test), self.bound(ref))

    def to_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "rule": self.RULE}

    def describe(self) -> str:
        return f"atol {self.atol:g} + rtol {self.rtol:g} x max|ref|"


@dataclass(frozen=True)
class Deviation:
    """How far one output was from its reference, and the bound it had to meet."""

    max_abs: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.bound  # NaN/inf fails

    @property
    def ratio(self) -> float:
        """max_abs / bound (> 1 fails)."""
        return self.max_abs / self.bound if self.bound > 0 else (0.0 if self.max_abs == 0 else math.inf)


# fp32 graphs against eager torch: logits and caches of the step graphs, and the VQ decoder's images
# (~20 conv layers, values in about [-1, 1], so a larger absolute part).
FP32_STEP = Tolerance(atol=1e-4, rtol=1e-5)
FP32_IMAGE = Tolerance(atol=1e-3, rtol=1e-5)
