"""The D-AR demo's quality, by the DAR demo's judge and protocol (`dartrt.dar.demo.evaluate`), plus previews.

Final images: class accuracy and the Fréchet distance on the judge's features (as a ratio to real held-out
images), at CFG 1.0 and the model's default, ``n_per_class`` images per class. Then the same two figures for
the preview after each group (coarse to fine: group k's preview is what a viewer sees once k of the G groups
of tokens exist). And the tokenizer's own ceiling: held-out real images encoded and decoded, with the same
figures per group, and the reconstruction PSNR.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from dartrt.runtime.d_ar import DARBackend, decode_result, generate_result
from dartrt.runtime.metrics import psnr_uint8

from ...demo.classifier import load_classifier
from ...demo.evaluate import REFERENCE_IMAGES, evaluate_backend
from ...demo.metrics import classifier_features, frechet_terms, reference_features
from ...demo.shapes import NUM_CLASSES, make_batch
from ...demo.train_vq import images_to_tensor
from .encoder import DemoTokens


def _judge(classifier, images: np.ndarray, labels: np.ndarray, reference: np.ndarray, real_fd: float) -> dict:
    feats, pred = classifier_features(classifier, images)
    fd = max(sum(frechet_terms(feats, reference)), 0.0)
    return {"class_accuracy": round(float((pred == labels).mean()), 4),
            "fd_ratio_to_real": round(fd / real_fd, 3) if real_fd > 0 else None}


def _by_group(classifier, previews: np.ndarray, labels: np.ndarray, reference: np.ndarray, real_fd: float) -> list:
    return [{"group": k + 1, **_judge(classifier, p, labels, reference, real_fd)} for k, p in enumerate(previews)]


def evaluate_d_ar(engine: DARBackend, classifier_dir: str | Path, n_per_class: int = 50,
                  cfgs: tuple[float, ...] | None = None, seed: int = 0, batch_size: int = 50, progress=None,
                  tokens: DemoTokens | None = None) -> dict:
    """The DAR demo's report for the D-AR demo, each CFG row with ``preview_by_group``; with ``tokens``, also
    ``reconstruction`` given the demo's token source (the decoder's ceiling on real held-out images)."""
    kept: dict[str, np.ndarray] = {}

    def images_fn(backend, n, cfg, seed_, batch, on_step):
        res = generate_result(backend, list(range(NUM_CLASSES)), n_per_class=n, cfg=cfg, seed=seed_,
                              batch_size=batch, previews=True, output="uint8", on_step=on_step)
        kept[f"{cfg:g}"] = np.stack(res.previews)
        return res.images, np.asarray(res.class_ids)

    report = evaluate_backend(engine, classifier_dir, n_per_class, cfgs, seed, batch_size, progress, images_fn)
    classifier = load_classifier(classifier_dir)
    reference = reference_features(classifier, REFERENCE_IMAGES, "heldout2")
    real_fd = report["real_heldout_frechet_distance"]
    labels = np.repeat(np.arange(NUM_CLASSES), n_per_class)
    for cfg, row in report["by_cfg"].items():
        row["preview_by_group"] = _by_group(classifier, kept[cfg], labels, reference, real_fd)
    report["preview_rule"] = ("the preview after group k is D-AR's clip_steps=k image; the last group's is the "
                              "final image")
    if tokens is not None:
        report["reconstruction"] = evaluate_reconstruction(engine, tokens, classifier, reference, real_fd,
                                                           n_per_class, seed, batch_size)
    return report


@torch.no_grad()
def evaluate_reconstruction(engine: DARBackend, tokens: DemoTokens, classifier, reference: np.ndarray,
                            real_fd: float, n_per_class: int = 50, seed: int = 0, batch_size: int = 50) -> dict:
    """Held-out real images → their tokens → the package's decoder: the decoder's ceiling."""
    start = time.perf_counter()
    images, labels = make_batch(range(n_per_class * NUM_CLASSES), "heldout")
    ids = tokens.encode_ids(images_to_tensor(images)).numpy()
    res = decode_result(engine, ids, seed=seed, previews=True, output="uint8", batch_size=batch_size)
    out = {"images": len(images), "psnr_db": round(psnr_uint8(res.images, images), 2),
           **_judge(classifier, res.images, labels, reference, real_fd),
           "codes_used": int(np.unique(ids).size),
           "preview_by_group": _by_group(classifier, np.stack(res.previews), labels, reference, real_fd),
           "seconds": round(time.perf_counter() - start, 1)}
    return out
