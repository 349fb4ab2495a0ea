"""D-AR export: the package's graphs and manifest, graph parity with the torch reference, the FP16 pass and the
TensorRT op report on the new graphs, and refusals of a mismatched pair or another family.

Parity rule: the step graphs' (`dartrt.runtime.metrics.FP32_STEP`): per output, max|ORT - torch| <= 1e-4 +
1e-5 * max|torch|, on fp32 graphs with random weights.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from dartrt.dar.d_ar import build_tokenizer, get_tokenizer_preset
from dartrt.dar.d_ar.checkpoint import DARCheckpoint, random_d_ar_checkpoint, save_d_ar_checkpoint
from dartrt.dar.d_ar.sampler import step_token_ranges, time_grid
from dartrt.exporter import export_package
from dartrt.runtime.contract import CONDITIONS, VELOCITY
from dartrt.runtime.d_ar import open_d_ar_package
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.metrics import FP32_STEP

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def reference():
    return random_d_ar_checkpoint("tiny-d-ar")


@pytest.fixture(scope="module")
def engine(tiny_d_ar_package):
    return open_d_ar_package(tiny_d_ar_package, "onnxruntime-cpu", intra_op_threads=1)


def test_manifest_names_family_groups_grid_and_sampler(tiny_d_ar_package, reference):
    data = Manifest.load(tiny_d_ar_package).data
    cfg = reference.tokenizer.cfg
    assert data["family"] == "d-ar" and data["vq"] is None
    assert set(data["graphs"]) == {"prefill", "decode", CONDITIONS, VELOCITY}
    entry = data["d_ar"]
    shape = (entry["num_tokens"], entry["num_groups"], entry["tokens_per_step"], entry["denoising_steps"])
    assert shape == (16, 4, 4, 4)
    sampler = entry["sampler"]
    # The float32 grid survives JSON exactly, and the runtime reads it as the same float32 values.
    assert np.array_equal(np.asarray(sampler["time_grid"], np.float32), time_grid(cfg).numpy())
    assert sampler["step_tokens"] == [list(r) for r in step_token_ranges(cfg)] == [[0, 4], [4, 8], [8, 12], [12, 16]]
    assert sampler["ab2"] == [1.5, 0.5] and sampler["data_std"] == cfg.data_std
    assert entry["image"] == {"channels": 3, "height": 32, "width": 32}
    assert entry["tokenizer"] == cfg.to_dict()
    for graph, check in data["export_check"].items():  # every graph was checked in onnxruntime at export
        assert check["checked"] and check["max_abs_err"] <= check["worst_bound"], graph
    inputs = [io["name"] for io in data["graphs"][VELOCITY]["inputs"]]
    assert inputs == ["x", "s", "conditions"]


def _judge(ref: np.ndarray, got: np.ndarray) -> None:
    dev = FP32_STEP.judge(ref, got)
    assert dev.ok, f"max-abs {dev.max_abs:.3g} > {dev.bound:.3g}"


@pytest.mark.parametrize("chunk", [4, 1, 16], ids=["per-group", "per-token", "whole-prefix"])
def test_conditions_graph_matches_torch_streamed(engine, reference, chunk):
    """The streamed conditions graph, whatever the chunking, against torch's whole causal pass."""
    ids = np.random.default_rng(chunk).integers(0, 64, (3, 16))
    with torch.no_grad():
        want = reference.tokenizer.conditions(torch.from_numpy(ids)).numpy()
    cache = engine.graphs.new_cache(3)
    got = np.concatenate([engine.graphs.conditions(cache, ids[:, b:b + chunk], b) for b in range(0, 16, chunk)], axis=1)
    _judge(want, got)


def test_velocity_graph_matches_torch_at_every_time(engine, reference):
    grid = time_grid(reference.tokenizer.cfg)
    rng = np.random.default_rng(0)
    for rows in (1, 3):
        x = rng.standard_normal((rows, 3, 32, 32), dtype=np.float32)
        cond = rng.standard_normal((rows, 4, 128), dtype=np.float32)
        for s in grid[:-1]:
            with torch.no_grad():
                want = reference.tokenizer.velocity(torch.from_numpy(x), s.repeat(rows), torch.from_numpy(cond)).numpy()
            _judge(want, engine.graphs.velocity(x, s.numpy(), cond))


def test_fp16_pass_and_trt_report_cover_the_tokenizer_graphs(tiny_d_ar_package, tmp_path):
    """FP16 conversion of the conditions and velocity graphs runs, its drift is measured on real inputs (the
    package's own greedy tokens and decode), the decoded images are compared, and the op report is clean."""
    pytest.importorskip("modelopt.onnx.autocast")
    from dartrt.graphs.prepare import prepare

    report = prepare(tiny_d_ar_package, "fp16", out=tmp_path / "fp16", graphs=(CONDITIONS, VELOCITY),
                     log=lambda *a: None)
    velocity = report.graphs["velocity.fp16"].entry
    drift = velocity["fp16"]["drift_vs_fp32"]
    assert drift["feeds"] == 4 and 0 < drift["max_abs"]["velocity"] < 1e-2  # one feed per step; really fp16
    assert velocity["fp16"]["image_check"]["psnr_db"] >= 40
    for key in ("conditions.fp16", "velocity.fp16"):
        support = report.graphs[key].entry["trt_support"]
        assert support["unsupported"] == 0, support["issues"]
    assert report.graphs["conditions.fp16"].entry["kv_cache_dtype"] == "float16"


def test_velocity_flops_formula_matches_torch_count(reference):
    """bench.d_ar prices the velocity network by a formula; torch's FLOP counter agrees on the reference."""
    from torch.utils.flop_counter import FlopCounterMode

    from dartrt.bench.d_ar import velocity_flops

    cfg = reference.tokenizer.cfg
    x, s, cond = torch.randn(2, 3, 32, 32), torch.full((2,), 0.5), torch.randn(2, 4, 128)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference.tokenizer.velocity(x, s, cond)
    flops = velocity_flops(cfg.to_dict(), rows=2)
    # torch counts every linear and conv (not the CPU attention products); those are 2 blocks x (QK^T + AV) for
    # 16 image tokens against 4 conditions and against themselves, width 128, 2 rows, 2 FLOPs per MAC.
    assert flops["total"] - flops["attention_scores"] == counter.get_total_flops()
    assert flops["attention_scores"] == 2 * 2 * 2 * (2 * 16 * 4 * 128 + 2 * 16 * 16 * 128)


def test_a_pair_whose_codebook_sizes_differ_is_refused(reference, tmp_path):
    gpt = reference.model
    other = build_tokenizer(dataclasses.replace(get_tokenizer_preset("tiny"), codebook_size=32))
    bad = DARCheckpoint(gpt, other, "bad pair")
    with pytest.raises(DartrtError, match=r"codebook has 32 entries but the GPT's vocabulary has 64") as err:
        export_package(bad, tmp_path / "pkg")
    assert "\n" not in str(err.value) and not (tmp_path / "pkg").exists()
    save_d_ar_checkpoint(tmp_path / "ckpt", gpt, other)  # the folder form: refused when loaded, by the CLI too
    from click.testing import CliRunner

    from dartrt.cli import main

    result = CliRunner().invoke(main, ["export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "pkg")])
    assert result.exit_code == 2 and "not a pair" in result.output and result.output.count("\n") == 1


def test_a_checkpoint_of_another_family_is_refused(tmp_path):
    from dartrt.dar.checkpoint import random_checkpoint, save_checkpoint
    from dartrt.dar.d_ar.checkpoint import load_d_ar_checkpoint

    dar = random_checkpoint("tiny-dar")
    save_checkpoint(tmp_path / "dar", dar.model, dar.vq, dar.image_size)
    with pytest.raises(DartrtError, match="is not a dartrt D-AR checkpoint config"):
        load_d_ar_checkpoint(tmp_path / "dar")


def test_manifest_whose_pair_disagrees_is_refused_at_open(tiny_d_ar_package, tmp_path):
    """The runtime re-checks the pairing when a package opens (a hand-edited or mixed package)."""
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_d_ar_package, pkg)
    data = json.loads((pkg / "manifest.json").read_text())
    data["d_ar"]["codebook_size"] = 128
    Manifest(pkg, data).write()
    with pytest.raises(DartrtError, match=r"vocabulary \(64\) and the tokenizer's codebook \(128\) differ"):
        Manifest.load(pkg)


def test_verify_refuses_a_d_ar_package_in_one_line(tiny_d_ar_package):
    from click.testing import CliRunner

    from dartrt.cli import main

    result = CliRunner().invoke(main, ["verify", str(tiny_d_ar_package)])
    assert result.exit_code == 2 and "is a D-AR package" in result.output and result.output.count("\n") == 1
