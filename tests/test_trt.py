"""TensorRT build and backend.

CPU-provable: optimisation profiles derived from a manifest, the refusal of an engine built for another
GPU/TensorRT (simulated metadata), and the one-line errors of `dartrt build` and the tensorrt backend
when TensorRT is absent. The tests marked `trt` build real engines and compare them with onnxruntime and
Polygraphy's TrtRunner; they skip, with the reason, without `tensorrt`, cuda-python or a GPU.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from dartrt.graphs.trt_build import derive_profile
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest, load_manifest, write_manifest
from dartrt.runtime.trt_backend import DeviceInfo, check_engine_compatible

H100 = DeviceInfo("NVIDIA H100 80GB HBM3", "9.0", "11.4.0.106")


def _tensorrt_unavailable() -> str | None:
    """Why the TensorRT tests cannot run here (None when they can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"tensorrt is not importable ({exc})"
    try:
        from dartrt.runtime.trt_backend import device_info

        device_info(0)
    except DartrtError as exc:
        return f"no usable GPU: {exc}"
    return None


TRT_SKIP = _tensorrt_unavailable()
needs_trt = pytest.mark.skipif(TRT_SKIP is not None, reason=str(TRT_SKIP))
without_trt = pytest.mark.skipif(TRT_SKIP is None or not TRT_SKIP.startswith("tensorrt is not importable"),
                                 reason="tensorrt is installed here")


# ---- profiles ------------------------------------------------------------------------------------------
def test_profiles_from_the_manifest(tiny_dar_package):
    data = load_manifest(tiny_dar_package)
    kv = data["kv_cache"]
    cache = (kv["heads"], kv["max_len"], kv["head_dim"])

    decode = {p.name: p for p in derive_profile(data["graphs"]["decode"]["inputs"], "decode", max_batch=8)}
    assert (decode["input_ids"].min, decode["input_ids"].opt, decode["input_ids"].max) == ((1, 1), (16, 1), (16, 4))
    assert (decode["positions"].min, decode["positions"].max) == ((1, 1, 4), (16, 4, 4))
    assert decode["write_index"].max == (16,)
    value = decode["past_key_values.1.value"]
    assert value.min == (1, *cache) and value.max == (16, *cache)
    width = data["adaln_modulation"]["width"]
    assert decode["adaln_modulation"].opt == (16, 9, width)

    prefill = {p.name: p for p in derive_profile(data["graphs"]["prefill"]["inputs"], "prefill", max_batch=2)}
    assert prefill["input_ids"].max == (4, 1)
    assert prefill["positions"].min == (1, 1, 4) and prefill["positions"].max == (4, 1, 4)  # per row

    vq = derive_profile(data["graphs"]["vq_decoder"]["inputs"], "vq_decoder", max_batch=3)
    grid = data["model"]["grid_size"]
    assert (vq[0].min, vq[0].opt, vq[0].max) == ((1, grid, grid), (3, grid, grid), (3, grid, grid))

    with pytest.raises(DartrtError, match="--max-batch must be >= 1"):
        derive_profile(data["graphs"]["decode"]["inputs"], "decode", max_batch=0)
    weird = [{"name": "x", "dtype": "float32", "shape": ["frames", 3]}]
    with pytest.raises(DartrtError, match="dynamic dim 'frames'"):
        derive_profile(weird, "decode", max_batch=1)


# ---- engine metadata -----------------------------------------------------------------------------------
def test_foreign_engine_is_refused_by_name():
    a100 = DeviceInfo("NVIDIA A100-SXM4-80GB", "8.0", "11.4.0.106")
    with pytest.raises(DartrtError) as err:
        check_engine_compatible("engines/decode.fp16.plan", H100, a100)
    msg = str(err.value)
    assert msg.startswith("engine decode.fp16.plan was built for NVIDIA H100 80GB HBM3 (sm_90) with TensorRT "
                          "11.4.0.106 but this is NVIDIA A100-SXM4-80GB (sm_80) / TensorRT 11.4.0.106")
    assert "\n" not in msg and "dartrt build" in msg
    older = DeviceInfo(H100.gpu, "9.0", "11.0.0.12")
    with pytest.raises(DartrtError, match=r"with TensorRT 11\.4\.0\.106 but this is .* / TensorRT 11\.0\.0\.12"):
        check_engine_compatible("decode.fp16.plan", H100, older)
    # Same architecture and TensorRT, another model of card (H100 PCIe vs SXM): the plan runs.
    check_engine_compatible("decode.fp16.plan", H100, DeviceInfo("NVIDIA H100 PCIe", "9.0", "11.4.0.106"))


def test_engine_entry_without_metadata():
    with pytest.raises(DartrtError, match="lacks 'tensorrt'"):
        DeviceInfo.from_engine_entry({"file": "engines/decode.fp16.plan", "gpu": "x", "compute_capability": "9.0"})
    entry = {"gpu": H100.gpu, "compute_capability": "9.0", "tensorrt": "11.4.0.106"}
    assert DeviceInfo.from_engine_entry(entry) == H100


# ---- which graph an engine is built from (CPU) -------------------------------------------------------
def test_build_inputs_are_prepared_or_calibrated(tiny_dar_package, tmp_path):
    from dartrt.graphs.trt_build import _prepared_entry

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_dar_package, pkg)
    quiet = lambda *a: None  # noqa: E731

    def entry_of(graph, precision, auto, variant):
        return _prepared_entry(Manifest.load(pkg), graph, precision, auto, variant, quiet)[1]

    entry = entry_of("decode", "fp16", True, "int8")  # prepares prefill + decode on demand
    assert entry["file"] == "graphs/decode.fp16.onnx" and entry["kv_cache_dtype"] == "float16"
    assert {"prefill.fp16", "decode.fp16"} <= set(load_manifest(pkg)["prepared"])
    with pytest.raises(DartrtError, match="has no vq_decoder.fp32 graph"):
        entry_of("vq_decoder", "fp16", False, "int8")
    with pytest.raises(DartrtError, match="no decode graph in calibration variant 'int8'.*dartrt calibrate"):
        entry_of("decode", "int8", True, "int8")
    with pytest.raises(DartrtError, match="no decode graph in calibration variant 'fp8-fp16'"):
        entry_of("decode", "fp8", True, "fp8-fp16")
    # A recorded calibration variant is checked and op-reported at build time (here: a stand-in file).
    data = load_manifest(pkg)
    data["calibration"] = {"variants": {"int8": {"graphs": {"decode": {"file": "decode.onnx"}}}}}
    write_manifest(pkg, data)
    entry = entry_of("decode", "int8", True, "int8")
    assert entry["trt_support"]["unsupported"] == 0 and entry["kv_cache_dtype"] == "float32"
    # A prepared graph the parser cannot take is refused before TensorRT is even asked.
    data = load_manifest(pkg)
    data["prepared"]["decode.fp16"]["trt_support"].update(
        unsupported=1, issues=[{"node": "n", "op_type": "Unique", "status": "unsupported", "reason": "no"}])
    write_manifest(pkg, data)
    with pytest.raises(DartrtError, match=r"1 node\(s\) the TensorRT parser does not support, e.g. n \(Unique\)"):
        entry_of("decode", "fp16", True, "int8")


# ---- without TensorRT ----------------------------------------------------------------------------------
@without_trt
def test_build_cli_without_tensorrt(tiny_dar_package):
    from click.testing import CliRunner

    from dartrt.cli import main

    result = CliRunner().invoke(main, ["build", str(tiny_dar_package), "--precision", "fp16"])
    assert result.exit_code == 2
    assert result.stderr == "error: TensorRT is not installed (pip install dartrt[tensorrt])\n"
    assert not (tiny_dar_package / "engines").exists()


@without_trt
def test_tensorrt_backend_without_tensorrt(tiny_dar_package):
    from dartrt.runtime.package import open_package_backend

    with pytest.raises(DartrtError, match=r"TensorRT backend is not available here: tensorrt is not installed"):
        open_package_backend(tiny_dar_package, "tensorrt")


# ---- with TensorRT and a GPU ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built_package(tiny_dar_package, tmp_path_factory):
    """tiny-dar prepared (fp16) and built for this GPU, max batch 2."""
    if TRT_SKIP is not None:
        pytest.skip(TRT_SKIP)
    from dartrt.graphs.trt_build import build_engines

    pkg = tmp_path_factory.mktemp("trt") / "tiny-dar"
    shutil.copytree(tiny_dar_package, pkg)
    cache = pkg.parent / "timing.cache"
    build_engines(pkg, "fp16", max_batch=2, timing_cache=cache, log=lambda *a: None)
    return pkg


@pytest.mark.trt
@needs_trt
def test_build_records_engines(built_package):
    from dartrt.runtime.trt_backend import device_info

    data = load_manifest(built_package)
    here = device_info(0)
    for key in ("prefill.fp16", "decode.fp16", "vq_decoder.fp32"):
        entry = data["engines"][key]
        assert (built_package / entry["file"]).is_file() and entry["file"] in data["files"]
        assert (entry["gpu"], entry["compute_capability"], entry["tensorrt"]) == (here.gpu,
                                                                                  here.compute_capability,
                                                                                  here.tensorrt)
        assert entry["build"]["strongly_typed"] and entry["onnx_sha256"] == data["files"][entry["onnx"]]["sha256"]
    assert data["engines"]["decode.fp16"]["kv_cache_dtype"] == "float16"


@pytest.mark.trt
@needs_trt
def test_decode_engine_matches_polygraphy_and_onnxruntime(built_package):
    """Polygraphy's TrtRunner (which binds the aliased cache outputs itself) against onnxruntime on the
    same fp16 graph, on real decode steps: FP16 tolerance 1e-2 on logits."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    from dartrt.graphs.feeds import cast_feed, decode_trace, graph_inputs
    from dartrt.runtime.manifest import Manifest

    manifest = Manifest.load(built_package)
    onnx_path = built_package / manifest.data["prepared"]["decode.fp16"]["file"]
    specs = graph_inputs(onnx_path)
    feeds = [cast_feed(f, specs) for f in decode_trace(manifest)["decode"]]
    plan = built_package / manifest.data["engines"]["decode.fp16"]["file"]
    runners = [TrtRunner(EngineFromBytes(BytesFromPath(str(plan)))),
               OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["CPUExecutionProvider"]))]
    results = Comparator.run(runners, data_loader=[{k: v.copy() for k, v in f.items()} for f in feeds])
    assert Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol={"logits": 1e-2, "": 2e-2},
                                                                               rtol=1e-2))


@pytest.mark.trt
@needs_trt
def test_trt_backend_generates_like_onnxruntime(built_package):
    from dartrt import runtime
    from dartrt.runtime.package import open_package_backend

    trt_b = open_package_backend(built_package, "tensorrt")
    ort_b = open_package_backend(built_package, "onnxruntime-cpu")
    info = trt_b.info
    from dartrt.runtime.contract import StepTables

    tables = StepTables.native(info)
    rows = np.array([1, 2, info.num_classes, info.num_classes])
    errs = [np.abs(trt_b.prefill(rows, *tables.at(0, 4)) - ort_b.prefill(rows, *tables.at(0, 4))).max()]
    for t in range(1, 6):  # the first step captures the CUDA graph, the next ones replay it
        ids = np.full((4, 1), 7 * t)
        errs.append(np.abs(trt_b.step(ids, *tables.at(t, 4), t) - ort_b.step(ids, *tables.at(t, 4), t)).max())
    assert max(errs) <= 2e-2, errs
    _, grids = runtime.generate(trt_b, [0, 1], seed=0, top_k=1, return_grids=True)
    _, ref = runtime.generate(ort_b, [0, 1], seed=0, top_k=1, return_grids=True)
    assert (grids == ref).mean() >= 0.9


@pytest.mark.trt
@needs_trt
def test_trt_backend_refuses_a_foreign_engine(built_package, tmp_path):
    from dartrt.runtime.package import open_package_backend

    pkg = tmp_path / "foreign"
    shutil.copytree(built_package, pkg)
    data = load_manifest(pkg)
    data["engines"]["decode.fp16"].update(gpu="NVIDIA B200", compute_capability="10.0", tensorrt="99.0.0")
    write_manifest(pkg, data)
    with pytest.raises(DartrtError, match=r"engine decode\.fp16\.plan was built for NVIDIA B200 \(sm_100\)"):
        open_package_backend(pkg, "tensorrt")


def test_quantized_engines_default_to_their_fp16_elsewhere_variant():
    """int8 / fp8 engines prefer the variant with FP16 outside the quantized GEMMs, and say so when they
    fall back to the fp32-elsewhere one; int4-awq has a single variant."""
    from dartrt.graphs.trt_build import default_variant

    notes: list[str] = []
    both = {"calibration": {"variants": {"fp8": {}, "fp8-fp16": {}}}}
    assert default_variant(both, "fp8", notes.append) == "fp8-fp16" and notes == []
    assert default_variant({"calibration": {"variants": {"fp8": {}}}}, "fp8", notes.append) == "fp8"
    assert len(notes) == 1 and "--format fp8 --high-precision fp16" in notes[0]
    assert default_variant({}, "int4-awq", notes.append) == "int4-awq" and len(notes) == 1
