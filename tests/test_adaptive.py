"""The adaptive order (OAR) on the torch reference: candidate scoring, the commit, the shared loop.

A random-weight model is nearly uniform: its candidates' confidences differ by ~1e-8, below float noise,
so which cell wins would depend on the batch's rounding. `sharpened` scales its attention and head up
(confidence gaps of 2.5e-5 and more), which makes the choice a property of the model, as it is for a
trained one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dartrt.dar.checkpoint import random_checkpoint  # noqa: E402
from dartrt.dar.torch_backend import TorchBackend  # noqa: E402
from dartrt.runtime.adaptive import AdaptiveSettings, fixed_settings, generate_adaptive, sample_adaptive  # noqa: E402
from dartrt.runtime.candidates import NO_CELL, CandidateSet, candidate_inputs, confidence, jump_direction  # noqa: E402
from dartrt.runtime.contract import StepTables  # noqa: E402
from dartrt.runtime.editing import Edit, mask_cells  # noqa: E402
from dartrt.runtime.errors import DartrtError  # noqa: E402
from dartrt.runtime.orders import direction_ids, make_order  # noqa: E402
from dartrt.runtime.scheduler import build_request, sample_tokens  # noqa: E402

STEP_ATOL = 1e-5  # fp32 torch against itself on other shapes (the step rule's atol is 1e-4)


def sharpened(preset: str = "tiny-dar", any_order: bool = True):
    """``preset`` with random weights, its attention logits x8 and head x30, marked any-order."""
    ckpt = random_checkpoint(preset)
    with torch.no_grad():
        for layer in ckpt.model.layers:
            layer.attention.wqkv.weight.mul_(8)
        ckpt.model.output.weight.mul_(30)
    ckpt.model.cfg = dataclasses.replace(ckpt.model.cfg, any_order=any_order)
    return ckpt


@pytest.fixture(scope="module")
def backend():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TorchBackend(sharpened())
    torch.set_num_threads(threads)


def test_direction_of_any_jump_matches_the_order_definition():
    g = 8
    order = make_order(np.random.default_rng(0).permutation(g * g), g)
    flat = order[:, 0] * g + order[:, 1]
    want = direction_ids(order)
    got = jump_direction(np.concatenate([[NO_CELL], flat[:-1]]), flat, g)
    assert np.array_equal(got, want)


def test_candidate_rows_equal_a_step_with_that_next_cell(backend):
    """Each candidate's logits and K/V row are what a decode step with that next cell gives (fp32)."""
    g = backend.info.grid_size
    tables = StepTables.of(make_order("raster", g), g, "4d")
    tokens = np.array([[3, 9, 4, 1, 8], [5, 5, 2, 0, 7]])
    backend.prefill(np.array([2, 7]), *tables.at(0, 2))
    backend.step(tokens[:, :4], *tables.at(1, 2, 4), 1)
    caches = [(k.clone(), v.clone()) for k, v in backend.caches]
    cand = np.array([[9, 30, 63], [12, 40, 50]])
    pos, dirs = candidate_inputs(np.array([4, 4]), cand, g)
    logits = backend.score_candidates(tokens[:, 4:5], pos, dirs, 5)
    rows = backend._candidates
    for c in range(3):
        backend.caches = [(k.clone(), v.clone()) for k, v in caches]
        want = backend.step(tokens[:, 4:5], pos[:, c:c + 1], dirs[:, c:c + 1], 5)
        assert np.abs(logits[:, c] - want).max() <= STEP_ATOL
        for layer, (k, _) in enumerate(backend.caches):
            assert torch.allclose(rows[layer][0][:, :, c], k[:, :, 5], atol=STEP_ATOL)
    backend.caches = [(k.clone(), v.clone()) for k, v in caches]
    backend.commit(np.array([2, 0]), 5)  # row 0 takes candidate 2 (cell 63), row 1 candidate 0 (cell 12)
    for layer, (k, v) in enumerate(backend.caches):
        assert torch.equal(k[0, :, 5], rows[layer][0][0, :, 2]) and torch.equal(v[1, :, 5], rows[layer][1][1, :, 0])
        assert torch.equal(k[:, :, :5], caches[layer][0][:, :, :5])  # nothing else written


def test_class_token_logits_do_not_depend_on_the_first_cell(backend):
    """Why the first step is not scored: with only itself to attend to, the class token's output is the
    same for every candidate first cell, bit for bit."""
    model, g = backend.model, backend.info.grid_size
    cells = np.arange(g * g)[None].repeat(2, 0)
    pos, dirs = candidate_inputs(np.full(2, NO_CELL), cells, g)
    with torch.no_grad():
        class_ids = torch.tensor([[1], [4]])
        logits, rows = model.forward_candidates(model.cls_embedding(class_ids), torch.from_numpy(pos),
                                                torch.from_numpy(dirs), None, None,
                                                model.modulation_table(class_ids[:, 0]))
    assert torch.equal(logits, logits[:, :1].expand_as(logits))
    assert not torch.equal(rows[0][0][:, :, 0], rows[0][0][:, :, 1])  # but its keys do depend on it


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_fixed_order_through_the_candidate_path_equals_the_fixed_loop(backend, temperature):
    """One candidate per step (a fixed order) goes through scoring and commit; the tokens are those of the
    fixed-order loop: the candidate graph with C = 1 computes a decode step."""
    for order in ("diagonal", "raster"):
        req = build_request(backend, [1, 3, 5], cfg=2.0, order=order, seed=3, temperature=temperature, batch_size=2)
        want = sample_tokens(backend, req)
        got = sample_adaptive(backend, req, fixed_settings(backend, order))
        cells = make_order(order, 8)
        assert np.array_equal(got.tokens, want)
        assert np.array_equal(got.orders(8)[0], cells)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_same_seed_same_images_and_orders_at_every_batch_size(backend, temperature):
    runs = [generate_adaptive(backend, [1, 2, 3], seed=1, batch_size=size, cfg=2.0, temperature=temperature,
                              decode=False) for size in (1, 3)]
    assert np.array_equal(runs[0].grids, runs[1].grids)
    assert np.array_equal(runs[0].orders, runs[1].orders)
    for order in runs[0].orders:  # each is a permutation of the cells, starting at the lowest cell
        assert make_order(order, 8) is not None and tuple(order[0]) == (0, 0)
    assert not np.array_equal(runs[0].orders[0], make_order("raster", 8))


def test_orders_replay_as_fixed_orders(backend):
    """An image's chosen order, replayed as a fixed order with the same seed, gives the same tokens: the
    adaptive loop wrote the same sequence a fixed walk of that order would."""
    res = generate_adaptive(backend, [4], seed=2, cfg=1.0, temperature=0.0, decode=False)
    req = build_request(backend, [4], cfg=1.0, order=res.orders[0], seed=2, temperature=0.0)
    assert np.array_equal(sample_tokens(backend, req)[0], res.tokens[0])


def test_confidence_kinds_and_ties():
    logits = np.log(np.array([[[0.5, 0.5, 0.0 + 1e-12], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05]]]))
    prob, ent = confidence(logits, "max-prob"), confidence(logits, "neg-entropy")
    assert np.allclose(prob, [[0.5, 0.9, 0.9]])
    assert ent[0, 1] > ent[0, 0] and ent[0, 1] == ent[0, 2]
    from dartrt.runtime.candidates import rank_candidates

    assert rank_candidates(prob)[0, 0] == 1  # a tie goes to the lowest index


def test_pruning_keeps_the_nearest_free_cells():
    chooser = CandidateSet(1, 8, limit=3)
    chooser.paint(np.array([27]))  # (3, 3)
    got = chooser.cells()[0]
    assert got.tolist() == [18, 19, 20]  # the distance-1 ring, by distance to the last cell, then index
    chooser.paint(np.array([36]))  # (4, 4): of the cells next to the painted ones, those next to (4, 4)
    assert chooser.cells()[0].tolist() == [28, 29, 35]


def test_pruned_and_multi_cell_runs(backend):
    full = generate_adaptive(backend, [1, 2], seed=0, cfg=1.0, decode=False)
    pruned = generate_adaptive(backend, [1, 2], seed=0, cfg=1.0, candidates=4, decode=False)
    multi = generate_adaptive(backend, [1, 2], seed=0, cfg=1.0, cells_per_step=4, decode=False)
    grow = generate_adaptive(backend, [1, 2], seed=0, cfg=1.0, cells_per_step=4, cells_schedule="linear",
                             decode=False)
    assert full.steps == 64 and pruned.steps == 64
    assert multi.steps == 1 + 63 // 4 + (63 % 4 > 0) and full.steps > grow.steps > multi.steps
    for res in (pruned, multi, grow):
        for order in res.orders:
            make_order(order, 8)  # a permutation of the cells
    # pruned: after the first cell, every cell painted touches the painted region (4 nearest candidates)
    cells = pruned.orders[0]
    for t in range(1, 64):
        assert np.abs(cells[:t] - cells[t]).max(axis=1).min() == 1


def test_editing_keeps_known_tokens(backend):
    g = 8
    known = np.random.default_rng(0).integers(0, 512, (g, g))
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:20, 4:28] = 255  # white = generate
    keep = mask_cells(mask, 32, g)
    edit = Edit(keep, known)
    for order in (None, "raster"):
        settings = AdaptiveSettings() if order is None else fixed_settings(backend, order)
        req = build_request(backend, [3, 3], seed=0, cfg=2.0)
        res = sample_adaptive(backend, req, settings, edit=edit)
        grids = res.grids(g)
        assert np.array_equal(grids[:, keep], np.broadcast_to(known[keep], grids[:, keep].shape))
        assert (~keep).sum() == 3 * 6 and not np.array_equal(grids[0][~keep], known[~keep])


def test_untrained_and_2d_models_are_refused():
    plain = TorchBackend(sharpened(any_order=False))
    with pytest.raises(DartrtError, match="not trained for any order"):
        generate_adaptive(plain, [1])
    assert generate_adaptive(plain, [1], allow_untrained=True, decode=False).grids.shape == (1, 8, 8)
    with pytest.raises(DartrtError, match="4D RoPE"):
        generate_adaptive(TorchBackend(random_checkpoint("tiny-llamagen")), [1], allow_untrained=True)
