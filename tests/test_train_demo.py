"""`dartrt train-demo` end to end on the QUICK recipe (seconds): the package it writes loads, and the
tokenizer cache is reused only for a recipe it was made for."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from safetensors.numpy import load_file

from dar.checkpoint import load_checkpoint
from dar.demo.train import QUICK, train_demo


def test_quick_recipe_and_tokenizer_cache(tmp_path):
    cache = tmp_path / "cache"
    logs: list[str] = []
    first = train_demo(tmp_path / "a", QUICK, progress=False, log=logs.append, cache_dir=cache)
    assert not any("reusing" in line for line in logs)
    ckpt = load_checkpoint(tmp_path / "a")  # a loadable checkpoint: DAR, VQ decoder, config
    assert ckpt.config.name == "DAR-demo"
    assert json.loads((tmp_path / "a" / "train_log.json").read_text())["timings_seconds"]["dar"] > 0
    (entry,) = cache.iterdir()
    assert {p.name for p in entry.iterdir()} == {"vq_full.safetensors", "tokens.npz", "done.json"}

    logs.clear()
    second = train_demo(tmp_path / "b", QUICK, progress=False, log=logs.append, cache_dir=cache,
                        reuse_classifier=False)
    assert any("reusing" in line for line in logs)
    assert second["vq"] == first["vq"] and second["timings_seconds"]["vq"] == first["timings_seconds"]["vq"]
    # Same seeded DAR on the same cached tokens: the same weights.
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("a", "b"))
    assert all(np.array_equal(a[k], b[k]) for k in a)

    logs.clear()
    other = dataclasses.replace(QUICK, train_images=QUICK.train_images + 10)
    train_demo(tmp_path / "c", other, progress=False, log=logs.append, cache_dir=cache, reuse_classifier=True)
    assert not any("reusing" in line for line in logs) and len(list(cache.iterdir())) == 2
