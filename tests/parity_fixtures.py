"""Session-scoped exported packages for the parity suite (tests/test_parity.py loads this as a plugin).

Exports run with the export's own onnxruntime check off: the ladder under test is the stricter check.
Every export runs on one torch thread, because the CPU is shared (and 1 thread keeps timings honest).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def _export(ckpt, out: Path) -> Path:
    import torch

    from dartrt.exporter import export_package

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_package(ckpt, out, check=False, log=lambda *a, **k: None)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def preset_package(request, tmp_path_factory) -> Callable[[str], Path]:
    """preset name → its package (random weights, seed 0), exported once per session.

    tiny-dar reuses conftest's `tiny_dar_package`, which is the same export."""
    pytest.importorskip("torch")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            if name == "tiny-dar":
                cache[name] = request.getfixturevalue("tiny_dar_package")
            else:
                from dartrt.dar.checkpoint import random_checkpoint

                cache[name] = _export(random_checkpoint(name), tmp_path_factory.mktemp("parity") / name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def demo_package(tmp_path_factory) -> Path:
    """The bundled demo model (models/demo) exported; skipped only while it has not been trained."""
    pytest.importorskip("torch")
    from dartrt.dar.checkpoint import BUNDLED, load_checkpoint

    if not (BUNDLED / "config.json").is_file():
        pytest.skip(f"the bundled demo model is not trained yet ({BUNDLED / 'config.json'} is absent)")
    return _export(load_checkpoint(BUNDLED), tmp_path_factory.mktemp("parity") / "demo")


@pytest.fixture(scope="session")
def tampered_package(tmp_path_factory, tiny_dar_package) -> Path:
    """tiny-dar with one weight of decode.onnx perturbed and the manifest rewritten, so every hash checks
    out and only the numbers can tell it apart.

    The weight is found by value (the exporter renames and transposes constants), and only in the
    decode graph: prefill and the VQ decoder stay correct."""
    import json
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from dartrt.dar.checkpoint import random_checkpoint
    from dartrt.runtime.manifest import MANIFEST_NAME, write_manifest

    pkg = tmp_path_factory.mktemp("tampered") / "tiny-dar-tampered"
    shutil.copytree(tiny_dar_package, pkg)
    weight = random_checkpoint("tiny-dar").model.layers[1].feed_forward.w2.weight.detach().numpy()
    wrong = weight.copy()
    wrong[0] += 0.5  # one output channel of one FFN: far above float noise, still a plausible model
    proto = onnx.load(str(pkg / "decode.onnx"))
    found = []
    for init in proto.graph.initializer:
        value = numpy_helper.to_array(init)
        for right, replacement in ((weight, wrong), (weight.T, wrong.T)):
            if value.shape == right.shape and np.array_equal(value, right):
                init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(replacement), init.name))
                found.append(init.name)
    assert len(found) == 1, f"layer 1's w2 found {len(found)} times in decode.onnx"
    onnx.save(proto, str(pkg / "decode.onnx"))
    write_manifest(pkg, json.loads((pkg / MANIFEST_NAME).read_text()))
    return pkg
