"""Seeded token sampling shared by every backend (numpy only).

The draw is Gumbel-max: ``argmax(filtered_logits / τ + g)`` with ``g`` standard Gumbel noise. It is
exactly a draw from softmax(filtered_logits / τ), it needs no cumulative sums, and the noise can be
generated anywhere (here from a numpy Generator, or passed into a graph), so the same seed gives the
same tokens on every backend. Each image owns its Generator, seeded by (seed, image index), so the
result does not depend on the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arguments import MAX_TEMPERATURE, integer, number
from .errors import DartrtError


@dataclass(frozen=True)
class SamplingConfig:
    """temperature τ (0 → greedy), top_k (0 = off), top_p in (0, 1] (1 = off)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        number("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        integer("top_k", self.top_k, 0)
        try:
            number("top_p", self.top_p, 0.0, 1.0, low_open=True)
        except DartrtError:
            raise DartrtError(f"top_p must be in (0, 1], got {self.top_p!r}") from None

    @property
    def greedy(self) -> bool:
        return self.top_k == 1 or self.temperature == 0.0


def top_k_mask(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the logits >= the k-th largest of each row (ties at the threshold are kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return np.ones_like(logits, dtype=bool)
    kth = np.partition(logits, -k, axis=-1)[..., -k, None]
    return logits >= kth


def top_p_mask(logits: np.ndarray, p: float) -> np.ndarray:
    """Smallest prefix of the sorted distribution whose mass reaches p; the top 1 is always kept."""
    if p >= 1.0:
        return np.ones_like(logits, dtype=bool)
    order = np.argsort(-logits, axis=-1, kind="stable")
    sorted_logits = np.take_along_axis(logits, order, axis=-1).astype(np.float64)
    probs = np.exp(sorted_logits - sorted_logits[..., :1])
    probs /= probs.sum(axis=-1, keepdims=True)
    mass_before = np.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < p
    keep_sorted[..., 0] = True
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return keep


def filter_logits(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """logits / max(τ, 1e-5), then top-k, then top-p; removed entries become -inf. float64 out."""
    scaled = np.asarray(logits, dtype=np.float64) / max(cfg.temperature, 1e-5)
    keep = top_k_mask(scaled, int(cfg.top_k))
    scaled = np.where(keep, scaled, -np.inf)
    keep = top_p_mask(scaled, cfg.top_p)
    return np.where(keep, scaled, -np.inf)


def gumbel_noise(rngs: list[np.random.Generator], vocab: int) -> np.ndarray:
    """One row of standard Gumbel noise per image, each from its own Generator: [B, V]."""
    return np.stack([rng.gumbel(size=vocab) for rng in rngs])


def sample(logits: np.ndarray, cfg: SamplingConfig, noise: np.ndarray | None) -> np.ndarray:
    """Draw one token per row of [B, V] logits. Greedy (top_k 1 or τ 0) is exactly argmax."""
    if cfg.greedy:
        return np.argmax(logits, axis=-1).astype(np.int64)
    if noise is None:
        raise DartrtError("sampling needs Gumbel noise (or use greedy: top_k=1)")
    return np.argmax(filter_logits(logits, cfg) + noise, axis=-1).astype(np.int64)


def image_generator(seed: int, index: int) -> np.random.Generator:
    """The Generator of image ``index`` of a run seeded with ``seed``. It depends on nothing else, so an
    image comes out the same whichever batch (or batch of merged requests) it is drawn in."""
    return np.random.default_rng([int(seed), int(index)])


def image_generators(seed: int, count: int, first: int = 0) -> list[np.random.Generator]:
    """Independent Generators for images first..first+count-1 of one seeded run."""
    return [image_generator(seed, i) for i in range(first, first + count)]
