"""Calibration on the tiny package: real traces, Q/DQ structure, ORT CPU runs, report sanity.

The tiny model has random weights, so its INT8 accuracy means nothing; the tests check what is
meaningful: coverage of the traces, that they replay exactly through the FP32 graph, the placement of
Q/DQ nodes, and the metrics' own invariants (identical model → agreement 1, KL 0).
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import traced_copy

from dartrt.calibration.graphinfo import SENSITIVE_OP_TYPES, head_nodes, int8_gemms
from dartrt.calibration.report import compare_logits
from dartrt.calibration.traceset import load_traces, load_traces_manifest, verify_traces
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.metrics import kl_divergence, top1_agreement

torch = pytest.importorskip("torch")

N_DECODE = 24
HAS_MODELOPT = importlib.util.find_spec("modelopt") is not None


@pytest.fixture(scope="module")
def calibrated(tiny_dar_package, tmp_path_factory):
    """A private copy of the tiny package with traces and the INT8 variants (the shared package stays
    pristine for the other tests)."""
    from dartrt.calibration.quantize import QuantizeConfig, quantize_package

    pkg = traced_copy(tiny_dar_package, tmp_path_factory, "calib", N_DECODE)
    variants = ["int8-ort"]
    quantize_package(pkg, QuantizeConfig(format="qdq-ort"), log=lambda *a: None)
    if HAS_MODELOPT:
        quantize_package(pkg, QuantizeConfig(format="qdq", method="max"), log=lambda *a: None)
        variants.append("int8")
    return pkg, variants


def _manifest(pkg) -> dict:
    return json.loads((pkg / "manifest.json").read_text())


# ---- traces ---------------------------------------------------------------------------------------------


def test_traces_cover_classes_positions_and_cfg_halves(calibrated):
    pkg, _ = calibrated
    cfg = _manifest(pkg)["model"]
    n_cls, seq = cfg["num_classes"], cfg["grid_size"] ** 2
    prefill, decode = load_traces(pkg, "prefill"), load_traces(pkg, "decode")
    assert len(decode) == N_DECODE and len(prefill) == n_cls
    assert set(decode.classes.tolist()) == set(range(n_cls)) == set(prefill.classes.tolist())
    # both CFG halves: row 0 is the cond row, row 1 the null class (prefill input_ids are the class ids)
    ids = prefill.arrays["input_ids"][:, :, 0]
    assert (ids[:, 0] == prefill.classes).all() and (ids[:, 1] == n_cls).all()
    # stratified over the whole sequence: every eighth of the decode steps has samples
    meta = load_traces_manifest(pkg)["graphs"]["decode"]
    assert all(c > 0 for c in meta["steps_per_eighth"])
    assert decode.steps.min() < seq // 8 and decode.steps.max() > 7 * seq // 8
    assert (decode.arrays["write_index"] == decode.steps[:, None]).all()


def test_trace_caches_are_the_real_ones(calibrated):
    """Rebuilt inputs replay through the FP32 decode graph to the reference's logits: the caches are
    what the reference really held (filled up to write_index, zeros after)."""
    pkg, _ = calibrated
    decode = load_traces(pkg, "decode")
    sample = decode.sample(int(np.argmax(decode.steps)))
    key = sample["past_key_values.0.key"]
    t = int(sample["write_index"][0])
    assert np.abs(key[:, :, :t]).sum(axis=(1, 3)).min() > 0 and not key[:, :, t:].any()
    assert verify_traces(decode, pkg / "decode.onnx", count=len(decode), atol=1e-4) < 1e-4
    assert verify_traces(load_traces(pkg, "prefill"), pkg / "prefill.onnx", count=3, atol=1e-4) < 1e-4


def test_traces_are_hashed_and_checked(calibrated, tmp_path):
    from dartrt.runtime.manifest import Manifest

    pkg, _ = calibrated
    Manifest.load(pkg)  # every calibration file is listed and its hash matches
    files = _manifest(pkg)["files"]
    assert "calibration/traces/decode.npz" in files and "calibration/traces/manifest.json" in files
    copy = tmp_path / "pkg"
    shutil.copytree(pkg, copy)
    bad = load_traces(copy, "decode")
    bad.arrays["_ref_logits"] = bad.arrays["_ref_logits"] + 1.0
    with pytest.raises(DartrtError, match="do not replay"):
        verify_traces(bad, copy / "decode.onnx")
    with open(copy / "calibration/traces/decode.npz", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01")
    with pytest.raises(DartrtError, match="sha256"):
        load_traces(copy, "decode")


def test_wrong_source_is_refused(calibrated):
    from dartrt.calibration.recording import checkpoint_for_package, record_traces

    pkg, _ = calibrated
    with pytest.raises(DartrtError, match="does not match"):
        record_traces(pkg, checkpoint_for_package(pkg, "tiny-llamagen"), n_decode=2, log=lambda *a: None)


def test_trace_plan_is_stratified():
    from dartrt.calibration.recording import TracePlan, estimate_bytes
    from dartrt.dar.config import get_preset

    plan = TracePlan.stratified(num_classes=1000, seq_len=256, n_decode=16, seed=3)
    steps = sorted(t for _, t in plan.decode)
    for k, t in enumerate(steps):  # one step in each of 16 equal strata of steps 1..255
        assert 1 + k * 255 // 16 <= t <= 1 + (k + 1) * 255 // 16
    assert len(set(plan.image_classes)) == 16 and max(plan.image_classes) > 900  # spread over the classes
    with pytest.raises(DartrtError):
        TracePlan.stratified(10, 64, 0)
    demo = get_preset("DAR-demo")
    assert 110 < estimate_bytes(demo, 64) / 2**20 < 125  # the docstring's figure (117 MiB)


# ---- quantized graphs -----------------------------------------------------------------------------------


def _qdq_checks(path):
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    quantized = int8_gemms(model)
    assert quantized
    for node in model.graph.node:
        if node.name in quantized:  # per-channel weights: one scale per output column, INT8 stored
            dq = producers[node.input[1]]
            scale, weight = inits[dq.input[1]], inits[dq.input[0]]
            assert list(scale.dims) == [weight.dims[1]] and weight.data_type == onnx.TensorProto.INT8
    head = head_nodes(model)
    assert head and not set(head) & set(quantized)
    for node in model.graph.node:  # the logits head, RoPE, attention and norm math see no DQ'd input
        if node.op_type in SENSITIVE_OP_TYPES or node.name in head:
            dq_inputs = [i for i in node.input if i in producers and producers[i].op_type == "DequantizeLinear"]
            assert not dq_inputs, node.name
    return model


@pytest.mark.parametrize("variant", ["int8", "int8-ort"])
def test_qdq_graph_structure(calibrated, variant):
    pkg, variants = calibrated
    if variant not in variants:
        pytest.skip("nvidia-modelopt is not installed")
    entry = _manifest(pkg)["calibration"]["variants"][variant]
    assert entry["graphs"]["decode"]["file"] == f"calibration/decode.{variant}.onnx"
    _qdq_checks(pkg / entry["graphs"]["decode"]["file"])
    prefill = onnx.load(str(pkg / entry["graphs"]["prefill"]["file"]))
    kept = set(entry["graphs"]["prefill"]["excluded"])
    assert kept and not kept & set(int8_gemms(prefill))  # AdaLN modulation + head stay fp32


@pytest.mark.parametrize("variant", ["int8", "int8-ort"])
def test_quantized_variant_runs_in_ort_cpu(calibrated, variant, tmp_path):
    import onnxruntime as ort

    from dartrt.calibration.report import quality_report
    from dartrt.calibration.variant_backend import open_variant

    pkg, variants = calibrated
    if variant not in variants:
        pytest.skip("nvidia-modelopt is not installed")
    # every INT8 GEMM becomes an integer kernel on the CPU EP (none left dequantizing weights per call)
    path = pkg / f"calibration/decode.{variant}.onnx"
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    fused = [n for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node
             if n.op_type in ("MatMulIntegerToFloat", "QLinearMatMul")]
    assert len(fused) == len(int8_gemms(onnx.load(str(path))))
    ref, test = open_variant(pkg), open_variant(pkg, variant)
    assert test.providers[0] == "CPUExecutionProvider"
    report = quality_report(ref, test, images=2, latency=False)
    tf = report["teacher_forced"]
    assert 0.0 <= tf["top1_guided"] <= 1.0 and tf["kl_guided"] >= 0.0 and tf["kl_rows"] >= 0.0
    for kind in ("greedy", "sampled"):
        assert 0.0 <= report[kind]["identical_tokens"] <= 1.0


# ---- report metrics -------------------------------------------------------------------------------------


def test_identical_model_agrees_fully(calibrated):
    from dartrt.calibration.report import quality_report
    from dartrt.calibration.variant_backend import open_variant

    pkg, _ = calibrated
    report = quality_report(open_variant(pkg), open_variant(pkg), images=2, latency=False)
    tf = report["teacher_forced"]
    assert tf["top1_guided"] == 1.0 and tf["top1_cond"] == 1.0 and tf["top1_null"] == 1.0
    assert tf["kl_guided"] == 0.0 and tf["kl_rows"] == 0.0
    assert report["greedy"]["identical_tokens"] == 1.0 and report["sampled"]["identical_tokens"] == 1.0


def test_metric_invariants():
    from dartrt.runtime.cfg import CFGSchedule

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 4, 32)), rng.normal(size=(5, 4, 32))
    assert np.allclose(kl_divergence(a, a), 0.0) and (kl_divergence(a, b) > 0).all()
    assert np.allclose(kl_divergence(a, a + 3.0), 0.0)  # softmax is shift-invariant
    assert top1_agreement(a, a).mean() == 1.0 and 0.0 <= top1_agreement(a, b).mean() <= 1.0

    class Req:  # the two fields compare_logits reads
        cfg = CFGSchedule(scale=4.0)

    m = compare_logits(a, b, Req())
    assert 0.0 <= m.top1_guided <= 1.0 and m.kl_guided > 0 and len(m.by_eighth) == 5


def test_cli_calibrate_writes_report(calibrated):
    from click.testing import CliRunner

    from dartrt.cli import main

    pkg, _ = calibrated
    result = CliRunner().invoke(main, ["calibrate", str(pkg), "--reuse-traces", "--format", "dynamic",
                                       "--images", "2"])
    assert result.exit_code == 0, result.output
    assert "int8-dynamic" in result.output and "top-1" in result.output
    report = json.loads((pkg / "calibration/report.json").read_text())
    assert 0.0 <= report["variants"]["int8-dynamic"]["quality"]["teacher_forced"]["top1_guided"] <= 1.0
    assert _manifest(pkg)["calibration"]["report"]["file"] == "calibration/report.json"
    bad = CliRunner().invoke(main, ["calibrate", str(pkg), "--samples", "0"])
    assert bad.exit_code == 2 and "samples" in bad.output


def test_keep_regex_leaves_those_gemms_in_high_precision(calibrated, tmp_path):
    from dartrt.calibration.graphinfo import gemm_nodes
    from dartrt.calibration.quantize import QuantizeConfig, quantize_graph
    from dartrt.calibration.sensitivity import group_regex

    pkg, _ = calibrated
    src = pkg / "decode.onnx"
    w2 = {g.name for g in gemm_nodes(onnx.load(str(src))) if g.kind == "w2"}
    assert len(w2) == _manifest(pkg)["model"]["n_layer"]
    cfg = QuantizeConfig(format="qdq-ort", keep=(group_regex("w2", "kind"),))
    result = quantize_graph(src, tmp_path / "d.onnx", "decode", cfg, load_traces(pkg, "decode"))
    assert w2 <= set(result.excluded) and not w2 & set(int8_gemms(onnx.load(str(tmp_path / "d.onnx"))))
    assert result.quantized and result.samples == N_DECODE
