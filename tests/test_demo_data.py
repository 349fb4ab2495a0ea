"""The demo's procedural data, its judging classifier, and the quality metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dartrt.dar.demo import shapes
from dartrt.dar.demo.classifier import (
    ShapeClassifier,
    load_classifier,
    save_classifier,
    to_model_input,
    train_classifier,
)
from dartrt.dar.demo.evaluate import per_class_fd_ratios
from dartrt.dar.demo.metrics import classifier_features, frechet_distance, frechet_terms, quality_report
from dartrt.dar.demo.shapes import CLASS_NAMES, NUM_CLASSES, make_batch, render

# --- shapes ---------------------------------------------------------------------------------------------


def test_class_list() -> None:
    assert NUM_CLASSES >= 10
    assert len(CLASS_NAMES) == NUM_CLASSES == len(set(CLASS_NAMES))


def test_render_is_deterministic_and_seed_dependent() -> None:
    for label in range(NUM_CLASSES):
        a, b = render(123, label), render(123, label)
        assert a.shape == (64, 64, 3) and a.dtype == np.uint8
        assert a.tobytes() == b.tobytes()
        assert render(124, label).tobytes() != a.tobytes()


def test_every_class_renders_a_visible_shape() -> None:
    for label in range(NUM_CLASSES):
        for seed in range(20):
            img = render(seed, label).astype(np.int64)
            colours = np.unique(img.reshape(-1, 3), axis=0)
            assert len(colours) >= 2, (CLASS_NAMES[label], seed)
            # the foreground covers a real part of the image, not a few pixels
            bg = img[0, 0] if (img[0, 0] == img[0, -1]).all() else img[-1, -1]
            fg_fraction = (np.abs(img - bg).sum(axis=-1) > 30).mean()
            assert 0.02 < fg_fraction < 0.9, (CLASS_NAMES[label], seed, fg_fraction)


def test_make_batch_shapes_and_labels() -> None:
    images, labels = make_batch(range(25))
    assert images.shape == (25, 64, 64, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [i % NUM_CLASSES for i in range(25)]
    again, _ = make_batch(np.arange(25))
    assert again.tobytes() == images.tobytes()
    single, _ = make_batch([7])
    assert single[0].tobytes() == images[7].tobytes()


def test_splits_are_disjoint() -> None:
    n = 300
    hashes = {}
    for split in ("train", "heldout", "heldout2"):
        images, _ = make_batch(range(n), split)
        hashes[split] = {img.tobytes() for img in images}
        assert len(hashes[split]) == n  # no duplicates inside a split either
    assert not hashes["train"] & hashes["heldout"]
    assert not hashes["train"] & hashes["heldout2"]
    assert not hashes["heldout"] & hashes["heldout2"]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        render(0, NUM_CLASSES)
    with pytest.raises(ValueError):
        make_batch(range(3), "test")
    with pytest.raises(ValueError):
        shapes.split_seed(10**9, "train")


# --- Fréchet distance -----------------------------------------------------------------------------------


def _exact_gaussian_sample(n: int, mean: np.ndarray, var: np.ndarray, seed: int) -> np.ndarray:
    """Samples whose sample mean is exactly ``mean`` and sample covariance (ddof=1) exactly diag(var)."""
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((n, len(mean)))
    r -= r.mean(axis=0)
    chol = np.linalg.cholesky(np.cov(r, rowvar=False))
    z = np.linalg.solve(chol, r.T).T  # whitened: cov(z) == I
    return mean + z * np.sqrt(var)


def test_frechet_identical_sets_is_zero() -> None:
    x = np.random.default_rng(0).standard_normal((500, 16)) * 3 + 1
    assert abs(frechet_distance(x, x)) < 1e-6
    assert abs(frechet_distance(x, x[::-1].copy())) < 1e-6


def test_frechet_shifted_sets_positive_and_symmetric() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((400, 8))
    b = rng.standard_normal((400, 8)) * 1.5 + 0.7
    d_ab, d_ba = frechet_distance(a, b), frechet_distance(b, a)
    assert d_ab > 0.5
    assert d_ab == pytest.approx(d_ba, rel=1e-9, abs=1e-9)
    # a pure shift of the same set costs exactly |shift|^2
    assert frechet_distance(a, a + 0.5) == pytest.approx(8 * 0.25, rel=1e-9)


def test_frechet_matches_closed_form_for_diagonal_gaussians() -> None:
    mu_a, var_a = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 4.0, 0.25, 2.0])
    mu_b, var_b = np.array([1.0, 1.0, 0.0, 0.0]), np.array([9.0, 1.0, 0.25, 0.5])
    a = _exact_gaussian_sample(300, mu_a, var_a, seed=2)
    b = _exact_gaussian_sample(200, mu_b, var_b, seed=3)
    # For diagonal covariances sqrt(S_a S_b) = diag(sqrt(va vb)), so the trace term is sum (sqrt va - sqrt vb)^2.
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # The split: the means' shift and the spreads' difference, each in closed form.
    mean_term, spread_term = frechet_terms(a, b)
    assert mean_term == pytest.approx(np.sum((mu_a - mu_b) ** 2), rel=1e-9)
    assert spread_term == pytest.approx(np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2), rel=1e-9)


def test_per_class_fd_ratios_locate_the_class_that_differs() -> None:
    """Generated = real gives 1.0 for every class; moving one class's features shows up in that class
    only."""
    rng = np.random.default_rng(4)
    n_ref, n = 40 * NUM_CLASSES, 20 * NUM_CLASSES
    reference, reference_labels = rng.standard_normal((n_ref, 6)), np.arange(n_ref) % NUM_CLASSES
    real, real_labels = rng.standard_normal((n, 6)), np.arange(n) % NUM_CLASSES
    same = per_class_fd_ratios(real, real_labels, real, real_labels, reference, reference_labels)
    assert list(same) == list(CLASS_NAMES) and all(r == pytest.approx(1.0) for r in same.values())
    moved = real.copy()
    moved[real_labels == 3] += 2.0
    ratios = per_class_fd_ratios(moved, real_labels, real, real_labels, reference, reference_labels)
    assert ratios[CLASS_NAMES[3]] > 5.0
    assert all(r == pytest.approx(1.0) for name, r in ratios.items() if name != CLASS_NAMES[3])


def test_frechet_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((5, 4)), np.zeros((5, 3)))


# --- classifier -----------------------------------------------------------------------------------------


def test_classifier_shapes() -> None:
    torch.manual_seed(0)
    model = ShapeClassifier().eval()
    images, labels = make_batch(range(12))
    x = to_model_input(images)
    assert x.shape == (12, 3, 64, 64) and float(x.min()) >= -1 and float(x.max()) <= 1
    with torch.no_grad():
        assert model.features(x).shape == (12, model.config.feature_dim)
        assert model(x).shape == (12, NUM_CLASSES)
    feats, preds = classifier_features(model, images, batch_size=5)
    assert feats.shape == (12, model.config.feature_dim) and feats.dtype == np.float64
    assert preds.shape == (12,) and preds.dtype == np.int64


def test_classifier_trains_saves_and_loads(tmp_path) -> None:
    torch.set_num_threads(1)
    model, metrics = train_classifier(steps=3, batch_size=16, seed=0, progress=False, eval_images=20)
    assert np.isfinite(metrics["final_loss"]) and 0.0 <= metrics["heldout_accuracy"] <= 1.0
    save_classifier(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.json", "classifier.safetensors"]
    assert json.loads((tmp_path / "classifier.json").read_text())["num_classes"] == NUM_CLASSES
    loaded = load_classifier(tmp_path)
    images, labels = make_batch(range(20), "heldout")
    with torch.no_grad():
        torch.testing.assert_close(loaded(to_model_input(images)), model(to_model_input(images)))

    reference, _ = classifier_features(model, make_batch(range(40), "heldout2")[0])
    report = quality_report(loaded, images, labels, reference)
    assert report["n_images"] == 20
    assert 0.0 <= report["class_accuracy"] <= 1.0 and report["frechet_distance"] >= 0.0
    assert set(report["per_class_accuracy"]) == set(CLASS_NAMES)
