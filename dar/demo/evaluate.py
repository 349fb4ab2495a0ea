"""`dartrt eval-demo`: class accuracy and Fréchet distance of generated images, on any backend.

The judge is the bundled classifier. The Fréchet distance is taken on its penultimate features,
against real images of the `heldout2` split; the same distance for real `heldout` images of the same
count is the floor a perfect generator would reach, reported next to it.

Next to the totals the report splits the distance into its shift of the means and its difference of
spreads, and gives each class's distance as a ratio to that class's real-data floor (its generated images
against its `heldout2` images, over the same for real `heldout` images). The per-class figures come from
n_per_class images in a 128-dimensional feature space, so each distance is biased upwards by the small
count; generated and real share that bias, which is why only the ratio is reported. They say where a gap
lies, not how large the total is.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dartrt.runtime.backend import Backend
from dartrt.runtime.pipeline import generate_with_backend

from .classifier import load_classifier
from .metrics import classifier_features, frechet_distance, frechet_terms, reference_features
from .shapes import CLASS_NAMES, NUM_CLASSES, make_batch

REFERENCE_IMAGES = 2000


def generate_all_classes(backend: Backend, n_per_class: int, cfg: float, seed: int, batch_size: int = 50,
                         on_step=None) -> tuple[np.ndarray, np.ndarray]:
    result = generate_with_backend(backend, list(range(NUM_CLASSES)), n_per_class=n_per_class, cfg=cfg,
                                   seed=seed, batch_size=batch_size, on_step=on_step)
    images = np.stack([np.asarray(im) for im in result.images])
    return images, np.asarray(result.class_ids)


def per_class_fd_ratios(feats: np.ndarray, labels: np.ndarray, real_feats: np.ndarray, real_labels: np.ndarray,
                        reference: np.ndarray, reference_labels: np.ndarray) -> dict[str, float | None]:
    """Per class name: the Fréchet distance of its generated features to its reference features, over
    the same for its real features (None where that floor is 0). Each class needs >= 2 of each."""
    ratios: dict[str, float | None] = {}
    for c, name in enumerate(CLASS_NAMES):
        ref = reference[reference_labels == c]
        floor = frechet_distance(real_feats[real_labels == c], ref)
        ratios[name] = round(frechet_distance(feats[labels == c], ref) / floor, 2) if floor > 0 else None
    return ratios


def evaluate_backend(backend: Backend, classifier_dir: str | Path, n_per_class: int = 50,
                     cfgs: tuple[float, ...] | None = None, seed: int = 0, batch_size: int = 50,
                     progress=None, images_fn=generate_all_classes) -> dict:
    """Metrics at each CFG scale (default: 1.0 and the model's default), plus the real-data floor.

    ``images_fn(backend, n_per_class, cfg, seed, batch_size, progress)`` → (uint8 images, labels) makes the
    images (default: `generate_all_classes`; the D-AR demo passes its own, which also keeps its previews)."""
    classifier = load_classifier(classifier_dir)
    reference = reference_features(classifier, REFERENCE_IMAGES, "heldout2")
    reference_labels = np.arange(REFERENCE_IMAGES) % NUM_CLASSES  # make_batch's label = index % classes
    n = n_per_class * NUM_CLASSES
    real, real_labels = make_batch(range(n), "heldout")
    real_feats = classifier_features(classifier, real)[0]
    real_mean_term, real_spread_term = frechet_terms(real_feats, reference)
    real_fd = max(real_mean_term + real_spread_term, 0.0)
    cfgs = cfgs or (1.0, backend.info.default_cfg)
    report: dict = {"backend": backend.name, "n_per_class": n_per_class, "seed": seed,
                    "reference": f"{REFERENCE_IMAGES} heldout2 images",
                    "real_heldout_frechet_distance": round(real_fd, 4),
                    "real_heldout_frechet_mean_term": round(real_mean_term, 4), "by_cfg": {}}
    for cfg in cfgs:
        start = time.perf_counter()
        images, labels = images_fn(backend, n_per_class, cfg, seed, batch_size, progress)
        feats, pred = classifier_features(classifier, images)
        per_class = {CLASS_NAMES[c]: float((pred[labels == c] == c).mean()) for c in range(NUM_CLASSES)}
        mean_term, spread_term = frechet_terms(feats, reference)
        fd = max(mean_term + spread_term, 0.0)
        report["by_cfg"][f"{cfg:g}"] = {
            "class_accuracy": round(float((pred == labels).mean()), 4),
            "frechet_distance": round(fd, 4),
            "fd_ratio_to_real": round(fd / real_fd, 3) if real_fd > 0 else None,
            "frechet_mean_term": round(mean_term, 4),
            "per_class_accuracy": per_class,
            "per_class_fd_ratio": per_class_fd_ratios(feats, labels, real_feats, real_labels, reference,
                                                      reference_labels) if n_per_class >= 2 else None,
            "seconds": round(time.perf_counter() - start, 1),
        }
    return report
