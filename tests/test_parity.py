"""The parity suite: every rung of the verification ladder, on every family member, against torch.

Models: the tiny random presets of each family member (DAR with 4D RoPE + AdaLN + codebook embedding,
LlamaGen with 2D RoPE and its zero-rotation class row, D-AR's 1D RoPE), a GPT-B-sized LlamaGen with
random weights (111M parameters, all 256 steps), and the bundled trained demo model. Then `dartrt
verify` itself: exit 0 on a good package, exit 1 naming the check on a package whose decode graph is
numerically wrong but whose hashes are fine, exit 2 with one line on a bad source.

Measured on 2 CPU cores shared with a training run, 1 thread: under 1 s per tiny ladder (plus about
10 s per export), about 105 s for GPT-B's ladder (2 torch runs of 256 steps at ~75 ms a step, 4
onnxruntime runs at ~25 ms) plus about 35 s to export it, about 45 s for the demo's export and ladder.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from dartrt.cli import main  # noqa: E402
from dartrt.runtime.manifest import MANIFEST_NAME, Manifest, write_manifest  # noqa: E402
from dartrt.runtime.metrics import psnr_uint8  # noqa: E402
from dartrt.verify import (  # noqa: E402
    FP32_STEP,
    MIN_PSNR_DB,
    Check,
    ParitySettings,
    format_table,
    graph_checks,
    verify_package,
)

pytest_plugins = ["parity_fixtures"]
torch.set_num_threads(1)
CPU = "onnxruntime-cpu"
GRAPHS = {"graph:prefill", "graph:decode", "graph:vq_decoder"}
HAVE_POLYGRAPHY = True
try:
    import polygraphy.backend.onnxrt  # noqa: F401
except ImportError:
    HAVE_POLYGRAPHY = False


def ladder(pkg, **settings):
    report = verify_package(pkg, CPU, settings=ParitySettings(threads=1, **settings))
    print(f"\n{pkg.name}: {report.seconds:.1f}s\n{format_table(report.checks)}")
    return report


def assert_ladder(report) -> None:
    """Each rung against its own bound (and the report's overall verdict agrees)."""
    rows = {c.name: c for c in report.checks}
    assert GRAPHS <= set(rows) and all(rows[g].passed and rows[g].figure == 0 for g in GRAPHS)
    step = rows["step:logits"]
    assert step.passed and step.figure <= FP32_STEP.atol, step.detail  # small logits: within atol alone
    for mode in ("greedy", "sampling"):
        assert rows[f"sequence:{mode}"].figure == 0, rows[f"sequence:{mode}"].detail
    assert rows["image:psnr"].figure >= MIN_PSNR_DB
    poly = rows["polygraphy:decode"]
    if HAVE_POLYGRAPHY:
        assert not poly.skipped and poly.passed and poly.figure <= FP32_STEP.atol, poly.detail
    assert report.passed and not report.failed


# ---- the ladder on every family member ---------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny-dar", "tiny-llamagen", "tiny-1d"])
def test_ladder_tiny_presets(preset_package, preset):
    report = ladder(preset_package(preset))
    assert_ladder(report)
    assert report.source == f"preset {preset} (random weights)"  # rebuilt from the manifest's source
    step = report.check("step:logits")
    assert "64 steps" in step.detail and "4 rows" in step.detail  # every G*G step, 2 classes + 2 null rows


@pytest.mark.parametrize("preset,order", [("tiny-dar", "raster"), ("tiny-llamagen", "diagonal")])
def test_ladder_in_another_scan_order(preset_package, preset, order):
    """Positions are graph inputs: one package runs any order, and must still match torch."""
    report = ladder(preset_package(preset), order=order, seeds=1)
    assert_ladder(report)
    assert f"order {order}" in report.check("sequence:greedy").detail


@pytest.mark.slow
def test_ladder_gpt_b(preset_package):
    """LlamaGen GPT-B (111M parameters, VQ-16 at 256 px) with random weights: all 256 steps."""
    report = ladder(preset_package("GPT-B"), seeds=1, images=1)  # VQ-16 decodes cost ~4 s an image here
    assert_ladder(report)
    assert "256 steps" in report.check("step:logits").detail


def test_ladder_bundled_demo(demo_package):
    report = ladder(demo_package)
    assert_ladder(report)


# ---- rung details --------------------------------------------------------------------------------------
def test_psnr_and_rows():
    a = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    assert psnr_uint8(a, a) == math.inf
    b = a.copy()
    b[0, 0, 0, 0] = 255  # mse = 255^2 / 48
    assert psnr_uint8(a, b) == pytest.approx(10 * math.log10(48))
    row = Check("image:psnr", math.inf, ">= 60 dB", True, unit="dB")
    assert row.shown == "inf dB" and row.to_json()["figure"] == "inf"
    assert "inf dB" in format_table([row])


def test_graph_rows_catch_a_manifest_that_lies(preset_package, tmp_path):
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(preset_package("tiny-dar"), pkg)
    data = json.loads((pkg / MANIFEST_NAME).read_text())
    data["graphs"]["decode"]["outputs"][0]["dtype"] = "float16"
    write_manifest(pkg, data)
    rows = {c.name: c for c in graph_checks(Manifest.load(pkg))}
    assert rows["graph:prefill"].passed and not rows["graph:decode"].passed
    assert "logits is float32" in rows["graph:decode"].detail


def test_extra_graph_rows_are_accepted(preset_package):
    """The hook for later graph checks (e.g. a TensorRT op-support report): rows go after the graph
    rows and count towards the verdict."""
    hook = lambda manifest: [Check("graph:ops", 1.0, "== 0 unsupported", False, "TopK (test)")]
    report = verify_package(preset_package("tiny-1d"), CPU, settings=ParitySettings(threads=1, seeds=1),
                            extra_checks=[hook])
    names = [c.name for c in report.checks]
    assert names.index("graph:ops") == 3 and names[:3] == ["graph:prefill", "graph:decode", "graph:vq_decoder"]
    assert not report.passed and [c.name for c in report.failed] == ["graph:ops"]


# ---- the CLI ---------------------------------------------------------------------------------------------
def verify_cli(*args):
    return CliRunner().invoke(main, ["verify", *map(str, args), "--backend", CPU, "--threads", "1"])


def test_verify_cli_passes_and_writes_json(preset_package, tmp_path):
    out = tmp_path / "verify.json"
    result = verify_cli(preset_package("tiny-dar"), "--seeds", "1", "--json", out)
    assert result.exit_code == 0, result.output
    assert "all checks passed" in result.stdout and "FAIL" not in result.stdout
    data = json.loads(out.read_text())
    assert data["passed"] and data["backend"] == "onnxruntime" and data["device"] == "cpu"
    rows = {c["name"]: c for c in data["checks"]}
    assert rows["image:psnr"]["figure"] == "inf" or rows["image:psnr"]["figure"] >= MIN_PSNR_DB
    assert all(r["verdict"] == "PASS" for r in data["checks"])
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_verify_cli_fails_on_a_numerically_wrong_decode_graph(tampered_package, tmp_path):
    out = tmp_path / "verify.json"
    result = verify_cli(tampered_package, "--seeds", "1", "--json", out)
    print(result.stdout)
    assert result.exit_code == 1, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("graph:", "step:",
                                                                                              "polygraphy:"))}
    assert "FAIL" in lines["step:logits"] and "FAIL" in lines["polygraphy:decode"]
    assert all("PASS" in lines[g] for g in GRAPHS)  # the files are valid ONNX with correct hashes
    assert "FAILED: step:logits" in result.stdout
    data = json.loads(out.read_text())
    assert not data["passed"]
    step = next(c for c in data["checks"] if c["name"] == "step:logits")
    assert step["figure"] > FP32_STEP.atol and step["verdict"] == "FAIL"


def test_verify_cli_one_line_errors(preset_package, tmp_path):
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(preset_package("tiny-dar"), pkg)
    result = verify_cli(pkg, "--source", "tiny-llamagen")
    assert result.exit_code == 2 and "does not match the package" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    data = json.loads((pkg / MANIFEST_NAME).read_text())
    data["source"] = str(tmp_path / "gone")
    write_manifest(pkg, data)
    result = verify_cli(pkg)
    assert result.exit_code == 2 and "pass --source" in result.stderr and "gone" in result.stderr
    assert verify_cli(pkg, "--source", "tiny-dar").exit_code == 0  # the same weights, named explicitly
    result = CliRunner().invoke(main, ["verify", str(pkg), "--backend", "tensorrt"])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
