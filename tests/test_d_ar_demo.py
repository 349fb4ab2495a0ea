"""The D-AR demo recipe (`dartrt train-demo-dar`) in its --quick form: it trains, saves a pair that loads,
and generates with previews (docs/d-ar.md has the full run, which missed its quality target and is
not shipped)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def quick_pair(tmp_path_factory):
    from dartrt.dar.d_ar.demo.train import QUICK, train_demo_dar

    folder = tmp_path_factory.mktemp("d_ar_demo") / "demo"
    report = train_demo_dar(folder, QUICK, progress=False, log=lambda *a: None)
    return folder, report


def test_quick_recipe_trains_and_saves_a_loadable_pair(quick_pair):
    from dartrt.dar.d_ar.checkpoint import load_d_ar_checkpoint
    from dartrt.dar.d_ar.demo.train import load_encoder

    folder, report = quick_pair
    ckpt = load_d_ar_checkpoint(folder)
    assert ckpt.model.cfg.vocab_size == ckpt.tokenizer.cfg.codebook_size == 512
    assert ckpt.model.cfg.seq_len == ckpt.tokenizer.cfg.num_tokens == 64
    assert load_encoder(folder, ckpt.tokenizer.cfg).cfg.dim == 128
    assert report["tokenizer"]["steps"] == 6 and report["gpt"]["steps"] == 4


def test_quick_pair_generates_with_previews(quick_pair):
    from dartrt.dar.d_ar.checkpoint import load_d_ar_checkpoint
    from dartrt.dar.d_ar.torch_backend import torch_d_ar_backend
    from dartrt.runtime import d_ar

    folder, _ = quick_pair
    engine = torch_d_ar_backend(load_d_ar_checkpoint(folder))
    res = d_ar.generate_result(engine, [4], seed=0, output="uint8", previews=True)
    assert res.images.shape == (1, 64, 64, 3) and res.tokens.shape == (1, 64)
    assert len(res.previews) == 8 and np.array_equal(res.previews[-1], res.images)

