"""D-AR at runtime (numpy + onnxruntime): whole generations against the torch reference, the host decoder loop
against D-AR's own sampler, streaming and previews, seeds and batch sizes, `runtime.decode`, a token prefix,
`dartrt decode` / `dartrt generate --previews`, the D-AR bench section, and one-line refusals of bad input.

Measured here (tiny-d-ar, random weights): tokens are identical to the torch reference's; pixels are compared
as PSNR of the uint8 images (bound 40 dB) and as max-abs of the raw float output (bound 1e-4).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dartrt.cli import main
from dartrt.dar.d_ar import decode as torch_decode
from dartrt.dar.d_ar.checkpoint import random_d_ar_checkpoint
from dartrt.dar.d_ar.sampler import preview_from_scratch, step_token_ranges
from dartrt.dar.d_ar.torch_backend import torch_d_ar_backend
from dartrt.runtime import d_ar
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.images import to_uint8
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.metrics import psnr_uint8

torch.set_num_threads(1)
CLASSES = [0, 3, 9]


@pytest.fixture(scope="module")
def ckpt():
    return random_d_ar_checkpoint("tiny-d-ar")


@pytest.fixture(scope="module")
def reference(ckpt):
    return torch_d_ar_backend(ckpt)


@pytest.fixture(scope="module")
def engine(tiny_d_ar_package):
    return d_ar.open_d_ar_package(tiny_d_ar_package, "onnxruntime-cpu", intra_op_threads=1)


@pytest.mark.parametrize("settings", [{"seed": 0}, {"seed": 7, "top_k": 1}, {"seed": 3, "cfg": 1.0}],
                         ids=["sampled-cfg", "greedy-cfg", "sampled-no-cfg"])
def test_whole_generation_matches_the_torch_reference(engine, reference, settings):
    want = d_ar.generate_result(reference, CLASSES, output="float", **settings)
    got = d_ar.generate_result(engine, CLASSES, output="float", **settings)
    assert np.array_equal(got.tokens, want.tokens)
    assert np.abs(got.images - want.images).max() <= 1e-4
    assert psnr_uint8(to_uint8(got.images), to_uint8(want.images)) >= 40


def test_host_loop_is_d_ars_sampler(reference, ckpt):
    """The numpy loop over the torch graphs gives D-AR's own torch sampler's images, and each streamed preview
    is the public clip_steps=k image recomputed from scratch. (Streamed, the conditions come one token per call,
    so they round differently from one causal pass: 1e-5, not bit for bit.)"""
    res = d_ar.generate_result(reference, CLASSES, seed=1, output="float", previews=True)
    ids, noise = torch.from_numpy(res.tokens), torch.from_numpy(res.noise)
    assert np.abs(res.images - torch_decode(ckpt.tokenizer, ids, noise=noise).numpy()).max() <= 1e-5
    cfg = ckpt.tokenizer.cfg
    with torch.no_grad():
        cond = ckpt.tokenizer.conditions(ids)
    ranges = step_token_ranges(cfg)
    for k in range(1, cfg.denoising_steps + 1):
        with torch.no_grad():
            want = preview_from_scratch(ckpt.tokenizer.velocity, lambda i: cond[:, ranges[i][0]:ranges[i][1]], noise,
                                        cfg, k).numpy()
        assert np.abs(res.previews[k - 1] - want).max() <= 1e-5, k


def test_same_seed_same_images_at_every_batch_size(engine):
    ones = d_ar.generate_result(engine, CLASSES, seed=5, batch_size=1, output="uint8")
    all_ = d_ar.generate_result(engine, CLASSES, seed=5, batch_size=3, output="uint8")
    two = d_ar.generate_result(engine, CLASSES, seed=5, batch_size=2, output="uint8")
    assert np.array_equal(ones.tokens, all_.tokens) and np.array_equal(two.tokens, all_.tokens)
    assert np.array_equal(ones.noise, all_.noise)
    for other in (ones, two):  # the velocity graph's batched GEMMs may round differently: at most 1 grey level
        assert np.abs(other.images.astype(int) - all_.images.astype(int)).max() <= 1


def test_streamed_previews_equal_decoded_ones(engine):
    """Previews made while tokens are generated (one token per conditions call) equal those of decoding the
    finished tokens (a group per call) and those recomputed for one group (`preview`)."""
    hooked = []
    res = d_ar.generate_result(engine, CLASSES, seed=2, output="float", previews=True,
                               on_preview=lambda group, images: hooked.append((group, len(images))))
    assert hooked == [(g, 3) for g in range(1, 5)]
    images, previews = d_ar.decode(engine, res.tokens, noise=res.noise, previews=True, output="float")
    assert np.abs(images - res.images).max() <= 1e-5
    assert np.abs(np.stack(previews) - np.stack(res.previews)).max() <= 1e-5
    assert np.array_equal(res.previews[-1], res.images)  # the last group's preview is the image
    second = d_ar.preview(engine, res.tokens[:, :8], 2, noise=res.noise, output="float")  # a token prefix is enough
    assert np.abs(second - res.previews[1]).max() <= 1e-5


def test_decode_takes_noise_and_returns_raw_floats(engine, ckpt):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (2, 16))
    noise = rng.standard_normal((2, 3, 32, 32), dtype=np.float32)
    got = d_ar.decode(engine, tokens, noise=noise, output="float")
    want = torch_decode(ckpt.tokenizer, torch.from_numpy(tokens), noise=torch.from_numpy(noise)).numpy()
    assert got.dtype == np.float32 and got.shape == (2, 3, 32, 32)
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(got).max() > 1  # raw: not clamped to the pixel range
    pil = d_ar.decode(engine, tokens, noise=noise)
    assert np.array_equal(np.stack([np.asarray(p) for p in pil]), to_uint8(got))
    seeded = d_ar.decode(engine, tokens, seed=4, output="float")  # default noise: per (seed, image index)
    from dartrt.runtime.d_ar_decoder import image_noise

    assert np.array_equal(seeded, d_ar.decode(engine, tokens, noise=image_noise(engine.spec, 4, [0, 1]),
                                              output="float"))


def test_a_token_prefix_holds_and_the_rest_is_sampled(engine):
    first = d_ar.generate_result(engine, [1], seed=0, output="uint8")
    prefix = first.tokens[0, :4]
    res = d_ar.generate_result(engine, [1, 1, 1], seed=9, prefix=prefix, output="uint8")
    assert (res.tokens[:, :4] == prefix).all()
    assert len({tuple(t) for t in res.tokens[:, 4:]}) > 1  # the continuations differ
    with pytest.raises(DartrtError, match=r"token ids must lie in \[0, 64\)"):
        d_ar.generate_result(engine, [1], prefix=[64])


def test_runtime_generate_and_open_package_backend_dispatch(tiny_d_ar_package):
    from dartrt import runtime

    seen = []
    images, grids = runtime.generate(str(tiny_d_ar_package), [2], seed=0, return_grids=True,
                                     on_preview=lambda g, ims: seen.append(g))
    assert images[0].size == (32, 32) and grids.shape == (1, 4, 4) and seen == [1, 2, 3, 4]
    engine = runtime.open_package_backend(tiny_d_ar_package, "onnxruntime-cpu")
    assert engine.family == "d-ar"
    want = d_ar.generate_result(engine, [2], seed=0, output="uint8")
    assert np.array_equal(np.asarray(images[0]), want.images[0])
    with pytest.raises(DartrtError, match="1D sequence"):
        runtime.generate(engine, [2], order="diagonal")


def test_dartrt_decode_end_to_end(engine, tiny_d_ar_package, tmp_path):
    res = d_ar.generate_result(engine, CLASSES, seed=0, output="uint8", previews=True)
    np.save(tmp_path / "tokens.npy", res.tokens)
    np.save(tmp_path / "noise.npy", res.noise)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["decode", str(tiny_d_ar_package), str(tmp_path / "tokens.npy"), "--noise",
                                       str(tmp_path / "noise.npy"), "--previews", "--save-float", "-o", str(out)])
    assert result.exit_code == 0, result.output
    from PIL import Image

    for i in range(3):
        assert np.array_equal(np.asarray(Image.open(out / f"{i:04d}.png")), res.images[i])
    assert sorted(p.name for p in (out / "previews").iterdir()) == [f"group{k}.png" for k in range(1, 5)]
    assert np.load(out / "images.npy").shape == (3, 3, 32, 32)


def _one_line_exit_2(args, match):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert match in result.output and result.output.strip().count("\n") == 0, result.output


def test_bad_input_is_one_line_and_exit_2(tiny_d_ar_package, tmp_path):
    pkg = str(tiny_d_ar_package)
    np.save(tmp_path / "ok.npy", np.zeros((2, 16), np.int64))
    np.save(tmp_path / "big.npy", np.full((2, 16), 64, np.int64))
    np.save(tmp_path / "noise.npy", np.zeros((2, 3, 16, 16), np.float32))
    _one_line_exit_2(["decode", pkg, str(tmp_path / "ok.npy"), "--group", "5", "-o", str(tmp_path / "o")],
                     "preview group 5 is out of range: use 1 to 4")
    _one_line_exit_2(["decode", pkg, str(tmp_path / "big.npy"), "-o", str(tmp_path / "o")],
                     "token ids must lie in [0, 64)")
    _one_line_exit_2(["decode", pkg, str(tmp_path / "ok.npy"), "--noise", str(tmp_path / "noise.npy"), "-o",
                      str(tmp_path / "o")], "noise must be float32 [2, 3, 32, 32]")
    # A package of another family (the same graphs with the D-AR entries removed, re-stamped).
    other = tmp_path / "not-d-ar"
    shutil.copytree(tiny_d_ar_package, other)
    data = json.loads((other / "manifest.json").read_text())
    data.pop("family"), data.pop("d_ar")
    Manifest(other, data).write()
    _one_line_exit_2(["decode", str(other), str(tmp_path / "ok.npy"), "-o", str(tmp_path / "o")],
                     "not a D-AR package")
    with pytest.raises(DartrtError, match="preview group 0 is out of range"):
        d_ar.preview(pkg, np.zeros((1, 16), np.int64), 0)


def test_generate_cli_writes_previews_per_group(tiny_d_ar_package, tmp_path):
    result = CliRunner().invoke(main, ["generate", str(tiny_d_ar_package), "-c", "1", "-c", "2", "--n", "2",
                                       "--previews", "-o", str(tmp_path / "gen")])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "gen" / "previews").iterdir())
    assert names == [f"group{k}.png" for k in range(1, 5)]


def test_bench_splits_ar_and_decoder(tiny_d_ar_package):
    from dartrt.bench.suite import run_bench

    report = run_bench(tiny_d_ar_package, batch_sizes=(2,), repeats=1, warmup=0, threads=1, bandwidth_bytes=1 << 24,
                       echo=None)
    batch = report["batches"][0]
    assert report["family"] == "d-ar" and batch["rows"] == 4  # CFG doubles the AR rows
    for part in ("ar", "decoder", "velocity_call"):
        assert 0 < batch[part]["floor_s"] < batch[part]["seconds"], part
    assert batch["velocity_call"]["flops"] == 2 * report["velocity_flops_per_image"]["total"]
    assert batch["decoder"]["velocity_calls"] == 4


def test_a_d_ar_package_opens_its_sessions_without_spinning_workers(tiny_d_ar_package):
    """The stream alternates the AR step and the tokenizer's graphs; spinning ORT workers of one session took the
    cores from the next (docs/d-ar.md, bench: generations 2x faster at batch 1 without). Other packages keep
    ORT's default."""
    from dartrt.runtime.d_ar import open_d_ar_package
    from dartrt.runtime.sessions import RUNTIME

    def allow_spinning(options) -> str | None:
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: ORT's default, spinning
            return None

    engine = open_d_ar_package(tiny_d_ar_package, "onnxruntime-cpu")
    sessions = [*engine.ar.sessions.values(), *engine.graphs.sessions.values()]
    assert len(sessions) == 4
    assert {allow_spinning(s.get_session_options()) for s in sessions} == {"0"}
    spinning = open_d_ar_package(tiny_d_ar_package, "onnxruntime-cpu", spinning=True)
    assert allow_spinning(spinning.graphs.sessions["velocity"].get_session_options()) is None
    assert RUNTIME.spinning and allow_spinning(RUNTIME.options()) is None
