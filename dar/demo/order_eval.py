"""`dartrt eval-orders`: the demo's judge (class accuracy, Fréchet distance ratio to real data; `dartrt
eval-demo`'s protocol) per scan order, for any-order models (docs/oar.md).

Orders: a fixed one by name (``raster``, ``diagonal``, ...) through the ordinary generation loop; ``random``,
a uniformly random permutation per image (image i of seed s walks ``default_rng([s, i, 7]).permutation``),
through the same loop with per-image position tables; ``adaptive``, the model choosing each image's order
(`dartrt.runtime.adaptive.generate_adaptive`, OAR's max-probability rule). Every image keeps its own Gumbel
generator (seed, index), as in `eval-demo`, so orders differ only in where the tokens go.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from dartrt.runtime.backend import Backend
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.orders import ORDER_NAMES
from dartrt.runtime.pipeline import generate_with_backend
from dartrt.runtime.scheduler import build_request, sample_tokens

from .classifier import load_classifier
from .evaluate import REFERENCE_IMAGES, per_class_fd_ratios
from .metrics import classifier_features, frechet_terms, reference_features
from .shapes import CLASS_NAMES, NUM_CLASSES, make_batch

RANDOM, ADAPTIVE = "random", "adaptive"
ORDERS = (*ORDER_NAMES, RANDOM, ADAPTIVE)


def random_orders(seed: int, count: int, grid: int, first: int = 0) -> np.ndarray:
    """[count, G*G, 2] cells: image i's uniformly random permutation (from default_rng([seed, i, 7]))."""
    cells = np.stack([np.random.default_rng([seed, i, 7]).permutation(grid * grid)
                      for i in range(first, first + count)])
    return np.stack(np.divmod(cells, grid), axis=-1).astype(np.int64)


def generate_in_orders(backend: Backend, orders: np.ndarray, n_per_class: int, cfg: float | None, seed: int,
                       batch_size: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Images of every class (``n_per_class`` each, class-major as `eval-demo`), image i walking its own
    order ``orders[i]`` [N, 2]: the scheduler's loop with per-image position tables."""
    info = backend.info
    request = build_request(backend, list(range(NUM_CLASSES)), n_per_class=n_per_class, cfg=cfg, seed=seed,
                            batch_size=batch_size)
    rows = request.images
    if len(orders) != len(rows):
        raise DartrtError(f"{len(orders)} orders for {len(rows)} images")
    pixels, labels = [], []
    for first in range(0, len(rows), batch_size):
        chunk = rows[first:first + batch_size]
        part = dataclasses.replace(request, class_ids=tuple(r.class_id for r in chunk), rows=chunk,
                                   order=orders[first:first + len(chunk)], batch_size=len(chunk))
        tokens = sample_tokens(backend, part)
        grids = np.empty((len(chunk), info.grid_size, info.grid_size), dtype=np.int64)
        for j, order in enumerate(part.order):
            grids[j, order[:, 0], order[:, 1]] = tokens[j]
        pixels.append(backend.decode_vq(grids))
        labels.extend(part.class_ids)
    return np.concatenate(pixels), np.asarray(labels)


def order_images(backend: Backend, order: str, n_per_class: int, cfg: float | None, seed: int,
                 batch_size: int = 50, candidates: int | None = None, cells_per_step: int = 1
                 ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [10 n, H, W, 3] and their classes, generated in ``order`` (module doc); ``candidates``
    and ``cells_per_step`` set the adaptive loop (every free cell and one cell a step by default)."""
    classes = list(range(NUM_CLASSES))
    if order == ADAPTIVE:
        from dartrt.runtime.adaptive import generate_adaptive

        result = generate_adaptive(backend, classes, n_per_class=n_per_class, cfg=cfg, seed=seed,
                                   batch_size=batch_size, candidates=candidates, cells_per_step=cells_per_step)
    elif order == RANDOM:
        grid = backend.info.grid_size
        return generate_in_orders(backend, random_orders(seed, NUM_CLASSES * n_per_class, grid), n_per_class, cfg,
                                  seed, batch_size)
    elif order in ORDER_NAMES:
        result = generate_with_backend(backend, classes, n_per_class=n_per_class, cfg=cfg, order=order, seed=seed,
                                       batch_size=batch_size)
    else:
        raise DartrtError(f"unknown order {order!r}: use one of {', '.join(ORDERS)}")
    return np.stack([np.asarray(im) for im in result.images]), np.asarray(result.class_ids)


class Judge:
    """The demo's judge, `evaluate_backend`'s measures: built once (the 2,000 reference images' features
    and the real-data floor of ``n_per_class`` real held-out images per class), then applied per run."""

    def __init__(self, classifier_dir: str | Path, n_per_class: int) -> None:
        self.classifier = load_classifier(classifier_dir)
        self.reference = reference_features(self.classifier, REFERENCE_IMAGES, "heldout2")
        self.reference_labels = np.arange(REFERENCE_IMAGES) % NUM_CLASSES
        real, self.real_labels = make_batch(range(n_per_class * NUM_CLASSES), "heldout")
        self.real_feats = classifier_features(self.classifier, real)[0]
        self.real_fd = max(sum(frechet_terms(self.real_feats, self.reference)), 0.0)

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> dict:
        feats, pred = classifier_features(self.classifier, images)
        mean_term, spread_term = frechet_terms(feats, self.reference)
        fd = max(mean_term + spread_term, 0.0)
        return {"class_accuracy": round(float((pred == labels).mean()), 4), "frechet_distance": round(fd, 4),
                "fd_ratio_to_real": round(fd / self.real_fd, 3) if self.real_fd > 0 else None,
                "frechet_mean_term": round(mean_term, 4),
                "per_class_accuracy": {CLASS_NAMES[c]: float((pred[labels == c] == c).mean())
                                       for c in range(NUM_CLASSES)},
                "per_class_fd_ratio": per_class_fd_ratios(feats, labels, self.real_feats, self.real_labels,
                                                          self.reference, self.reference_labels)}


def evaluate_orders(backend: Backend, classifier_dir: str | Path, orders=ORDERS, seeds=(0, 1, 2),
                    n_per_class: int = 50, cfg: float | None = None, batch_size: int = 50, log=None,
                    candidates: int | None = None, cells_per_step: int = 1) -> dict:
    """Per order: each seed's measures (`Judge`) and their means over the seeds, at one CFG scale (default:
    the model's)."""
    judge = Judge(classifier_dir, n_per_class)
    scale = backend.info.default_cfg if cfg is None else cfg
    report: dict = {"backend": backend.name, "model": backend.info.name, "n_per_class": n_per_class,
                    "cfg": scale, "seeds": list(seeds), "reference": f"{REFERENCE_IMAGES} heldout2 images",
                    "real_heldout_frechet_distance": round(judge.real_fd, 4),
                    "adaptive": {"candidates": candidates or "every free cell", "cells_per_step": cells_per_step},
                    "by_order": {}}
    for order in orders:
        runs = {}
        for seed in seeds:
            start = time.perf_counter()
            images, labels = order_images(backend, order, n_per_class, scale, seed, batch_size, candidates,
                                          cells_per_step)
            runs[str(seed)] = {**judge(images, labels), "seconds": round(time.perf_counter() - start, 1)}
            if log is not None:
                row = runs[str(seed)]
                log(f"{order:>9} seed {seed}: class accuracy {row['class_accuracy']:.3f}, Fréchet distance "
                    f"{row['frechet_distance']:.3f} ({row['fd_ratio_to_real']:.2f}x real), {row['seconds']:.0f}s")
        report["by_order"][order] = {"seeds": runs, "mean": mean_row(runs)}
    return report


def mean_row(runs: dict) -> dict:
    """Means over seeds of the headline measures."""
    keys = ("class_accuracy", "frechet_distance", "fd_ratio_to_real")
    return {k: round(float(np.mean([r[k] for r in runs.values()])), 4) for k in keys}
