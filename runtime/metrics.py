"""The figures every comparison in dartrt reports, and the bounds it judges them by (numpy only).

Export checks, `dartrt verify`, the graph passes, calibration and bench all compare a candidate's
outputs with a reference's; they take these definitions from here so that "KL", "top-1 agreement" or
"PSNR" mean one thing everywhere.
"""

from __future__ import annotations

import math

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
