"""FP8, INT4-AWQ and FP16 variants of `dartrt calibrate` on the tiny package.

The tiny model has random weights (logits within about ±0.2), so its top-1 numbers mean little; the
tests check what the formats promise (dtypes, scale granularity, what stays FP32), that the variants
are recorded and run, that onnxruntime's CPU EP computes what the ONNX spec says for them (against
``onnx.reference``), and that their logits stay close to FP32. Tolerances are a few times what was
measured on tiny-dar (24 traced decode calls, max-abs of the logits / mean per-row KL vs the torch
reference): fp16 1.2e-4 / 3e-10, fp8 1.2e-2 / 3e-6, int4-awq 1.8e-2 / 1.2e-5.

One ``dartrt calibrate`` run makes all three variants (about a minute on a shared core: ModelOpt's
import dominates), and every test reads its result.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from conftest import traced_copy
from onnx import TensorProto

from dartrt.calibration.graphinfo import SENSITIVE_OP_TYPES, gemm_nodes, head_nodes, int8_gemms, modulation_nodes
from dartrt.runtime.errors import DartrtError

torch = pytest.importorskip("torch")
if importlib.util.find_spec("modelopt") is None:
    pytest.skip("nvidia-modelopt is not installed (fp8/int4-awq/fp16 are ModelOpt formats)", allow_module_level=True)

pytestmark = pytest.mark.slow  # the module fixture: three ModelOpt child processes

N_DECODE = 16
FORMATS = {"fp8": "fp8", "int4-awq": "int4-awq", "fp16": "fp16"}  # --format → variant
# (max-abs logits, mean per-row KL) vs the torch reference on the traced calls; see the module docstring
CLOSE = {"fp16": (1e-3, 1e-8), "fp8": (0.05, 3e-5), "int4-awq": (0.08, 1e-4)}


@pytest.fixture(scope="module")
def calibrated(tiny_dar_package, tmp_path_factory):
    """A private copy of the tiny package with traces and the three variants, made by the CLI."""
    from click.testing import CliRunner

    from dartrt.cli import main

    pkg = traced_copy(tiny_dar_package, tmp_path_factory, "formats", N_DECODE)
    args = ["calibrate", str(pkg), "--reuse-traces", "--images", "1", "--no-auto-keep"]
    for fmt in FORMATS:
        args += ["--format", fmt]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return pkg, result.output


def _manifest(pkg) -> dict:
    return json.loads((pkg / "manifest.json").read_text())


def _entry(pkg, variant) -> dict:
    return _manifest(pkg)["calibration"]["variants"][variant]


def _load(pkg, variant, graph="decode") -> onnx.ModelProto:
    return onnx.load(str(pkg / _entry(pkg, variant)["graphs"][graph]["file"]))


def _weight(model: onnx.ModelProto, gemm: str):
    """(initializer feeding the GEMM's weight operand, the DequantizeLinear between them or None)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == gemm)
    dq = producers.get(node.input[1])
    if dq is not None and dq.op_type == "DequantizeLinear":
        return inits[dq.input[0]], dq
    return inits[node.input[1]], None


def _attr(node, name, default=None):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


# ---- files and manifest ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_variant_is_valid_onnx_and_recorded(calibrated, fmt):
    from dartrt.runtime.manifest import Manifest

    pkg, output = calibrated
    variant = FORMATS[fmt]
    entry = _entry(pkg, variant)
    assert entry["format"] == fmt and entry["tool"].startswith("nvidia-modelopt ")
    Manifest.load(pkg)  # the new files are listed and their hashes match
    files = _manifest(pkg)["files"]
    for graph in ("prefill", "decode"):
        rel = entry["graphs"][graph]["file"]
        assert rel == f"calibration/{graph}.{variant}.onnx" and rel in files
        onnx.checker.check_model(str(pkg / rel))
        assert entry["graphs"][graph]["quantized"] and "layout" in entry["graphs"][graph]["details"]
    assert variant in output  # a row of the printed table


def test_recorded_recipe_details(calibrated):
    pkg, _ = calibrated
    fp8, int4, fp16 = (_entry(pkg, v) for v in ("fp8", "int4-awq", "fp16"))
    assert fp8["method"] == "max" and fp8["high_precision_dtype"] == "fp32"
    details = int4["graphs"]["decode"]["details"]
    assert int4["method"] == "awq_clip" and details["block_size"] in (128, 64, 32, 16) and details["symmetric"]
    assert fp16["method"] is None and fp16["high_precision_dtype"] == "fp16"
    assert fp16["graphs"]["decode"]["details"]["kv_cache_dtype"] == "float16"
    assert fp16["graphs"]["decode"]["samples"] == fp16["graphs"]["decode"]["details"]["calibration_feeds"] > 0
    # the report row and the manifest summary exist for every variant
    summary = _manifest(pkg)["calibration"]["report"]["summary"]
    assert set(FORMATS.values()) <= set(summary)


# ---- what each format puts in the graph ------------------------------------------------------------------


def _excluded_stay_fp32(model, entry_graph):
    """The recipe's kept GEMMs (and the logits head) read fp32 initializers directly, no DQ."""
    kept = set(entry_graph["excluded"]) | set(head_nodes(model))
    assert kept and not kept & set(int8_gemms(model))
    for name in kept:
        init, dq = _weight(model, name)
        assert dq is None and init.data_type == TensorProto.FLOAT, name
    return kept


def _sensitive_ops_see_no_dq(model):
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in SENSITIVE_OP_TYPES:
            assert not [i for i in node.input if i in producers and producers[i].op_type == "DequantizeLinear"], \
                node.name


def test_fp8_graph_structure(calibrated):
    """FP8 E4M3 Q/DQ: weights stored FP8 (per output channel) behind a DQ with an FP8 zero point;
    activations Q/DQ'd per tensor with FP8 zero points; no INT8 anywhere; head and AdaLN fp32."""
    pkg, _ = calibrated
    for graph in ("prefill", "decode"):
        model = _load(pkg, "fp8", graph)
        entry = _entry(pkg, "fp8")["graphs"][graph]
        inits = {i.name: i for i in model.graph.initializer}
        producers = {o: n for n in model.graph.node for o in n.output}
        quantized = int8_gemms(model)
        assert quantized == entry["quantized"]
        assert not any(i.data_type in (TensorProto.INT8, TensorProto.UINT8) for i in model.graph.initializer)
        for name in quantized:
            init, dq = _weight(model, name)
            assert init.data_type == TensorProto.FLOAT8E4M3FN
            assert inits[dq.input[2]].data_type == TensorProto.FLOAT8E4M3FN
            assert list(inits[dq.input[1]].dims) == [init.dims[1]]  # one scale per output channel
            node = next(n for n in model.graph.node if n.name == name)
            act_dq = producers[node.input[0]]
            q = producers[act_dq.input[0]]
            assert act_dq.op_type == "DequantizeLinear" and q.op_type == "QuantizeLinear"
            scale, zp = inits[q.input[1]], inits[q.input[2]]
            assert zp.data_type == TensorProto.FLOAT8E4M3FN and int(np.prod(scale.dims)) == 1  # per tensor
        kept = _excluded_stay_fp32(model, entry)
        if graph == "prefill":
            assert set(modulation_nodes(model)) <= kept
        _sensitive_ops_see_no_dq(model)
        assert entry["details"]["layout"]["activations"]["scale"] == {"per-tensor": len(quantized)}


def test_int4_graph_structure(calibrated):
    """INT4 weight-only: INT4 weights in blocks along K (block = the recorded one) behind a
    DequantizeLinear; no QuantizeLinear at all (activations untouched); the 4-bit weights take half
    the bytes of INT8; head, AdaLN and GEMMs whose K the block does not divide stay fp32."""
    pkg, _ = calibrated
    entry = _entry(pkg, "int4-awq")
    for graph in ("prefill", "decode"):
        model = _load(pkg, "int4-awq", graph)
        info = entry["graphs"][graph]
        block = info["details"]["block_size"]
        inits = {i.name: i for i in model.graph.initializer}
        assert "QuantizeLinear" not in {n.op_type for n in model.graph.node}
        quantized = int8_gemms(model)
        assert quantized == info["quantized"]
        elems = 0
        for name in quantized:
            init, dq = _weight(model, name)
            assert init.data_type == TensorProto.INT4 and init.dims[0] % block == 0
            assert _attr(dq, "axis") == 0 and _attr(dq, "block_size") == block
            assert list(inits[dq.input[1]].dims) == [init.dims[0] // block, init.dims[1]]
            elems += int(np.prod(init.dims))
        assert info["weight_bytes"]["int4"] == elems // 2
        kept = _excluded_stay_fp32(model, info)
        if graph == "prefill":
            assert set(modulation_nodes(model)) <= kept
        _sensitive_ops_see_no_dq(model)


def test_fp16_graph_structure(calibrated):
    """AutoCast FP16: GEMM weights fp16 except the logits head; fp16 KV-cache I/O, fp32 logits."""
    pkg, _ = calibrated
    model = _load(pkg, "fp16")
    inits = {i.name: i for i in model.graph.initializer}
    head = set(head_nodes(model))
    assert head
    for g in gemm_nodes(model):
        want = TensorProto.FLOAT if g.name in head else TensorProto.FLOAT16
        assert inits[g.weight].data_type == want, g.name
    io = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert io["logits"] == TensorProto.FLOAT
    caches = [t for name, t in io.items() if name.startswith(("past_key_values.", "present."))]
    assert caches and set(caches) == {TensorProto.FLOAT16}
    info = _entry(pkg, "fp16")["graphs"]["decode"]
    assert set(info["excluded"]) == head
    assert info["details"]["layout"]["weights"]["dtype"] == {"float16": len(gemm_nodes(model)) - len(head)}


# ---- they run, the CPU EP computes the spec's numbers, and they are close to FP32 -------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_cpu_ep_matches_onnx_reference(calibrated, fmt):
    """The quality report's numbers come from onnxruntime's CPU kernels; onnx.reference computes the
    ONNX spec in numpy. Same logits on recorded calls: FP8 and INT4 (at the report's session options,
    i.e. unfused INT4 DQ) to 1e-5 (measured 1e-7); FP16 to 1e-3 (measured 2.5e-4: numpy and MLAS
    round fp16 GEMMs differently)."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from dartrt.calibration.quantize import REPORT_SESSION_OPTIONS
    from dartrt.calibration.traceset import load_traces

    pkg, _ = calibrated
    path = pkg / _entry(pkg, FORMATS[fmt])["graphs"]["decode"]["file"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    if REPORT_SESSION_OPTIONS.get(fmt, {}).get("optimization") == "basic":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    reference = ReferenceEvaluator(str(path))
    dtypes = {i.name: np.float16 if i.type == "tensor(float16)" else None for i in session.get_inputs()}
    traces = load_traces(pkg, "decode")
    tol = 1e-3 if fmt == "fp16" else 1e-5
    for i in (0, len(traces) - 1):
        feed = {k: v.astype(dtypes[k]) if dtypes[k] else v for k, v in traces.sample(i).items() if k in dtypes}
        got, want = session.run(["logits"], feed)[0], reference.run(["logits"], feed)[0]
        assert np.abs(got - want).max() <= tol


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_logits_close_to_fp32(calibrated, fmt):
    from dartrt.calibration.report import trace_agreement

    pkg, _ = calibrated
    fp32 = trace_agreement(pkg, "decode.onnx", samples=N_DECODE, runner="ort")
    assert fp32["max_abs_logits"] < 1e-4  # the traces replay through the exported graph
    got = trace_agreement(pkg, _entry(pkg, FORMATS[fmt])["graphs"]["decode"]["file"], samples=N_DECODE, runner="ort")
    max_abs, kl = CLOSE[fmt]
    assert got["max_abs_logits"] <= max_abs and got["kl_rows"] <= kl, got
    assert got["max_abs_logits"] > fp32["max_abs_logits"]  # it is really a different graph


def test_quality_report_rows(calibrated):
    """Every variant was measured by the same quality report; FP16 against its 99 % target."""
    pkg, _ = calibrated
    report = json.loads((pkg / "calibration/report.json").read_text())
    for variant in FORMATS.values():
        q = report["variants"][variant]["quality"]
        assert 0.0 <= q["teacher_forced"]["top1_guided"] <= 1.0 and q["teacher_forced"]["kl_guided"] >= 0.0
        assert 0.0 <= q["greedy"]["identical_tokens"] <= 1.0 and q["ms_per_step"]["images_1"] > 0
    assert report["variants"]["fp16"]["quality"]["target_top1_guided"] == 0.99
    assert "basic" in report["variants"]["int4-awq"]["measured_with"]
    # fp16 is the most faithful of the three on the same calls
    kl = {v: report["variants"][v]["quality"]["teacher_forced"]["kl_guided"] for v in FORMATS.values()}
    assert kl["fp16"] < kl["fp8"] and kl["fp16"] < kl["int4-awq"]


def test_reference_fallback_when_cpu_ep_cannot_load(calibrated):
    """A variant the CPU EP refuses still gets step-level numbers from onnx.reference, and the table
    says so instead of printing a blank row."""
    from dartrt.calibration.quantize import QuantizeConfig, QuantizedGraph, Variant
    from dartrt.calibration.run import _reference_check, format_table

    pkg, _ = calibrated
    entry = _entry(pkg, "fp8")["graphs"]["decode"]
    variant = Variant("fp8", QuantizeConfig(format="fp8"))
    variant.graphs["decode"] = QuantizedGraph(**entry)
    check = _reference_check(pkg, variant, log=lambda *a: None)
    assert check["runner"] == "onnx.reference.ReferenceEvaluator" and check["calls"] > 0
    assert check["kl_rows"] <= CLOSE["fp8"][1]
    row = {"format": "fp8", "method": "max", "int8_gemms": {"decode": 11}, "quality": None, "trace_check": check}
    table = format_table({"variants": {"fp8": row}})
    assert "onnx.reference" in table and f"{check['top1_rows']:.4f}" in table


def test_bad_combinations_are_one_line_errors(calibrated):
    from click.testing import CliRunner

    from dartrt.calibration.quantize import QuantizeConfig
    from dartrt.cli import main

    with pytest.raises(DartrtError, match="high-precision"):
        QuantizeConfig(format="int4-awq", high_precision="fp16")
    assert QuantizeConfig(format="fp8", high_precision="fp16").variant == "fp8-fp16"
    pkg, _ = calibrated
    bad = CliRunner().invoke(main, ["calibrate", str(pkg), "--reuse-traces", "--format", "int4-awq",
                                    "--high-precision", "fp16"])
    assert bad.exit_code == 2 and "high-precision" in bad.output and "Traceback" not in bad.output
