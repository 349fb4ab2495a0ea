"""Quality and cost of the adaptive order's settings on the demo (docs/oar.md): class accuracy, Fréchet
distance, steps and time per image, by the protocol of docs/demo-model.md.

Each variant (a fixed order, adaptive scoring every cell, pruned to N candidates, K cells per step, ...)
generates ``n_per_class`` images of every class per seed on one backend; the bundled judge scores them:
class accuracy, and the Fréchet distance of its features to 2,000 real ``heldout2`` images, also as a
ratio to the same distance for real ``heldout`` images of the same count (the floor a perfect generator
reaches). ``evaluate_variants`` is what `tools`-style scripts and the docs' tables call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dartrt.runtime.adaptive import AdaptiveSettings, run_adaptive
from dartrt.runtime.backend import Backend
from dartrt.runtime.scheduler import build_request

from .classifier import load_classifier
from .metrics import classifier_features, frechet_terms, reference_features
from .shapes import NUM_CLASSES, make_batch

REFERENCE_IMAGES = 2000


@dataclass(frozen=True)
class Variant:
    """One way to generate: ``order`` a fixed order name, or None with ``settings`` for the adaptive loop."""

    name: str
    order: str | None = None
    settings: AdaptiveSettings | None = None


def generate_variant(backend: Backend, variant: Variant, n_per_class: int, seed: int, cfg: float | None,
                     batch_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """uint8 images [n, H, W, 3], their class labels, and the scoring calls per batch (steps)."""
    request = build_request(backend, list(range(NUM_CLASSES)), n_per_class=n_per_class, cfg=cfg, seed=seed,
                            batch_size=batch_size, order=variant.order)
    if variant.settings is None:
        from dartrt.runtime.pipeline import run_request

        result = run_request(backend, request)
        steps = backend.info.seq_len
    else:
        result = run_adaptive(backend, request, variant.settings)
        steps = result.steps
    images = np.stack([np.asarray(im) for im in result.images])
    return images, np.asarray(result.class_ids), steps


def evaluate_variants(backend: Backend, classifier_dir: str | Path, variants: list[Variant], n_per_class: int = 50,
                      seeds: tuple[int, ...] = (0, 1, 2), cfg: float | None = None, batch_size: int = 50,
                      log: Callable[[str], None] = print) -> dict:
    """Per variant and seed: class accuracy, Fréchet distance (and its ratio to real data), steps, seconds
    per image; then the means over the seeds."""
    classifier = load_classifier(classifier_dir)
    reference = reference_features(classifier, REFERENCE_IMAGES, "heldout2")
    real, _ = make_batch(range(n_per_class * NUM_CLASSES), "heldout")
    real_fd = max(sum(frechet_terms(classifier_features(classifier, real)[0], reference)), 0.0)
    out: dict = {"backend": backend.name, "n_per_class": n_per_class, "seeds": list(seeds),
                 "cfg": backend.info.default_cfg if cfg is None else cfg, "real_heldout_frechet_distance": real_fd,
                 "variants": {}}
    for variant in variants:
        rows = []
        for seed in seeds:
            start = time.perf_counter()
            images, labels, steps = generate_variant(backend, variant, n_per_class, seed, cfg, batch_size)
            seconds = time.perf_counter() - start
            feats, pred = classifier_features(classifier, images)
            fd = max(sum(frechet_terms(feats, reference)), 0.0)
            rows.append({"seed": seed, "class_accuracy": float((pred == labels).mean()), "frechet_distance": fd,
                         "fd_ratio_to_real": fd / real_fd if real_fd > 0 else None, "steps": steps,
                         "seconds_per_image": seconds / len(images)})
            log(f"{variant.name}, seed {seed}: accuracy {rows[-1]['class_accuracy']:.3f}, Fréchet x real "
                f"{rows[-1]['fd_ratio_to_real']:.2f}, {steps} steps, {rows[-1]['seconds_per_image']:.3f} s per image")
        mean = {k: float(np.mean([r[k] for r in rows])) for k in
                ("class_accuracy", "frechet_distance", "fd_ratio_to_real", "steps", "seconds_per_image")}
        out["variants"][variant.name] = {"by_seed": rows, "mean": mean}
    return out
