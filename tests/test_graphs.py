"""graphs/: checker, onnxslim simplification, FP16 (ModelOpt AutoCast), the TensorRT op-support report and
`prepare`, all on the tiny exported package and on the ORT CPU EP.

FP16 tolerances (stated here, measured on tiny-dar with random weights, ORT 1.32 CPU):
- step level, 4 real decode steps (fp32 trace): logits max-abs ≤ 1e-2, KL(fp32‖fp16) ≤ 1e-4 nats,
  top-1 agreement ≥ 0.99 (measured: 1.2e-4, 4e-10, 1.0);
- sequence level, greedy 4 rows × 64 tokens: ≥ 95 % identical tokens (measured: 100 %).
The random-weight logits are small (|logit| ≲ 0.1), so these say the rewrite is wired right; the
accuracy of FP16 on trained weights is for `dartrt verify` on a real checkpoint.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxslim")

from dartrt.graphs import prepare, report, summarize  # noqa: E402
from dartrt.graphs.check import check_graph  # noqa: E402
from dartrt.graphs.compare import compare_graphs  # noqa: E402
from dartrt.graphs.feeds import decode_trace, graph_inputs, greedy_rollout, random_feed  # noqa: E402
from dartrt.graphs.fp16 import Fp16Policy, convert_fp16, logits_head_nodes, rmsnorm_nodes, rope_table_nodes  # noqa: E402
from dartrt.graphs.simplify import simplify_graph  # noqa: E402
from dartrt.graphs.trt_support import UNSUPPORTED, load_op_table, report_model  # noqa: E402
from dartrt.runtime.errors import DartrtError  # noqa: E402
from dartrt.runtime.manifest import Manifest, load_manifest  # noqa: E402

FP16_LOGITS_ATOL = 1e-2
FP16_KL = 1e-4
FP16_TOP1 = 0.99
FP16_TOKENS = 0.95


@pytest.fixture(scope="module")
def manifest(tiny_dar_package):
    return Manifest.load(tiny_dar_package)


@pytest.fixture(scope="module")
def trace(manifest):
    return decode_trace(manifest)


@pytest.fixture(scope="module")
def fp16_pair(manifest, trace, tmp_path_factory):
    """prefill + decode converted to FP16 with the default policy (fp16 KV cache I/O)."""
    folder = tmp_path_factory.mktemp("fp16")
    results = {g: convert_fp16(manifest.graph(g).path, folder / f"{g}.onnx", trace[g]) for g in ("prefill", "decode")}
    return folder, results


def _types(path):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return model, types


# ---- check -------------------------------------------------------------------------------------------
def test_check_graph(manifest, tmp_path):
    result = check_graph(manifest.graph("decode").path)
    assert result.opsets["ai.onnx"] == 24
    assert {"RotaryEmbedding", "TensorScatter", "Attention"} <= set(result.op_counts)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(DartrtError) as err:
        check_graph(broken)
    assert "broken.onnx" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DartrtError, match="graph file not found"):
        check_graph(tmp_path / "missing.onnx")


def test_trace_feeds_are_real_steps(manifest, trace):
    """Recorded feeds carry the model's own positions and the caches it wrote, not noise."""
    steps = trace["decode"]
    assert [int(f["write_index"][0]) for f in steps] == [1, 2, 3, 8]
    later = steps[-1]["past_key_values.0.key"]
    assert np.abs(later[:, :, :8]).max() > 0 and np.abs(later[:, :, 8:]).max() == 0
    specs = graph_inputs(manifest.graph("decode").path)
    feed = random_feed(manifest, "decode", specs, rows=3, seq=2, write=5)
    assert feed["input_ids"].shape == (3, 2) and feed["direction"].shape == (3, 2)
    assert feed["positions"].shape == (3, 2, 4)  # per row
    with pytest.raises(DartrtError, match="does not fit T_max"):
        random_feed(manifest, "decode", specs, rows=1, seq=2, write=63)


# ---- simplify ------------------------------------------------------------------------------------------
def test_simplify_keeps_outputs(manifest, trace, tmp_path):
    src = manifest.graph("decode").path
    out = tmp_path / "decode.slim.onnx"
    result = simplify_graph(src, out, trace["decode"])
    assert result.kept, result.reason
    assert result.nodes_after <= result.nodes_before and result.max_abs_err <= 1e-4
    drift = compare_graphs(src, out, trace["decode"])  # independent re-check of what was written
    assert drift.worst <= 1e-4 and drift.top1_agreement == 1.0


def test_simplify_falls_back_when_outputs_move(manifest, trace, tmp_path, monkeypatch):
    """A simplifier that corrupts a weight is caught on real inputs; the original is kept, with why."""
    import onnxslim

    def bad_slim(model, *args, **kwargs):
        for init in model.graph.initializer:
            if len(init.dims) == 2 and init.data_type == TensorProto.FLOAT:  # every weight matrix, scaled
                init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 3, init.name))
        return model

    monkeypatch.setattr(onnxslim, "slim", bad_slim)
    src = manifest.graph("decode").path
    out = tmp_path / "decode.onnx"
    result = simplify_graph(src, out, trace["decode"])
    assert not result.kept and "outputs moved by" in result.reason
    assert compare_graphs(src, out, trace["decode"]).worst == 0.0


# ---- fp16 ----------------------------------------------------------------------------------------------
def test_fp32_islands_found(manifest):
    model = onnx.load(str(manifest.graph("decode").path), load_external_data=False)
    cfg = manifest.data["model"]
    norms = cfg["n_layer"] * 2 + 1  # attention + FFN norm per layer, final norm
    found = rmsnorm_nodes(model)
    native = [n.name for n in model.graph.node if n.op_type == "RMSNormalization"]
    decomposed = len(found) - len(native)  # Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul per norm
    assert set(native) <= set(found) and decomposed % 6 == 0 and len(native) + decomposed // 6 == norms
    rope = rope_table_nodes(model)
    assert sum(1 for n in model.graph.node if n.op_type == "RotaryEmbedding" and n.name in rope) == 2 * cfg["n_layer"]
    head = logits_head_nodes(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    assert head and producer["logits"].name == head[0] and producer["logits"].op_type == "MatMul"


def test_fp16_graph_typing(fp16_pair):
    """KV cache I/O fp16 and wired for in-place update; logits and the AdaLN table fp32; RoPE, RMSNorm
    statistics and the logits MatMul computed in fp32; the bulk of the MatMuls in fp16."""
    folder, results = fp16_pair
    for graph, result in results.items():
        io = result.io_dtypes
        assert io["logits"] == "float32" and io["adaln_modulation"] == "float32"
        assert all(io[n] == "float16" for n in io if n.startswith(("past_key_values.", "present.")))
        model, types = _types(folder / f"{graph}.onnx")
        outputs = {o.name for o in model.graph.output}
        for node in model.graph.node:
            if node.op_type == "TensorScatter":  # the cache goes straight in and out: TensorRT can alias it
                assert node.input[0].startswith("past_key_values.") and node.output[0] in outputs
            if node.op_type in ("RotaryEmbedding", "RMSNormalization", "ReduceMean", "Sqrt", "Reciprocal"):
                assert types[node.output[0]] == TensorProto.FLOAT, node.name
            if node.op_type == "Attention":
                assert types[node.input[0]] == TensorProto.FLOAT16
        producer = {o: n for n in model.graph.node for o in n.output}
        assert producer["logits"].op_type == "MatMul" and types[producer["logits"].input[1]] == TensorProto.FLOAT
        matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
        assert sum(types[n.output[0]] == TensorProto.FLOAT16 for n in matmuls) >= len(matmuls) - 1
        assert result.pinned["rmsnorm"] and result.pinned["rope"] and result.pinned["logits"]


def test_fp16_matches_fp32_on_real_steps(manifest, trace, fp16_pair):
    folder, _ = fp16_pair
    drift = compare_graphs(manifest.graph("decode").path, folder / "decode.onnx", trace["decode"])
    print(f"FP16 decode vs FP32: {json.dumps(drift.to_dict())}")
    assert drift.max_abs["logits"] <= FP16_LOGITS_ATOL
    assert drift.logits_kl <= FP16_KL and drift.top1_agreement >= FP16_TOP1
    classes = np.array([0, 1, 2, manifest.data["model"]["num_classes"]])
    ref = greedy_rollout(manifest, manifest.graph("prefill").path, manifest.graph("decode").path, classes)
    got = greedy_rollout(manifest, folder / "prefill.onnx", folder / "decode.onnx", classes)
    same = float((ref.tokens == got.tokens).mean())
    print(f"FP16 greedy tokens identical to FP32: {same:.4f} of {ref.tokens.size}")
    assert ref.tokens.shape == (4, 64) and same >= FP16_TOKENS


def test_fp16_attention_fp32_option(manifest, trace, tmp_path):
    """Attention kept in FP32 (the bisecting option): caches stay fp16 I/O, K/V are upcast inside."""
    out = tmp_path / "decode.att32.onnx"
    result = convert_fp16(manifest.graph("decode").path, out, trace["decode"], Fp16Policy(attention_fp32=True))
    assert result.io_dtypes["present.0.key"] == "float16"
    model, types = _types(out)
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert attention and all(types[n.input[1]] == TensorProto.FLOAT for n in attention)
    drift = compare_graphs(manifest.graph("decode").path, out, trace["decode"])
    assert drift.max_abs["logits"] <= FP16_LOGITS_ATOL and drift.top1_agreement >= FP16_TOP1


# ---- TensorRT op support -------------------------------------------------------------------------------
def test_op_table_names_its_source():
    table = load_op_table("11.0")
    src = table["source"]["operators"]
    assert src["repo"] == "onnx/onnx-tensorrt" and len(src["commit"]) == 40
    assert table["opset_range"] == [9, 24]
    assert table["ops"]["TensorScatter"]["supported"] and not table["ops"]["Unique"]["supported"]
    with pytest.raises(DartrtError, match="no TensorRT op table for 9.9"):
        load_op_table("9.9")


@pytest.mark.parametrize("graph", ["prefill", "decode", "vq_decoder"])
def test_tiny_package_has_no_unsupported_nodes(manifest, graph):
    rows = report(manifest.graph(graph).path)
    summary = summarize(rows)
    assert summary[UNSUPPORTED] == 0, summary["issues"][:3]
    assert len(rows) == len(onnx.load(str(manifest.graph(graph).path)).graph.node)
    by_op = {r.op_type: r for r in rows}
    if graph != "vq_decoder":
        assert "in-place" in by_op["TensorScatter"].reason and by_op["Attention"].status == "supported"


def test_fp16_graphs_have_no_unsupported_nodes(fp16_pair):
    folder, _ = fp16_pair
    for graph in ("prefill", "decode"):
        assert summarize(report(folder / f"{graph}.onnx"))[UNSUPPORTED] == 0


def _step_graph(attention_inputs=(), attention_attrs=None, extra_nodes=(), extra_outputs=(), extra_inputs=()):
    """A one-layer step: TensorScatter into a static cache, then Attention over it (valid opset 24)."""
    b, h, s, d, t = 2, 4, 1, 16, 8
    vi = helper.make_tensor_value_info
    inputs = [vi("q", TensorProto.FLOAT, [b, h, s, d]), vi("k", TensorProto.FLOAT, [b, h, s, d]),
              vi("past_key_values.0.key", TensorProto.FLOAT, [b, h, t, d]),
              vi("past_key_values.0.value", TensorProto.FLOAT, [b, h, t, d]),
              vi("write_index", TensorProto.INT64, [b]), vi("mask", TensorProto.BOOL, [b, 1, s, t]), *extra_inputs]
    nodes = [helper.make_node("TensorScatter", ["past_key_values.0.key", "k", "write_index"], ["present.0.key"],
                              name="scatter", axis=-2),
             helper.make_node("Attention", ["q", "present.0.key", "past_key_values.0.value", "mask",
                                            *attention_inputs], ["y"], name="attention", **(attention_attrs or {})),
             *extra_nodes]
    outputs = [vi("y", TensorProto.FLOAT, [b, h, s, d]), vi("present.0.key", TensorProto.FLOAT, [b, h, t, d]),
               *extra_outputs]
    model = helper.make_model(helper.make_graph(nodes, "step", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 24)])
    onnx.checker.check_model(model)
    return model


def _verdicts(model):
    return {r.node: (r.status, r.reason) for r in report_model(model)}


def test_report_flags_bad_nodes():
    vi = helper.make_tensor_value_info
    assert set(s for s, _ in _verdicts(_step_graph()).values()) == {"supported"}
    past = _verdicts(_step_graph(attention_inputs=["past_key_values.0.key", "past_key_values.0.value"]))
    assert past["attention"][0] == UNSUPPORTED and "past_key input is not supported" in past["attention"][1]
    precision = _verdicts(_step_graph(attention_attrs={"softmax_precision": 1}))
    assert precision["attention"][0] == UNSUPPORTED and "softmax_precision" in precision["attention"][1]
    shape = [2, 4, 1, 16]
    then = helper.make_graph([helper.make_node("Identity", ["q"], ["t"])], "then", [],
                             [vi("t", TensorProto.FLOAT, shape)])
    other = helper.make_graph([helper.make_node("Neg", ["q"], ["e"])], "else", [],
                              [vi("e", TensorProto.FLOAT, shape)])
    branch = _step_graph(extra_nodes=[helper.make_node("If", ["c"], ["z"], name="branch", then_branch=then,
                                                       else_branch=other)],
                         extra_outputs=[vi("z", TensorProto.FLOAT, shape)],
                         extra_inputs=[vi("c", TensorProto.BOOL, [])])
    assert _verdicts(branch)["branch"][0] == UNSUPPORTED
    unique = _step_graph(extra_nodes=[helper.make_node("Unique", ["write_index"], ["u"], name="uniq")],
                         extra_outputs=[vi("u", TensorProto.INT64, [None])])
    assert _verdicts(unique)["uniq"] == (UNSUPPORTED, "Unique is not supported by the TensorRT 11.0 ONNX parser")
    scatter = _step_graph()
    scatter.graph.node[0].attribute.append(helper.make_attribute("mode", "circular"))
    assert _verdicts(scatter)["scatter"] == (UNSUPPORTED, "mode 'circular': only linear is supported")


def test_report_flags_a_cache_that_is_not_a_graph_input():
    """TensorScatter on an intermediate tensor parses as ONNX but cannot be TensorRT's in-place layer."""
    model = _step_graph()
    node = model.graph.node[0]
    model.graph.node.insert(0, helper.make_node("Identity", ["past_key_values.0.key"], ["copied"], name="copy"))
    node.input[0] = "copied"
    status, reason = _verdicts(model)["scatter"]
    assert status == UNSUPPORTED and "not a graph input" in reason


# ---- prepare -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tiny_dar_package, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "tiny-dar"
    report_ = prepare(tiny_dar_package, "fp16", out=out, log=lambda *a: None)
    return out, report_


def test_prepare_writes_files_and_manifest(tiny_dar_package, prepared):
    out, report_ = prepared
    assert set(report_.graphs) == {"prefill.fp16", "decode.fp16", "vq_decoder.fp32"} and report_.unsupported == 0
    data = load_manifest(out)  # every new file is listed with its sha256, and checks out
    for key in report_.graphs:
        entry = data["prepared"][key]
        assert (out / entry["file"]).is_file() and entry["file"] in data["files"]
        assert entry["trt_support"]["unsupported"] == 0 and entry["simplify"]["kept"]
        assert entry["source_sha256"] == data["files"][entry["source"]]["sha256"]
    decode = data["prepared"]["decode.fp16"]
    assert decode["kv_cache_dtype"] == "float16" and decode["fp16"]["kv_cache_dtype"] == "float16"
    assert decode["fp16"]["sequence_check"]["tokens_identical"] >= FP16_TOKENS
    assert decode["fp16"]["drift_vs_fp32"]["top1_agreement"] >= FP16_TOP1
    assert data["prepared"]["vq_decoder.fp32"]["precision"] == "fp32"
    assert data["graphs"] == load_manifest(tiny_dar_package)["graphs"]  # the exported graphs are untouched
    assert "prepared" not in load_manifest(tiny_dar_package)  # and so is the source package


def test_prepare_in_place_adds_entries(prepared, tmp_path):
    out, _ = prepared
    pkg = tmp_path / "pkg"
    shutil.copytree(out, pkg)
    prepare(pkg, "fp32", graphs=("decode",), log=lambda *a: None)
    data = load_manifest(pkg)
    assert {"decode.fp32", "decode.fp16", "prefill.fp16"} <= set(data["prepared"])
    assert data["prepared"]["decode.fp32"]["kv_cache_dtype"] == "float32"
    assert not any(p.name.startswith(".") for p in pkg.rglob("*"))  # no temp files left behind


def test_prepare_refusals(prepared, tmp_path):
    out, _ = prepared
    with pytest.raises(DartrtError, match="unknown precision 'int8'"):
        prepare(out, "int8")
    with pytest.raises(DartrtError, match="already exists"):
        prepare(out, "fp16", out=out)
    with pytest.raises(DartrtError, match="unknown graph 'encoder'"):
        prepare(out, "fp16", graphs=("encoder",))
    with pytest.raises(DartrtError, match="package folder not found"):
        prepare(tmp_path / "nothing", "fp16")
