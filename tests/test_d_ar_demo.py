"""The D-AR demo recipe (`dartrt train-demo-dar`) in its --quick form: it trains, saves a pair that loads,
and generates with previews; and the dither order of its tokens (the bundled model's figures are checked in
tests/test_bundled_d_ar_demo.py)."""

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
    from dartrt.dar.d_ar.demo.encoder import load_demo_tokens
    from dartrt.dar.demo.anyorder import load_tokenizer
    from dartrt.models import DEMO_ANYORDER

    folder, report = quick_pair
    ckpt = load_d_ar_checkpoint(folder)
    assert ckpt.model.cfg.vocab_size == ckpt.tokenizer.cfg.codebook_size == 512
    assert ckpt.model.cfg.seq_len == ckpt.tokenizer.cfg.num_tokens == 256
    assert report["decoder"]["steps"] == 6 and report["gpt"]["steps"] == 4
    assert report["decoder"]["trajectories_from_step"] == 3  # QUICK: trajectories from half the run
    # The codebook is the VQ's, frozen through training (stored in float16).
    tokens = load_demo_tokens(folder)
    assert torch.allclose(ckpt.tokenizer.quantize.embedding.weight, tokens.codebook, atol=1e-3)
    # The saved token source gives the any-order demo's codes, in dither order.
    from dartrt.dar.demo.shapes import make_batch
    from dartrt.dar.demo.train_vq import images_to_tensor

    x = images_to_tensor(make_batch(range(3), "heldout")[0])
    ids = tokens.encode_ids(x).numpy()
    grids = load_tokenizer(DEMO_ANYORDER).encode_to_indices(x).numpy()
    assert np.array_equal(tokens.grid_of(ids), grids)


def test_quick_pair_generates_with_previews(quick_pair):
    from dartrt.dar.d_ar.checkpoint import load_d_ar_checkpoint
    from dartrt.dar.d_ar.torch_backend import torch_d_ar_backend
    from dartrt.runtime import d_ar

    folder, _ = quick_pair
    engine = torch_d_ar_backend(load_d_ar_checkpoint(folder))
    res = d_ar.generate_result(engine, [4], seed=0, output="uint8", previews=True)
    assert res.images.shape == (1, 64, 64, 3) and res.tokens.shape == (1, 256)
    assert len(res.previews) == 8 and np.array_equal(res.previews[-1], res.images)


def test_dither_order_groups_go_coarse_to_fine():
    """Every cell once; group 1 spreads over the whole grid (one cell in each 4×4 block's two ranks), and each
    group's cells are as far apart as in the groups after it (ordered dithering)."""
    from dartrt.dar.d_ar.demo.encoder import dither_order

    order = dither_order(16)
    assert sorted(order.tolist()) == list(range(256))
    rows, cols = np.divmod(order, 16)
    first = order[:32]
    assert len({(r // 4, c // 4) for r, c in zip(*np.divmod(first, 16))}) == 16  # every 4×4 block
    spacing = []
    for g in range(8):
        seen = np.stack([rows[: 32 * (g + 1)], cols[: 32 * (g + 1)]], 1)
        d = np.abs(seen[:, None] - seen[None]).sum(-1) + np.eye(len(seen), dtype=int) * 99
        spacing.append(d.min())
    assert spacing == sorted(spacing, reverse=True) and spacing[0] >= 2 and spacing[-1] == 1
