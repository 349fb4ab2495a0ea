"""The onnxruntime backend against the torch reference on tiny-dar, and its in-place KV cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from dartrt import runtime  # noqa: E402
from dartrt.dar.checkpoint import random_checkpoint  # noqa: E402
from dartrt.dar.torch_backend import TorchBackend  # noqa: E402
from dartrt.runtime.errors import DartrtError  # noqa: E402
from dartrt.runtime.manifest import load_manifest, write_manifest  # noqa: E402
from dartrt.runtime.orders import direction_ids, make_order, positions_table  # noqa: E402
from dartrt.runtime.package import open_package_backend  # noqa: E402
from dartrt.runtime.pipeline import generate_with_backend  # noqa: E402

torch.set_num_threads(1)
NOT_IN_PLACE = "in-place optimization not activated"


def ort_backend(pkg, **kw):
    return open_package_backend(pkg, "onnxruntime-cpu", intra_op_threads=1, **kw)


@pytest.fixture(scope="module")
def torch_backend():
    return TorchBackend(random_checkpoint("tiny-dar"))


def tables(info, rows: int):
    """positions [rows, N, 4] and directions [rows, N] of the model's order (the graphs take them per row)."""
    order = make_order(info.order, info.grid_size)
    pos, dirs = positions_table(order, info.grid_size, info.rope), direction_ids(order)
    return np.broadcast_to(pos, (rows, *pos.shape)), np.broadcast_to(dirs, (rows, *dirs.shape))


def test_step_logits_match_torch(tiny_dar_package, torch_backend):
    ort_b = ort_backend(tiny_dar_package)
    assert ort_b.device == "cpu" and ort_b.providers[0] == "CPUExecutionProvider"
    info = ort_b.info
    rows = np.array([3, 7, info.num_classes, info.num_classes])  # a CFG batch
    pos, dirs = tables(info, len(rows))
    first = (rows, pos[:, :1], dirs[:, :1])
    errs = [np.abs(ort_b.prefill(*first) - torch_backend.prefill(*first)).max()]
    rng = np.random.default_rng(0)
    for t in range(1, 8):
        ids = rng.integers(0, info.vocab_size, (len(rows), 1))
        a = ort_b.step(ids, pos[:, t:t + 1], dirs[:, t:t + 1], t)
        b = torch_backend.step(ids, pos[:, t:t + 1], dirs[:, t:t + 1], t)
        assert a.shape == (len(rows), info.vocab_size) and a.dtype == np.float32
        errs.append(np.abs(a - b).max())
    ids = rng.integers(0, info.vocab_size, (len(rows), 3))  # a chunk of S = 3 returns the last position
    chunk = (ids, pos[:, 8:11], dirs[:, 8:11], 8)
    errs.append(np.abs(ort_b.step(*chunk) - torch_backend.step(*chunk)).max())
    print(f"ORT vs torch logits max-abs: prefill {errs[0]:.2e}, steps {max(errs[1:]):.2e}")
    assert max(errs) <= 1e-4


def test_cache_is_updated_in_place(tiny_dar_package, torch_backend, capfd):
    """past and present bound to one OrtValue: the step writes slot write_index (equal to torch's new
    K/V), leaves every other slot bit-identical, and ORT does not log a whole-cache copy. Bound to
    separate buffers (ping-pong), ORT logs the copy: the log check does detect copies."""
    aliased = ort_backend(tiny_dar_package, log_severity=2)
    info = aliased.info
    rows = np.array([1, info.num_classes])
    pos, dirs = tables(info, len(rows))
    capfd.readouterr()
    aliased.prefill(rows, pos[:, :1], dirs[:, :1])
    torch_backend.prefill(rows, pos[:, :1], dirs[:, :1])
    for t in range(1, 5):
        ids = np.full((2, 1), 10 + t)
        aliased.step(ids, pos[:, t:t + 1], dirs[:, t:t + 1], t)
        torch_backend.step(ids, pos[:, t:t + 1], dirs[:, t:t + 1], t)
    before = [aliased.cache_arrays(i) for i in range(aliased.n_layer)]
    w = 5
    aliased.step(np.full((2, 1), 42), pos[:, w:w + 1], dirs[:, w:w + 1], w)
    torch_backend.step(np.full((2, 1), 42), pos[:, w:w + 1], dirs[:, w:w + 1], w)
    for layer in range(aliased.n_layer):
        for kind, (old, new) in enumerate(zip(before[layer], aliased.cache_arrays(layer))):
            ref = torch_backend.caches[layer][kind].numpy()
            others = np.arange(new.shape[2]) != w
            assert np.array_equal(new[:, :, others], old[:, :, others])
            assert np.abs(new[:, :, w] - ref[:, :, w]).max() <= 1e-5
            assert np.abs(new[:, :, w]).max() > 0 and np.abs(new[:, :, w] - old[:, :, w]).max() > 0
    assert NOT_IN_PLACE not in capfd.readouterr().err

    pingpong = ort_backend(tiny_dar_package, log_severity=2, alias_cache=False)
    pingpong.prefill(rows, pos[:, :1], dirs[:, :1])
    assert NOT_IN_PLACE in capfd.readouterr().err


@pytest.mark.parametrize("settings", [{"top_k": 1}, {"cfg": 3.0, "temperature": 1.0, "top_k": 50, "top_p": 0.9}],
                         ids=["greedy", "sampling"])
def test_generate_matches_torch_token_for_token(tiny_dar_package, torch_backend, settings):
    ort_b = ort_backend(tiny_dar_package)
    images, grids = runtime.generate(ort_b, [0, 1, 2], seed=3, batch_size=2, return_grids=True, **settings)
    ref = generate_with_backend(torch_backend, [0, 1, 2], seed=3, batch_size=2, **settings)
    assert grids.shape == (3, 8, 8) and np.array_equal(grids, ref.grids)
    size = ort_b.info.image_size
    assert len(images) == 3 and images[0].size == (size, size)
    pixels = np.stack([np.asarray(im, dtype=np.int16) for im in images])
    ref_pixels = np.stack([np.asarray(im, dtype=np.int16) for im in ref.images])
    assert np.abs(pixels - ref_pixels).max() <= 1  # fp32 reassociation may move a value across a rounding edge


def test_generate_from_a_path(tiny_dar_package):
    steps = []
    images = runtime.generate(tiny_dar_package, [4], seed=0, backend="onnxruntime-cpu",
                              on_step=lambda done, total: steps.append((done, total)))
    assert len(images) == 1 and steps[-1] == (64, 64)


def test_refusals(tiny_dar_package, tmp_path):
    with pytest.raises(DartrtError, match="TensorRT backend is not available here"):
        open_package_backend(tiny_dar_package, "tensorrt")
    with pytest.raises(DartrtError, match="unknown backend 'torch'"):
        open_package_backend(tiny_dar_package, "torch")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(DartrtError, match="no CUDA execution provider"):
            open_package_backend(tiny_dar_package, "onnxruntime-cuda")
    # A decode graph that lacks the AdaLN input (the prefill graph put in its place) is refused by name.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dar_package, broken)
    data = load_manifest(broken)
    data["graphs"]["decode"]["file"] = "prefill.onnx"
    write_manifest(broken, data)
    with pytest.raises(DartrtError, match=r"prefill\.onnx lacks the graph I/O adaln_modulation"):
        ort_backend(broken)
    with pytest.raises(DartrtError, match="package must be a package folder or a Backend"):
        runtime.generate(42, [0])
