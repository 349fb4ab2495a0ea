"""Export details: external data, the opset guard, and atomic package writes."""

import onnx
import pytest

from dartrt.dar.checkpoint import random_checkpoint
from dartrt.exporter import export_package
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import load_manifest


def test_external_data_package_loads_and_runs(tmp_path):
    """The large-model path (weights in <graph>.onnx.data) on a tiny model: small shape tensors are
    inlined so the full checker and shape inference work, and the hashes cover the data files."""
    from dartrt import runtime

    pkg = tmp_path / "pkg"
    report = export_package(random_checkpoint("tiny-llamagen"), pkg, external_data=True, log=lambda *_: None)
    assert report.graphs["decode"].max_abs_err <= 1e-4
    assert (pkg / "decode.onnx.data").is_file() and (pkg / "prefill.onnx.data").is_file()
    manifest = load_manifest(pkg)
    assert "decode.onnx.data" in manifest["files"]
    proto = onnx.load(str(pkg / "decode.onnx"), load_external_data=False)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(int({e.key: e.value for e in t.external_data}["length"]) > 1024 for t in external)
    images = runtime.generate(str(pkg), [1], seed=0)
    assert images[0].size == (16, 16)


@pytest.mark.parametrize("opset", [17, 26])
def test_broken_opsets_are_refused(opset, tmp_path):
    with pytest.raises(DartrtError, match="outside 18..25"):
        export_package(random_checkpoint("tiny-dar"), tmp_path / "p", opset=opset, log=lambda *_: None)
    assert not (tmp_path / "p").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p.tmp")]  # no half package left


def test_force_replaces_atomically(tmp_path):
    pkg = tmp_path / "pkg"
    ckpt = random_checkpoint("tiny-1d")
    export_package(ckpt, pkg, log=lambda *_: None)
    with pytest.raises(DartrtError, match="already holds a package"):
        export_package(ckpt, pkg, log=lambda *_: None)
    first = load_manifest(pkg)["files"]
    export_package(random_checkpoint("tiny-1d", seed=3), pkg, force=True, log=lambda *_: None, check=False)
    assert load_manifest(pkg)["files"] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_uncalibrated_int8_of_an_external_data_package_is_inline(tmp_path):
    """DAR-B's fp32 graphs carry external data (> 1 GiB) but its INT8 copies are < 2 GB: the
    quantizers must write them inline, which is the form calibration accepts (no refusal)."""
    from dartrt.calibration.quantize import QuantizeConfig, quantize_package
    from dartrt.runtime.package import open_package_backend

    pkg = tmp_path / "pkg"
    export_package(random_checkpoint("tiny-dar"), pkg, external_data=True, log=lambda *_: None)
    for fmt in ("dynamic", "weight-only"):
        variant = quantize_package(pkg, QuantizeConfig(format=fmt), log=lambda *_: None)
        for graph in variant.graphs.values():
            proto = onnx.load(str(pkg / graph.file), load_external_data=False)
            assert not [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
            assert graph.quantized  # some GEMMs really are INT8
        backend = open_package_backend(pkg, "onnxruntime-cpu", precision=variant.name)
        assert backend.precision == variant.name
        head = open_package_backend(pkg, "onnxruntime-cpu").info  # the package still opens as fp32 too
        assert head.num_classes > 0


def test_quantize_head_option_reaches_the_recipe():
    from dartrt.calibration.run import CalibrateOptions

    assert all(c.keep_head for c in CalibrateOptions(formats=("weight-only", "qdq")).configs)
    assert not any(c.keep_head for c in CalibrateOptions(formats=("weight-only",), quantize_head=True).configs)


def test_the_export_check_scales_with_the_logits(tmp_path):
    """A correct graph of a model with large logits passes (the rule is atol + rtol * max|ref|), and the
    rule is recorded in the manifest. Tolerance stated: the default FP32_STEP (atol 1e-4, rtol 1e-5).
    The same graph under an absolute bound alone (rtol 0) is refused, which shows the model really
    exercises the relative part: its head is scaled so the logits reach the tens, where fp32 rounding
    alone differs by more than 1e-4 (a LlamaGen GPT-B from its checkpoint layout measured 1.35e-4)."""
    import torch

    from dartrt.runtime.metrics import FP32_STEP, Tolerance

    ckpt = random_checkpoint("tiny-llamagen")
    with torch.no_grad():
        ckpt.model.output.weight.mul_(1000.0)
    with pytest.raises(DartrtError, match=r"differs from torch by .* \(> 0\.0001 = atol 0\.0001 \+ rtol 0 x max"):
        export_package(ckpt, tmp_path / "abs", log=lambda *_: None, tolerance=Tolerance(1e-4, 0.0))
    report = export_package(ckpt, tmp_path / "rel", log=lambda *_: None)
    check = load_manifest(tmp_path / "rel")["export_check"]["prefill"]
    assert report.graphs["prefill"].max_abs_err > 1e-4 and check["worst_ratio"] <= 1.0
    assert check["tolerance"] == FP32_STEP.to_dict() and check["worst_bound"] > 10 * FP32_STEP.atol
