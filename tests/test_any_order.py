"""Any-order training and OAR's order extraction (docs/oar.md): per-sequence order tables equal the
runtime's, the default recipe's path is untouched, the extraction's candidate scoring equals a full causal
pass along the chosen order and picks the most confident free cell, the fine-tune trains on given orders."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from dartrt.dar.config import get_preset
from dartrt.dar.demo.oar import extract_orders, order_nll
from dartrt.dar.demo.train_dar import TrainDAROptions, order_tables, train_dar
from dartrt.dar.model import build_model
from dartrt.runtime.orders import direction_ids, make_order, positions_table


def _tiny(grid: int = 4, seed: int = 0):
    cfg = dataclasses.replace(get_preset("tiny-dar"), grid_size=grid, vocab_size=32, any_order=True)
    model = build_model(cfg, seed=seed)
    with torch.no_grad():  # AdaLN is zero-initialised for training; random here, so every path matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _grids(n: int, grid: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (n, grid, grid)), rng.integers(0, 10, n)


def test_order_tables_equal_the_runtime_tables_for_any_permutation():
    g = 16
    rng = np.random.default_rng(0)
    orders = [make_order("diagonal", g), make_order("raster", g)] + [
        np.stack(np.divmod(rng.permutation(g * g), g), axis=1) for _ in range(6)]
    cells = torch.from_numpy(np.stack([o[:, 0] * g + o[:, 1] for o in orders]))
    pos, dirs = order_tables(cells, g)
    for i, order in enumerate(orders):
        assert np.array_equal(pos[i].numpy(), positions_table(order, g, "4d"))
        assert np.array_equal(dirs[i].numpy(), direction_ids(order))


def test_random_order_share_zero_keeps_the_native_path_and_one_trains_random_orders():
    model_cfg = dataclasses.replace(get_preset("tiny-dar"), vocab_size=32)
    grids, labels = _grids(16, 8, 32)
    codebook = torch.randn(32, model_cfg.codebook_dim)
    opts = TrainDAROptions(steps=3, batch_size=4, warmup=1, bf16=False)
    _, native = train_dar(model_cfg, codebook, grids, labels, opts, progress=False)
    assert "random_order_share" not in native  # the demo recipe's log is unchanged
    _, mixed = train_dar(model_cfg, codebook, grids, labels, dataclasses.replace(opts, random_order_share=1.0),
                         progress=False)
    assert mixed["random_order_share"] == 1.0 and "final_loss_random_order" in mixed
    assert "final_loss_given_order" not in mixed
    with pytest.raises(ValueError, match="random_order_share"):
        train_dar(model_cfg, codebook, grids, labels, dataclasses.replace(opts, random_order_share=1.5),
                  progress=False)


def test_given_orders_must_be_permutations():
    model_cfg = dataclasses.replace(get_preset("tiny-dar"), vocab_size=32)
    grids, labels = _grids(4, 8, 32)
    bad = np.zeros((4, 64), dtype=np.int64)
    with pytest.raises(ValueError, match="permutation"):
        train_dar(model_cfg, torch.randn(32, 8), grids, labels, TrainDAROptions(steps=1, batch_size=2),
                  progress=False, orders=bad)


@pytest.mark.parametrize("rule", ["confidence", "likelihood"])
def test_extraction_equals_a_full_pass_along_its_order(rule):
    """The NLL the extraction records at each chosen cell (its candidate query over the committed cache)
    equals the teacher-forced full causal pass along the extracted order."""
    model = _tiny(grid=6)
    grids, labels = _grids(5, 6, 32, seed=1)
    orders, stats = extract_orders(model, grids, labels, rule=rule, batch_size=3)
    assert orders.shape == (5, 36)
    assert all(np.array_equal(np.sort(o), np.arange(36)) for o in orders)
    assert stats["nll_along_order"] == pytest.approx(order_nll(model, grids, labels, orders), abs=2e-4)


def test_extraction_picks_the_most_confident_free_cell():
    """Brute force on a 4x4 grid: at every step, each free cell's confidence from a full pass whose next
    cell is that one; the extracted order takes the argmax."""
    model = _tiny(grid=4, seed=3)
    grids, labels = _grids(2, 4, 32, seed=2)
    orders, _ = extract_orders(model, grids, labels, rule="confidence")
    g, n = 4, 16
    for img in range(2):
        order = orders[img]
        flat = torch.from_numpy(grids[img].reshape(-1))
        for t in range(n - 1):
            free = [c for c in range(n) if c not in order[:t]]
            conf = []
            for cell in free:
                rest = [c for c in free if c != cell]
                cells = torch.tensor([list(order[:t]) + [cell] + rest])
                pos, dirs = order_tables(cells, g)
                tok = flat[cells[0]][None]
                with torch.no_grad():
                    logits = model.forward_full(torch.tensor([int(labels[img])]), tok[:, :-1], pos, dirs)
                conf.append(float(torch.softmax(logits[0, t], -1).max()))
            assert free[int(np.argmax(conf))] == order[t], (img, t)


def test_extraction_stops_at_its_deadline_between_batches():
    model = _tiny(grid=4)
    grids, labels = _grids(6, 4, 32)
    orders, stats = extract_orders(model, grids, labels, batch_size=2, deadline=0.0)
    assert len(orders) == 2 and stats["images"] == 2  # the first batch always runs


def test_per_image_orders_reproduce_the_fixed_order_loop_and_random_orders_differ():
    """`generate_in_orders` with every image on the raster order gives eval-demo's raster images bit for bit
    (same Gumbel generators); per-image random orders give other images."""
    from dartrt.dar.checkpoint import random_checkpoint
    from dartrt.dar.demo.order_eval import generate_in_orders, random_orders
    from dartrt.dar.torch_backend import TorchBackend
    from dartrt.runtime.pipeline import generate_with_backend

    backend = TorchBackend(random_checkpoint("tiny-dar"))
    g = backend.info.grid_size
    raster = np.broadcast_to(make_order("raster", g), (20, g * g, 2))
    mine, labels = generate_in_orders(backend, raster, n_per_class=2, cfg=1.5, seed=3, batch_size=6)
    ref = generate_with_backend(backend, list(range(10)), n_per_class=2, cfg=1.5, order="raster", seed=3,
                                batch_size=6)
    assert np.array_equal(mine, np.stack([np.asarray(im) for im in ref.images]))
    assert list(labels) == list(ref.class_ids)
    orders = random_orders(3, 20, g)
    assert all(np.array_equal(np.sort(o[:, 0] * g + o[:, 1]), np.arange(g * g)) for o in orders)
    assert not np.array_equal(orders[0], orders[1])
    other, _ = generate_in_orders(backend, orders, n_per_class=2, cfg=1.5, seed=3, batch_size=6)
    assert not np.array_equal(other, mine)


def test_anyorder_command_then_oar_finetune_quick(tmp_path):
    """`dartrt train-demo --any-order` and `dartrt oar-finetune` end to end on their QUICK recipes: the demo's
    judge and VQ decoder are copied, the encoder file loads as the checkpoint's VQ encoder, the config says
    any_order, and the fine-tune writes its orders and its log."""
    from dartrt.dar.checkpoint import BUNDLED, load_checkpoint, read_tensors
    from dartrt.dar.demo import anyorder, oar

    out = tmp_path / "anyorder"
    report = anyorder.train_anyorder_demo(out, BUNDLED, anyorder.QUICK, progress=False, log=lambda *a: None,
                                          cache_dir=tmp_path / "cache")
    (cached,) = (tmp_path / "cache").iterdir()  # the encoder and the token grids, for a rerun
    tokens = np.load(cached / "tokens.npz")
    assert tokens["grids"].shape == (anyorder.QUICK.train_images, 16, 16) and (cached / "done.json").is_file()
    ckpt = load_checkpoint(out)
    assert ckpt.config.any_order and ckpt.config.name == "DAR-demo-anyorder"
    assert ckpt.vq_encoder is not None
    stored = read_tensors(out / "model.safetensors")  # stored in float16, loaded as the model's float32
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())
    assert (out / "vq.safetensors").read_bytes() == (BUNDLED / "vq.safetensors").read_bytes()
    assert (out / "classifier.safetensors").read_bytes() == (BUNDLED / "classifier.safetensors").read_bytes()
    assert report["dar"][0]["random_order_share"] == 0.5 and report["cpu"]["model"]
    assert anyorder.anyorder_recipe_from_dict(json.loads((out / "train_log.json").read_text())["recipe"]) \
        == anyorder.QUICK

    tuned = tmp_path / "oar"
    log = oar.oar_finetune(out, tuned, oar.QUICK, progress=False, log=lambda *a: None)
    orders = np.load(tuned / "oar_orders.npz")["orders"]
    assert orders.shape == (oar.QUICK.images, 256) and log["extraction"]["images"] == oar.QUICK.images
    assert log["finetune"]["given_orders"] == "per image"
    assert load_checkpoint(tuned).config.any_order


def test_oar_finetune_refuses_a_model_not_trained_for_any_order(tmp_path):
    from dartrt.dar.checkpoint import BUNDLED
    from dartrt.dar.demo import oar
    from dartrt.runtime.errors import DartrtError

    with pytest.raises(DartrtError, match="any order"):
        oar.oar_finetune(BUNDLED, tmp_path / "x", oar.QUICK, progress=False, log=lambda *a: None)


# ---- the shipped any-order demo (models/demo-anyorder) --------------------------------------------------
def test_shipped_anyorder_demo_is_small_documented_and_chooses_its_order():
    from dartrt.dar.checkpoint import load_checkpoint
    from dartrt.dar.torch_backend import TorchBackend
    from dartrt.models import DEMO_ANYORDER
    from dartrt.runtime.adaptive import generate_adaptive

    size = sum(p.stat().st_size for p in DEMO_ANYORDER.iterdir() if p.is_file())
    assert size <= 20 * 2**20 and max(p.stat().st_size for p in DEMO_ANYORDER.iterdir()) <= 5 * 2**20, size
    metrics = json.loads((DEMO_ANYORDER / "metrics.json").read_text())
    for order in ("diagonal", "raster", "random", "adaptive", "after-oar-adaptive", "after-oar-random"):
        seeds = metrics["by_order"][order]["seeds"]
        assert sorted(seeds) == ["0", "1", "2"] and all(0 <= r["class_accuracy"] <= 1 for r in seeds.values())
    log = json.loads((DEMO_ANYORDER / "train_log.json").read_text())
    assert log["timings_seconds"]["total"] <= 45 * 60 + 60 and log["dar"][0]["random_order_share"] == 0.5

    torch.set_num_threads(1)
    ckpt = load_checkpoint(DEMO_ANYORDER)
    assert ckpt.config.any_order and ckpt.config.name == "DAR-demo-anyorder"
    result = generate_adaptive(TorchBackend(ckpt), [3], seed=0, candidates=8, cells_per_step=4, decode=False)
    order = result.orders[0]
    assert sorted(map(tuple, order.tolist())) == [(r, c) for r in range(16) for c in range(16)]  # every cell once
