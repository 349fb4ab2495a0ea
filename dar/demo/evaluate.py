"""`dartrt eval-demo`: class accuracy and Fréchet distance of generated images, on any backend.

The judge is the bundled classifier. The Fréchet distance is taken on its penultimate features,
against real images of the `heldout2` split; the same distance for real `heldout` images of the same
count is the floor a perfect generator would reach, reported next to it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from runtime.backend import Backend
from runtime.pipeline import generate_with_backend

from .classifier import load_classifier
from .metrics import classifier_features, frechet_distance, reference_features
from .shapes import CLASS_NAMES, NUM_CLASSES, make_batch

REFERENCE_IMAGES = 2000


def generate_all_classes(backend: Backend, n_per_class: int, cfg: float, seed: int, batch_size: int = 50,
                         on_step=None) -> tuple[np.ndarray, np.ndarray]:
    result = generate_with_backend(backend, list(range(NUM_CLASSES)), n_per_class=n_per_class, cfg=cfg,
                                   seed=seed, batch_size=batch_size, on_step=on_step)
    images = np.stack([np.asarray(im) for im in result.images])
    return images, np.asarray(result.class_ids)


def evaluate_backend(backend: Backend, classifier_dir: str | Path, n_per_class: int = 50,
                     cfgs: tuple[float, ...] | None = None, seed: int = 0, batch_size: int = 50,
                     progress=None) -> dict:
    """Metrics at each CFG scale (default: 1.0 and the model's default), plus the real-data floor."""
    classifier = load_classifier(classifier_dir)
    reference = reference_features(classifier, REFERENCE_IMAGES, "heldout2")
    n = n_per_class * NUM_CLASSES
    real, _ = make_batch(range(n), "heldout")
    real_fd = frechet_distance(classifier_features(classifier, real)[0], reference)
    cfgs = cfgs or (1.0, backend.info.default_cfg)
    report: dict = {"backend": backend.name, "n_per_class": n_per_class, "seed": seed,
                    "reference": f"{REFERENCE_IMAGES} heldout2 images",
                    "real_heldout_frechet_distance": round(real_fd, 4), "by_cfg": {}}
    for cfg in cfgs:
        start = time.perf_counter()
        images, labels = generate_all_classes(backend, n_per_class, cfg, seed, batch_size, progress)
        feats, pred = classifier_features(classifier, images)
        per_class = {CLASS_NAMES[c]: float((pred[labels == c] == c).mean()) for c in range(NUM_CLASSES)}
        fd = frechet_distance(feats, reference)
        report["by_cfg"][f"{cfg:g}"] = {
            "class_accuracy": round(float((pred == labels).mean()), 4),
            "frechet_distance": round(fd, 4),
            "fd_ratio_to_real": round(fd / real_fd, 3) if real_fd > 0 else None,
            "per_class_accuracy": per_class,
            "seconds": round(time.perf_counter() - start, 1),
        }
    return report
