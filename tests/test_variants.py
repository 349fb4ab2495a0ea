"""Precisions chosen at run time: listing, resolving, running them, and the TensorRT INT8 default.

The package is a private copy of the tiny one with two cheap extra precisions: ``int8-dynamic``
(onnxruntime dynamic quantization, needs no traces, under a second) and ``fp16`` (`graphs.prepare`,
about 6 s on one shared core). Random weights make the logits nearly flat, so closeness to fp32 is
judged the way calibration judges INT8: teacher-forced top-1 agreement over every step and row, CFG
null rows included (>= 0.95; measured 500/512 = 0.977 for int8-dynamic, 1.0 for fp16; on an AVX2 CPU
without VNNI 395/512 until sessions asked for ORT's exact U8U8 GEMMs, then 500/512), and for seeded
sampling with the model's defaults, the share of identical tokens (>= 0.9; measured 0.996).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from dartrt import runtime  # noqa: E402
from dartrt.runtime.errors import DartrtError  # noqa: E402
from dartrt.runtime.manifest import load_manifest  # noqa: E402
from dartrt.runtime.package import open_package_backend  # noqa: E402
from dartrt.runtime.precisions import (  # noqa: E402
    engine_precision,
    list_precisions,
    precision_manifest,
    resolve_precision,
)

INT8 = "int8-dynamic"
FILES = {"prefill": f"calibration/prefill.{INT8}.onnx", "decode": f"calibration/decode.{INT8}.onnx"}
TOP1_MIN = 0.95  # calibration's INT8 target (calibration/report.py AGREEMENT_TARGET)
SAMPLED_IDENTICAL_MIN = 0.9


def _quiet(*_a, **_k) -> None:
    pass


@pytest.fixture(scope="module")
def pkg(tiny_dar_package, tmp_path_factory):
    from dartrt.calibration.quantize import QuantizeConfig, quantize_package

    out = tmp_path_factory.mktemp("variants") / "tiny-dar"
    shutil.copytree(tiny_dar_package, out)
    quantize_package(out, QuantizeConfig(format="dynamic"), log=_quiet)
    return out


@pytest.fixture(scope="module")
def fp16_pkg(pkg, tmp_path_factory):
    from dartrt.graphs.prepare import prepare

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return prepare(pkg, "fp16", tmp_path_factory.mktemp("fp16") / "tiny-dar", graphs=("prefill", "decode"),
                       log=_quiet).package
    finally:
        torch.set_num_threads(threads)


def _open(pkg, precision=None, **kw):
    return open_package_backend(pkg, "onnxruntime-cpu", precision=precision, intra_op_threads=1, **kw)


# ---- listing and resolving ---------------------------------------------------------------------------------
def test_listing(pkg, fp16_pkg):
    have = list_precisions(load_manifest(pkg))
    assert list(have) == ["fp32", INT8]
    assert have["fp32"].graph_files == {} and have["fp32"].source == "export"
    assert have[INT8].graph_files == FILES and have[INT8].source == "calibration"
    both = list_precisions(load_manifest(fp16_pkg))
    assert list(both) == ["fp32", "fp16", INT8]
    assert both["fp16"].graph_files == {"prefill": "graphs/prefill.fp16.onnx", "decode": "graphs/decode.fp16.onnx"}


def test_resolve_and_errors(pkg):
    data = load_manifest(pkg)
    assert resolve_precision(data, None).name == "fp32"
    assert resolve_precision(data, INT8).graph_files == FILES
    with pytest.raises(DartrtError, match=r"has no precision 'fp16' \(it has: fp32, int8-dynamic\); make it with "
                                          r"`dartrt calibrate .* --format fp16`, `dartrt build .* --precision fp16`"):
        resolve_precision(data, "fp16", pkg)
    with pytest.raises(DartrtError, match=r"no precision 'int8-wo' .*`dartrt calibrate .* --format weight-only`"):
        resolve_precision(data, "int8-wo", pkg)
    with pytest.raises(DartrtError, match=r"no precision 'bf8' .*INT8 variants from `dartrt calibrate`"):
        _open(pkg, "bf8")
    # fp16 needs both decoder graphs (they share the cache dtype), and only hashed files are run
    half = {**data, "prepared": {"decode.fp16": {"file": "graphs/decode.fp16.onnx"}}}
    assert "fp16" not in list_precisions(half)
    unlisted = {**data, "prepared": {f"{g}.fp16": {"file": f"graphs/{g}.fp16.onnx"} for g in ("prefill", "decode")}}
    with pytest.raises(DartrtError, match=r"graphs/prefill\.fp16\.onnx is not among .* hashed files"):
        resolve_precision(unlisted, "fp16")


def test_precision_manifest_points_at_the_variant(pkg, fp16_pkg):
    from dartrt.runtime.manifest import Manifest
    from dartrt.verify import graph_checks

    view = precision_manifest(Manifest.load(pkg), resolve_precision(load_manifest(pkg), INT8))
    assert view.graph("decode").path == pkg / FILES["decode"]
    assert view.graph("vq_decoder").path == Manifest.load(pkg).graph("vq_decoder").path  # the VQ decoder stays fp32
    fp16 = precision_manifest(Manifest.load(fp16_pkg), resolve_precision(load_manifest(fp16_pkg), "fp16"))
    cache_in = [io for io in fp16.graph("decode").inputs if io["name"].startswith("past_key_values.")]
    assert cache_in and all(io["dtype"] == "float16" for io in cache_in)  # the prepared entry's I/O
    assert all(row.passed for row in graph_checks(fp16)), [r.detail for r in graph_checks(fp16)]


# ---- running ----------------------------------------------------------------------------------------------
class TeacherForced:
    """Feeds both backends the same inputs, returns the reference's logits, counts argmax agreement."""

    def __init__(self, ref, test) -> None:
        self.ref, self.test, self.info, self.same, self.total, self.max_abs = ref, test, ref.info, 0, 0, 0.0

    def _keep(self, want, got):
        self.same += int((want.argmax(-1) == got.argmax(-1)).sum())
        self.total += int(np.prod(want.shape[:-1]))
        self.max_abs = max(self.max_abs, float(np.abs(want - got).max()))
        return want

    def prefill(self, *args):
        return self._keep(self.ref.prefill(*args), self.test.prefill(*args))

    def step(self, *args):
        return self._keep(self.ref.step(*args), self.test.step(*args))

    def decode_vq(self, grids):
        return self.ref.decode_vq(grids)


def test_int8_variant_generates_close_to_fp32(pkg):
    ref, test = _open(pkg), _open(pkg, INT8)
    assert (ref.name, ref.precision) == ("onnxruntime", "fp32")
    assert (test.name, test.precision) == (f"onnxruntime[{INT8}]", INT8)
    classes = [0, 1, 2, 3]
    lock = TeacherForced(ref, test)
    runtime.generate(lock, classes, seed=0)
    assert lock.max_abs > 0  # the INT8 graphs really ran (fp32 against itself gives exactly 0)
    assert lock.same / lock.total >= TOP1_MIN, (lock.same, lock.total)
    _, want = runtime.generate(ref, classes, seed=0, return_grids=True)
    _, got = runtime.generate(test, classes, seed=0, return_grids=True)  # the model's sampling defaults
    assert (want == got).mean() >= SAMPLED_IDENTICAL_MIN
    # a path with precision= opens the same graphs; an opened backend keeps its own precision
    _, by_path = runtime.generate(pkg, classes, seed=0, backend="onnxruntime-cpu", precision=INT8, return_grids=True)
    assert np.array_equal(by_path, got)
    with pytest.raises(DartrtError, match="opened at precision 'fp32', not 'int8-dynamic'"):
        runtime.generate(ref, classes, precision=INT8)


def test_fp16_runs_with_an_fp16_cache(fp16_pkg):
    ref, test = _open(fp16_pkg), _open(fp16_pkg, "fp16")
    assert test.cache_dtype == np.float16 and test.name == "onnxruntime[fp16]"
    lock = TeacherForced(ref, test)
    runtime.generate(lock, [0, 1], seed=0)
    assert 0 < lock.max_abs and lock.same / lock.total >= TOP1_MIN


def test_open_variant_goes_through_the_runtime(pkg, tmp_path):
    from dartrt.calibration.variant_backend import open_variant

    def same_logits(a, b) -> bool:
        lock = TeacherForced(a, b)
        runtime.generate(lock, [0, 1], seed=0)
        return lock.max_abs == 0.0

    variant = open_variant(pkg, INT8)
    assert variant.name == f"onnxruntime-cpu[{INT8}]" and variant.providers == ["CPUExecutionProvider"]
    assert same_logits(variant, _open(pkg, INT8))
    # the sensitivity sweep's absolute scratch file replaces decode alone (prefill stays fp32)
    scratch = tmp_path / "decode.scratch.onnx"
    shutil.copy(pkg / FILES["decode"], scratch)
    custom = open_variant(pkg, graph_files={"decode": str(scratch)})
    assert custom.name == "onnxruntime-cpu[custom]"
    assert same_logits(custom, _open(pkg, graph_files={"decode": FILES["decode"]}))
    assert not same_logits(custom, _open(pkg))
    with pytest.raises(DartrtError, match="no 'encoder' graph to replace"):
        open_variant(pkg, graph_files={"encoder": str(scratch)})


# ---- the CLI ----------------------------------------------------------------------------------------------
def test_cli_generate_precision(pkg, tmp_path):
    from dartrt.cli import main

    result = CliRunner().invoke(main, ["generate", str(pkg), "--precision", "int8", "-o", str(tmp_path / "a")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "has no precision 'int8'" in lines[0]
    assert "it has: fp32, int8-dynamic" in lines[0] and "dartrt calibrate" in lines[0]
    result = CliRunner().invoke(main, ["generate", "tiny-dar", "--precision", INT8, "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "not a package; the torch backend takes --dtype" in result.stderr
    result = CliRunner().invoke(main, ["generate", str(pkg), "--precision", INT8, "-c", "3", "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "0000_class3.png").is_file() and f"[{INT8}]" in result.stderr  # progress bar label


def test_cli_verify_precision_states_its_tolerance(pkg, tmp_path):
    from dartrt.cli import main

    out = tmp_path / "verify.json"
    result = CliRunner().invoke(main, ["verify", str(pkg), "--backend", "onnxruntime-cpu", "--threads", "1",
                                       "--seeds", "1", "--precision", INT8, "--json", str(out)])
    data = json.loads(out.read_text())
    rows = {c["name"]: c for c in data["checks"]}
    assert data["precision"] == INT8 and data["backend"] == f"onnxruntime[{INT8}]"
    assert "judged by teacher-forced top-1 agreement" in result.stdout
    assert rows["step:logits"]["verdict"] == "INFO" and rows["step:logits"]["bound"].startswith("fp32 only")
    assert rows["step:top1"]["bound"] == f">= {TOP1_MIN}" and 0 <= rows["step:top1"]["figure"] <= 1
    assert all(rows[f"sequence:{m}"]["verdict"] == "INFO" for m in ("greedy", "sampling"))
    assert rows["polygraphy:decode"]["verdict"] == "SKIP"
    assert result.exit_code == (0 if data["passed"] else 1) and data["passed"] == all(
        c["verdict"] != "FAIL" for c in data["checks"])


# ---- TensorRT: the engine a precision means, and the INT8 engine's default graph ---------------------------
def test_tensorrt_precision_mapping(pkg):
    data = load_manifest(pkg)
    assert engine_precision(data, None) is None and engine_precision(data, "fp16") == "fp16"
    with pytest.raises(DartrtError, match=r"tensorrt runs engines by precision .* 'int8-dynamic' is not one"):
        engine_precision(data, INT8)
    built = {**data, "engines": {"decode.int8": {"onnx": FILES["decode"]}}}
    assert engine_precision(built, INT8) == "int8"  # the int8 engine was built from this variant
    with pytest.raises(DartrtError, match="graph_files overrides are for the onnxruntime backends"):
        open_package_backend(pkg, "tensorrt", graph_files={"decode": FILES["decode"]})


def test_trt_int8_engine_prefers_the_fp16_variant():
    from dartrt.graphs.trt_build import default_variant

    notes: list[str] = []
    both = {"calibration": {"variants": {"int8": {}, "int8-fp16": {}}}}
    assert default_variant(both, "int8", notes.append) == "int8-fp16" and notes == []
    assert default_variant({"calibration": {"variants": {"int8": {}}}}, "int8", notes.append) == "int8"
    assert len(notes) == 1 and "int8-fp16" in notes[0] and "--high-precision fp16" in notes[0]
