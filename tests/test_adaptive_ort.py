"""The adaptive order and editing on onnxruntime against the torch reference.

The package is the sharpened any-order tiny DAR of tests/test_adaptive.py (confidence gaps above float
noise), with a random VQ encoder, exported once per module with the export's own onnxruntime checks on:
those checks are the graph parity (candidates, commit and vq_encoder against eager torch under the step
rule, recorded in the manifest). Here: the candidate graph on its own under the same rule, the commit
in place, whole generations token for token and order for order, greedy and sampled, pruned and several
cells per step, editing, and a run with torch blocked.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from test_adaptive import sharpened  # noqa: E402
from torch_blocker import BLOCK_TORCH  # noqa: E402

from dartrt import runtime  # noqa: E402
from dartrt.dar.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from dartrt.dar.torch_backend import TorchBackend  # noqa: E402
from dartrt.dar.vq import VQEncoder  # noqa: E402
from dartrt.runtime.adaptive import generate_adaptive  # noqa: E402
from dartrt.runtime.candidates import candidate_inputs  # noqa: E402
from dartrt.runtime.contract import CANDIDATES, COMMIT, VQ_ENCODER, StepTables  # noqa: E402
from dartrt.runtime.errors import DartrtError  # noqa: E402
from dartrt.runtime.manifest import Manifest  # noqa: E402
from dartrt.runtime.metrics import FP32_STEP, psnr_uint8  # noqa: E402
from dartrt.runtime.orders import make_order  # noqa: E402
from dartrt.runtime.package import open_package_backend  # noqa: E402

MIN_PSNR_DB = 60.0  # verify's image rung: the two VQ decoders on the same grids


@pytest.fixture(scope="module")
def anyorder(tmp_path_factory):
    """(checkpoint folder, package folder) of the sharpened any-order tiny DAR with a VQ encoder."""
    from dartrt.exporter import export_package

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("anyorder")
        ckpt = sharpened()
        torch.manual_seed(5)
        encoder = VQEncoder(ckpt.vq.config, quantize=ckpt.vq.quantize).eval()
        save_checkpoint(root / "ck", ckpt.model, ckpt.vq, ckpt.image_size, encoder)
        export_package(load_checkpoint(root / "ck"), root / "pkg", log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    return root / "ck", root / "pkg"


@pytest.fixture(scope="module")
def pair(anyorder):
    torch.set_num_threads(1)
    ck, pkg = anyorder
    return TorchBackend(load_checkpoint(ck)), open_package_backend(pkg, "onnxruntime-cpu", intra_op_threads=1)


def test_manifest_records_the_checked_graphs(anyorder):
    data = Manifest.load(anyorder[1]).data
    assert data["model"]["any_order"] is True
    for graph in (CANDIDATES, COMMIT, VQ_ENCODER):
        check = data["export_check"][graph]
        assert graph in data["graphs"] and check["checked"] and check["worst_ratio"] <= 1.0
    names = [i["name"] for i in data["graphs"][CANDIDATES]["inputs"]]
    assert names[:4] == ["input_ids", "positions", "direction", "write_index"]
    assert data["graphs"][CANDIDATES]["outputs"][1]["shape"] == ["batch", 4, "candidates", 16]


def test_candidate_graph_meets_the_step_rule(pair):
    """Same prefix on both sides, then one scoring call: logits [R, C, V] and, through the commit, the row
    written, each within atol 1e-4 + rtol 1e-5 x max|ref|."""
    ref, ort_b = pair
    g = 8
    tables = StepTables.of(make_order("diagonal", g), g, "4d")
    tokens = np.array([[3, 9, 4, 1], [5, 5, 2, 0], [7, 1, 1, 2]])
    cand = np.array([[8, 12, 30, 40, 63], [12, 40, 50, 51, 52], [2, 3, 4, 5, 6]])
    pos, dirs = candidate_inputs(np.array([1, 1, 1]) * 9, cand, g)  # diagonal's 4th cell is (1, 1) = 9
    out = {}
    for side in (ref, ort_b):
        side.prefill(np.array([2, 7, 10]), *tables.at(0, 3))
        side.step(tokens[:, :3], *tables.at(1, 3, 3), 1)
        out[side.name] = side.score_candidates(tokens[:, 3:4], pos, dirs, 4)
        side.commit(np.array([4, 0, 2]), 4)
    assert out["torch"].shape == (3, 5, 512)
    assert FP32_STEP.judge(out["torch"], out[ort_b.name]).ok
    for layer in range(2):
        want = ref.cache_feed(fill=5)
        k_ort, v_ort = ort_b.cache_arrays(layer)
        assert FP32_STEP.judge(want[f"past_key_values.{layer}.key"], k_ort[:, :, :5]).ok
        assert FP32_STEP.judge(want[f"past_key_values.{layer}.value"], v_ort[:, :, :5]).ok


def test_commit_writes_one_row_in_place(pair):
    _, ort_b = pair
    g = 8
    tables = StepTables.of(make_order("raster", g), g, "4d")
    ort_b.prefill(np.array([1, 2]), *tables.at(0, 2))
    before = [ort_b._caches[i].data_ptr() for i in range(4)]
    k0, _ = ort_b.cache_arrays(0)
    pos, dirs = candidate_inputs(np.array([0, 0]), np.array([[1, 8, 9], [1, 8, 9]]), g)
    ort_b.score_candidates(np.array([[4], [6]]), pos, dirs, 1)
    rows = ort_b._candidate_graphs._rows[0].numpy()
    ort_b.commit(np.array([1, 2]), 1)
    k1, _ = ort_b.cache_arrays(0)
    assert [ort_b._caches[i].data_ptr() for i in range(4)] == before  # the same buffers
    assert np.array_equal(k1[0, :, 1], rows[0, :, 1]) and np.array_equal(k1[1, :, 1], rows[1, :, 2])
    assert np.array_equal(np.delete(k1, 1, axis=2), np.delete(k0, 1, axis=2))  # nothing else changed


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=1.0, top_k=50),
                                      dict(candidates=6, confidence="neg-entropy"),
                                      dict(cells_per_step=3, cells_schedule="linear")], ids=str)
def test_adaptive_generation_equals_the_reference(pair, settings):
    """Token for token, cell for cell, image for image (the image rung's 60 dB: two VQ decoders)."""
    ref, ort_b = pair
    want = generate_adaptive(ref, [1, 2, 3], seed=4, batch_size=3, cfg=2.0, **settings)
    got = generate_adaptive(ort_b, [1, 2, 3], seed=4, batch_size=2, cfg=2.0, **settings)
    assert np.array_equal(got.grids, want.grids) and np.array_equal(got.orders, want.orders)
    assert got.steps == want.steps
    for a, b in zip(got.images, want.images):
        assert psnr_uint8(np.asarray(a), np.asarray(b)) >= MIN_PSNR_DB


def test_api_returns_orders_and_edits(pair, anyorder):
    _, ort_b = pair
    images, grids, orders = runtime.generate(ort_b, [1, 4], order="adaptive", seed=2, return_grids=True,
                                             return_orders=True)
    assert len(images) == 2 and grids.shape == (2, 8, 8) and orders.shape == (2, 64, 2)
    assert not np.array_equal(orders[0], make_order("raster", 8))
    _, fixed = runtime.generate(ort_b, [1], order="raster", return_orders=True)
    assert np.array_equal(fixed[0], make_order("raster", 8))
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 8:] = 255  # outpaint the right half
    image = np.asarray(images[0])
    for order in ("adaptive", "diagonal"):
        edited, grids_e = runtime.generate(ort_b, [4, 4], order=order, image=image, mask=mask, seed=1,
                                           return_grids=True)
        ref = TorchBackend(load_checkpoint(anyorder[0]))
        _, grids_t = runtime.generate(ref, [4, 4], order=order, image=image, mask=mask, seed=1, return_grids=True)
        assert np.array_equal(grids_e, grids_t)
        known = ort_b.encode_vq(image[None])[0]
        assert np.array_equal(grids_e[:, :, :4], np.broadcast_to(known[:, :4], (2, 8, 4)))


def test_package_without_the_graphs_says_how_to_get_them(tiny_dar_package):
    engine = open_package_backend(tiny_dar_package, "onnxruntime-cpu", intra_op_threads=1)
    with pytest.raises(DartrtError, match="no 'candidates' graph.*--adaptive"):
        runtime.generate(engine, [1], order="adaptive", allow_untrained=True)
    from dartrt.dar.checkpoint import random_checkpoint

    with pytest.raises(DartrtError, match="has no VQ encoder"):
        runtime.generate(TorchBackend(random_checkpoint("tiny-dar")), [1], image=np.zeros((16, 16, 3), np.uint8),
                         mask=np.full((16, 16), 255, np.uint8), allow_untrained=True)


NO_TORCH = BLOCK_TORCH + """
import numpy as np
from dartrt import runtime
images, orders = runtime.generate(sys.argv[1], [0, 1], order="adaptive", candidates=5, seed=0, return_orders=True)
mask = np.zeros((16, 16), np.uint8); mask[4:12, 4:12] = 255
edited = runtime.generate(sys.argv[1], [2], order="adaptive", image=np.asarray(images[0]), mask=mask)
assert len(images) == 2 and orders.shape == (2, 64, 2) and len(edited) == 1
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""


def test_adaptive_and_editing_without_torch(anyorder):
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(anyorder[1])], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def test_cli_adaptive_writes_orders_and_matches_the_reference(anyorder, tmp_path):
    """`dartrt generate --order adaptive` on the package and on its checkpoint (torch): the same orders,
    grids and images; an inpainting run keeps the known cells."""
    from click.testing import CliRunner
    from PIL import Image

    from dartrt.cli import main

    ck, pkg = anyorder
    runs = {}
    for name, source in (("ort", pkg), ("torch", ck)):
        out = tmp_path / name
        result = CliRunner().invoke(main, ["generate", str(source), "-c", "1", "-c", "6", "--n", "2", "--order",
                                           "adaptive", "--candidates", "10", "--cells-per-step", "2", "--batch-size",
                                           "3", "--threads", "1", "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert "orders.npy and grids.npy" in result.output
        runs[name] = (np.load(out / "orders.npy"), np.load(out / "grids.npy"), out)
    assert runs["ort"][0].shape == (4, 64, 2) and runs["ort"][1].shape == (4, 8, 8)
    assert np.array_equal(runs["ort"][0], runs["torch"][0]) and np.array_equal(runs["ort"][1], runs["torch"][1])
    for png in ("0000_class1.png", "0003_class6.png"):
        a, b = (np.asarray(Image.open(runs[k][2] / png)) for k in ("ort", "torch"))
        assert psnr_uint8(a, b) >= MIN_PSNR_DB
    mask = np.full((16, 16), 255, np.uint8)
    mask[:8] = 0  # keep the top half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "edit"
    result = CliRunner().invoke(main, ["generate", str(pkg), "-c", "2", "--n", "2", "--image",
                                       str(runs["ort"][2] / "0000_class1.png"), "--mask", str(tmp_path / "mask.png"),
                                       "--order", "adaptive", "--threads", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    grids, orders = np.load(out / "grids.npy"), np.load(out / "orders.npy")
    image = np.asarray(Image.open(runs["ort"][2] / "0000_class1.png"))
    known = open_package_backend(pkg, "onnxruntime-cpu", intra_op_threads=1).encode_vq(image[None])[0]
    assert np.array_equal(grids[:, :4], np.broadcast_to(known[:4], (2, 4, 8)))
    assert np.array_equal(orders[0, :32], make_order("raster", 8)[:32])  # the known half first, in raster order


def test_bench_adaptive_reports_costs_and_bounds(anyorder, tmp_path):
    from dartrt.bench.suite import run_bench

    report = run_bench(anyorder[1], batch_sizes=(1,), repeats=1, warmup=0, threads=1, adaptive=True,
                       candidates=(4,), cells=(3,), json_path=tmp_path / "b.json", echo=None,
                       bandwidth_bytes=1 << 24)
    sides = report["batches"][0]["sides"]
    assert set(sides) >= {"fixed", "adaptive", "adaptive, 4 candidates", "adaptive, 3 cells/step"}
    assert sides["adaptive"]["steps"] == 64 and sides["adaptive, 3 cells/step"]["steps"] == 22
    assert sides["adaptive"]["flops"] > 10 * sides["fixed"]["flops"] > 0
    # Which floor binds depends on the rates measured in the run (a loaded machine moves them); what the
    # model decides is the arithmetic intensity: scoring every cell does far more work per byte read.
    for side in sides.values():
        assert side["bound"] == ("compute" if side["compute_floor_s"] > side["bandwidth_floor_s"] else "bandwidth")
    intensity = {k: v["flops"] / v["bytes"] for k, v in sides.items()}
    assert intensity["adaptive"] > 4 * intensity["fixed"], intensity
    assert sides["adaptive, 4 candidates"]["flops"] < sides["adaptive"]["flops"]
    assert (tmp_path / "b.json").is_file()


def test_verify_runs_the_adaptive_rungs(pair):
    from dartrt.verify.adaptive import adaptive_checks
    from dartrt.verify.checks import ParitySettings

    ref, ort_b = pair
    checks = adaptive_checks(ref, ort_b, ParitySettings(seeds=1), FP32_STEP)
    assert [c.name for c in checks] == ["adaptive:step", "adaptive:greedy", "adaptive:sampling"]
    assert all(c.passed for c in checks), [(c.name, c.figure, c.detail) for c in checks]
    assert checks[0].figure <= 1e-4 and "128 calls" in checks[0].detail  # 2 runs x (prefill + 63 scoring calls)
