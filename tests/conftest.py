"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

# ---- exported packages (runtime tests: manifest, onnxruntime backend, no-torch) ----------------------


@pytest.fixture(scope="session")
def tiny_dar_package(tmp_path_factory):
    """tiny-dar (random weights, seed 0) exported once per session; compare against
    `random_checkpoint("tiny-dar")`, which rebuilds the same weights. The export's own ORT check is
    skipped here (the runtime tests compare ORT to torch themselves); about 15 s on one CPU core."""
    torch = pytest.importorskip("torch")
    from dartrt.dar.checkpoint import random_checkpoint
    from dartrt.exporter import export_package

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("packages") / "tiny-dar"
        export_package(random_checkpoint("tiny-dar"), out, check=False, log=lambda *a, **k: None)
    finally:
        torch.set_num_threads(threads)
    return out


def traced_copy(package, tmp_path_factory, name: str, n_decode: int):
    """A private copy of ``package`` with recorded calibration traces (one torch thread, as calibrate
    records them), so tests that add variants leave the shared package pristine."""
    import shutil

    import torch

    from dartrt.calibration.recording import checkpoint_for_package, record_traces

    pkg = tmp_path_factory.mktemp(name) / "tiny-dar"
    shutil.copytree(package, pkg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record_traces(pkg, checkpoint_for_package(pkg), n_decode=n_decode, seed=0, log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    return pkg


@pytest.fixture(scope="session")
def tiny_d_ar_package(tmp_path_factory):
    """tiny-d-ar (a D-AR pair with random weights: GPT seed 0, tokenizer seed 1) exported once per session,
    with the export's own onnxruntime check; `random_d_ar_checkpoint("tiny-d-ar")` rebuilds the same weights."""
    torch = pytest.importorskip("torch")
    from dartrt.dar.d_ar.checkpoint import random_d_ar_checkpoint
    from dartrt.exporter import export_package

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("packages") / "tiny-d-ar"
        export_package(random_d_ar_checkpoint("tiny-d-ar"), out, log=lambda *a, **k: None)
    finally:
        torch.set_num_threads(threads)
    return out
