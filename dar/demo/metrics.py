"""Image-quality measures for the demo: class accuracy under the judge, and a Fréchet distance on its
features (the FID formula, on a feature extractor that knows this domain).

numpy first and float64 throughout: the statistics are small (F = 128) and the matrix square root is done
with symmetric eigendecompositions, so there is no scipy dependency and no complex-valued sqrtm residue.
"""

from __future__ import annotations

import numpy as np
import torch

from .classifier import ShapeClassifier, to_model_input
from .shapes import CLASS_NAMES, make_batch


def _gaussian(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, F], got shape {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; tiny negative eigenvalues from round-off
    are clipped to zero."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_terms(feats_a: np.ndarray, feats_b: np.ndarray) -> tuple[float, float]:
    """The Fréchet distance's two parts between Gaussians fitted to feature sets [N, F]: the shift of the
    means |mu_a - mu_b|^2, and the difference of spreads tr(S_a) + tr(S_b) - 2 tr(sqrt(S_a S_b)).

    Why both: a generator that draws one variant of a class consistently wrong (three dots instead of two)
    moves the mean, while one that draws the right things with too little or too much variety shows in
    the spread term; the split says which to look for. tr(sqrt(S_a S_b)) is the sum of sqrt(eigenvalues
    of sqrt(S_a) S_b sqrt(S_a)), a symmetric PSD matrix similar to S_a S_b, so eigh applies."""
    mu_a, s_a = _gaussian(feats_a)
    mu_b, s_b = _gaussian(feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    root_a = _sqrt_psd(s_a)
    m = root_a @ s_b @ root_a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu_a - mu_b
    return float(diff @ diff), float(np.trace(s_a) + np.trace(s_b) - 2.0 * tr_sqrt)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F]:

        |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr(sqrt(S_a S_b))

    (the sum of `frechet_terms`, clipped at zero against round-off)."""
    return max(sum(frechet_terms(feats_a, feats_b)), 0.0)


@torch.no_grad()
def classifier_features(
    classifier: ShapeClassifier, images_u8: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features [N, F] float64 and predicted labels [N] int64 of uint8 images [N, 64, 64, 3]."""
    images = np.asarray(images_u8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    classifier.eval()
    feats, preds = [], []
    for start in range(0, len(images), batch_size):
        f = classifier.features(to_model_input(images[start : start + batch_size]))
        feats.append(f.double().numpy())
        preds.append(classifier.head(f).argmax(dim=1).numpy().astype(np.int64))
    dim = classifier.config.feature_dim
    if not feats:
        return np.zeros((0, dim), dtype=np.float64), np.zeros((0,), dtype=np.int64)
    return np.concatenate(feats), np.concatenate(preds)


def reference_features(
    classifier: ShapeClassifier, n_images: int, split: str = "heldout2", batch_size: int = 256
) -> np.ndarray:
    """Features of ``n_images`` real images (all classes in equal turn), the reference a generator's
    samples are compared with. heldout2 by default: neither the classifier's training nor its evaluation
    used it."""
    chunks = []
    for start in range(0, n_images, batch_size):
        images, _ = make_batch(range(start, min(start + batch_size, n_images)), split)
        chunks.append(classifier_features(classifier, images, batch_size)[0])
    return np.concatenate(chunks)


def quality_report(
    classifier: ShapeClassifier, images_u8: np.ndarray, labels: np.ndarray, reference_feats: np.ndarray
) -> dict:
    """How good generated images are: the judge's accuracy against the requested labels (overall and per
    class name, for the classes present) and the Fréchet distance to the reference features."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(images_u8):
        raise ValueError(f"{len(images_u8)} images but {len(labels)} labels")
    feats, preds = classifier_features(classifier, images_u8)
    correct = preds == labels
    per_class = {
        CLASS_NAMES[c]: float(correct[labels == c].mean()) for c in range(len(CLASS_NAMES)) if (labels == c).any()
    }
    return {
        "n_images": int(len(labels)),
        "class_accuracy": float(correct.mean()) if len(labels) else float("nan"),
        "frechet_distance": frechet_distance(feats, reference_feats),
        "per_class_accuracy": per_class,
    }
