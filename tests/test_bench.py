"""`dartrt bench`: correctness of the byte model, the interleaving and the report (no timing asserts)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402
from torch_blocker import BLOCK_TORCH  # noqa: E402

import dartrt.bench.suite as suite  # noqa: E402
from dartrt.bench.bandwidth import Bandwidth, host_read_bandwidth  # noqa: E402
from dartrt.bench.cuda_graph import StaticDecodeStep, cuda_capture, eager_capture  # noqa: E402
from dartrt.bench.gpu import accelerator_section  # noqa: E402
from dartrt.bench.inputs import Inputs, fill_cache  # noqa: E402
from dartrt.bench.precisions import resolve_precisions  # noqa: E402
from dartrt.bench.report import format_table  # noqa: E402
from dartrt.bench.roofline import Roofline  # noqa: E402
from dartrt.bench.timing import Stats, interleaved, time_interleaved  # noqa: E402
from dartrt.dar.checkpoint import random_checkpoint  # noqa: E402
from dartrt.dar.config import ModelConfig  # noqa: E402
from dartrt.runtime.errors import DartrtError  # noqa: E402
from dartrt.runtime.manifest import Manifest  # noqa: E402
from dartrt.runtime.precisions import precision_manifest, resolve_precision  # noqa: E402

torch.set_num_threads(1)
SMALL = 8 << 20  # bandwidth buffer for tests: the figure is irrelevant here, only that it is measured
TIMING_KEYS = ("prefill", "prefill_graph", "step", "step_graph", "image", "vq_decode")
STATS_KEYS = {"median_s", "p10_s", "p90_s", "min_s", "max_s", "n", "calls_per_sample"}


# ---- timing -----------------------------------------------------------------------------------------
def test_interleaving_order_is_round_robin():
    log: list[str] = []
    cases = {"A": lambda: log.append("A"), "B": lambda: log.append("B")}
    samples = interleaved(cases, repeats=3, warmup=1)
    assert log == ["A", "B"] + ["A", "B"] * 3
    assert {k: len(v) for k, v in samples.items()} == {"A": 3, "B": 3}


def test_bursts_stay_round_robin_and_report_per_call_time():
    log: list[str] = []
    ticks = iter(range(1000))
    cases = {"A": lambda: log.append("A"), "B": lambda: log.append("B")}
    samples = interleaved(cases, repeats=2, warmup=0, clock=lambda: float(next(ticks)), inner={"A": 2})
    assert log == ["A", "A", "B", "A", "A", "B"]
    # the clock ticks once per read: a turn of k calls spans 1 tick, so a sample is 1 / k
    assert samples == {"A": [0.5, 0.5], "B": [1.0, 1.0]}
    stats = time_interleaved(cases, repeats=4, warmup=0)
    assert set(stats) == {"A", "B"} and all(s.n == 4 for s in stats.values())


def test_stats_median_and_spread():
    s = Stats.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median_s, s.min_s, s.max_s, s.n) == (3.0, 1.0, 5.0, 5)
    assert s.p10_s == pytest.approx(1.4) and s.p90_s == pytest.approx(4.6)
    assert s.scaled(2).median_s == 1.5
    with pytest.raises(ValueError):
        Stats.of([])


# ---- roofline ---------------------------------------------------------------------------------------
def hand_count(cfg: ModelConfig, rows: int, length: int) -> dict[str, int]:
    """Bytes of one fp32 tiny-dar decode step, from the config alone."""
    d, inner, ffn, L = cfg.d_model, cfg.inner_dim, cfg.ffn_hidden, cfg.n_layer
    per_layer = d * 3 * inner + inner * d + 3 * d * ffn  # wqkv, wo, w1/w3/w2; AdaLN norms have no weight
    tok_mlp = cfg.codebook_dim * d + d + d * d + d
    weights = L * per_layer + tok_mlp + d * cfg.vocab_size  # no W_mod, no class/direction tables
    # codebook rows; cos + sin rows (D/2 each) per row, never more than the RoPE tables (G + 1 rows)
    lookups = rows * cfg.codebook_dim + min(rows, cfg.grid_size + 1) * cfg.head_dim
    modulation = rows * (6 * L + 2) * d
    kv = 2 * L * cfg.n_head * cfg.head_dim * length * rows
    return {"weights": 4 * weights, "lookups": 4 * lookups, "modulation": 4 * modulation, "kv": 4 * kv}


def hand_count_prefill(cfg: ModelConfig, rows: int) -> int:
    d, inner, ffn, L = cfg.d_model, cfg.inner_dim, cfg.ffn_hidden, cfg.n_layer
    weights = (L * (d * 3 * inner + inner * d + 3 * d * ffn) + L * (d * 6 * d + 6 * d)  # blocks, W_mod
               + d * 2 * d + 2 * d + 9 * d + d * cfg.vocab_size)  # final modulation, direction table, output
    # the class row, gathered twice (embedding, AdaLN table), never more than the table; RoPE, per row
    lookups = 2 * min(rows, cfg.num_classes + 1) * d + min(rows, cfg.grid_size + 1) * cfg.head_dim
    kv = 2 * L * cfg.n_head * cfg.head_dim * rows
    return 4 * (weights + lookups + kv)


def test_roofline_bytes_match_hand_count(tiny_dar_package):
    manifest = Manifest.load(tiny_dar_package)
    cfg = ModelConfig.from_dict(manifest.data["model"])
    roof = Roofline.from_manifest(manifest)
    for rows in (1, 2, 16):
        for length in (1, 33, cfg.seq_len):
            got = roof.decode_step(rows, length)
            want = hand_count(cfg, rows, length)
            assert got.to_dict() == {**want, "total": sum(want.values())}, (rows, length)
        assert roof.prefill_step(rows).total == hand_count_prefill(cfg, rows)
        image = hand_count_prefill(cfg, rows) + sum(sum(hand_count(cfg, rows, t + 1).values())
                                                    for t in range(1, cfg.seq_len))
        assert roof.image_bytes(rows) == image
    assert roof.full_cache_kv(2) == hand_count(cfg, 2, cfg.seq_len)["kv"]


# ---- bandwidth --------------------------------------------------------------------------------------
def test_host_bandwidth_measures_something():
    bw = host_read_bandwidth(SMALL, passes=2, threads=2)
    assert bw.gbps > 0 and bw.bytes == SMALL and bw.threads == 2 and bw.passes == 2


# ---- the reference model ----------------------------------------------------------------------------
def test_reference_checkpoint_resolution(tiny_dar_package, tmp_path):
    """One parser of the manifest's source for verify, bench and calibration (dartrt.dar.reference)."""
    from dartrt.dar.reference import reference_checkpoint

    manifest = Manifest.load(tiny_dar_package)

    def with_source(source):
        return Manifest(manifest.root, {**manifest.data, "source": source})

    assert reference_checkpoint(manifest).config.name == "tiny-dar"
    with pytest.raises(DartrtError, match="not available here; pass --source CHECKPOINT or --no-torch$"):
        reference_checkpoint(with_source(str(tmp_path / "gone")), hint="pass --source CHECKPOINT or --no-torch")
    with pytest.raises(DartrtError, match="config differs"):
        reference_checkpoint(manifest, "tiny-llamagen")
    with pytest.raises(DartrtError, match="names no source"):
        reference_checkpoint(with_source(None))


# ---- end to end -------------------------------------------------------------------------------------
def test_bench_end_to_end_writes_json(tiny_dar_package, tmp_path):
    out = tmp_path / "bench.json"
    lines: list[str] = []
    report = suite.run_bench(tiny_dar_package, batch_sizes=(1, 2), repeats=1, warmup=0, threads=1, json_path=out,
                             bandwidth_bytes=SMALL, accelerator=False, echo=lines.append)
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data["schema"] == "dartrt-bench/1" and data["model"] == "tiny-dar"
    assert {"package", "precision", "started", "seconds", "machine", "settings", "bandwidth", "backends", "reference",
            "batches", "accelerator"} <= set(data)
    labels = ["onnxruntime-cpu", "torch-cpu"]
    assert data["backends"] == labels and data["accelerator"] is None
    assert data["reference"]["same_model"] is True and data["reference"]["max_abs_logits"] <= 1e-4
    assert data["bandwidth"]["before"]["gbps"] > 0 and data["settings"]["batch_sizes"] == [1, 2]
    assert {"load_avg_before", "load_avg_after", "loaded", "usable_cpus"} <= set(data["machine"])
    roof = Roofline.from_manifest(Manifest.load(tiny_dar_package))
    for batch, b in zip((1, 2), data["batches"]):
        assert (b["batch"], b["rows"], b["cfg"]) == (batch, 2 * batch, True)
        assert set(b["timings"]) == set(TIMING_KEYS) and set(b["speedup"]) == set(TIMING_KEYS)
        for key in TIMING_KEYS:
            assert set(b["timings"][key]) == set(labels)
            assert set(b["timings"][key]["torch-cpu"]) == STATS_KEYS
        assert b["roofline"]["step"]["total"] == roof.decode_step(2 * batch, b["write_index"] + 1).total
        assert b["roofline"]["image_bytes"] == roof.image_bytes(2 * batch)
        for lab in labels:
            d = b["derived"][lab]
            assert d["outside_graph_share"] == pytest.approx(d["binding_share"] + d["sampling_share"])
            assert d["step_graph_vs_floor"] > 0
        assert b["parity"]["image_tokens_match_share"] == 1.0
    assert report["batches"][0]["rows"] == 2
    table = "\n".join(lines)
    assert "decode step (graph only)" in table and "outside the graph" in table and "torch/ort" in table


def test_cli_bench_without_torch(tiny_dar_package, tmp_path, monkeypatch):
    from dartrt.cli import main

    monkeypatch.setattr(suite, "host_read_bandwidth", lambda nbytes, threads=1: host_read_bandwidth(SMALL, 2, threads))
    out = tmp_path / "b.json"
    result = CliRunner().invoke(main, ["bench", str(tiny_dar_package), "--batch-size", "1", "--repeats", "1",
                                       "--warmup", "0", "--threads", "1", "--no-torch", "--no-cfg", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["backends"] == ["onnxruntime-cpu"] and data["reference"] is None
    assert data["batches"][0]["rows"] == 1 and "speedup" not in data["batches"][0]
    bad = CliRunner().invoke(main, ["bench", str(tiny_dar_package), "--batch-size", "0", "--no-torch"])
    assert bad.exit_code == 2 and "'--batch-size': 0 is not in the range x>=1" in bad.output


# ---- INT8 variants as further sides -------------------------------------------------------------------
VARIANTS = ("int8-dynamic", "int8-wo")


@pytest.fixture(scope="module")
def int8_package(tiny_dar_package, tmp_path_factory):
    """A copy of tiny-dar with the two calibration-free CPU INT8 variants written by `quantize_package`."""
    import shutil

    from dartrt.calibration.quantize import QuantizeConfig, quantize_package

    pkg = tmp_path_factory.mktemp("int8") / "tiny-dar"
    shutil.copytree(tiny_dar_package, pkg)
    for fmt in ("dynamic", "weight-only"):
        quantize_package(pkg, QuantizeConfig(format=fmt), log=lambda *a: None)
    return pkg


def test_resolve_precisions():
    def variant(fmt: str, rest: str, name: str) -> dict:
        return {"format": fmt, "high_precision_dtype": rest,
                "graphs": {g: {"file": f"calibration/{g}.{name}.onnx"} for g in ("prefill", "decode")}}

    files = {f"calibration/{g}.{n}.onnx": "sha" for g in ("prefill", "decode") for n in ("int8-wo", "int8-fp16")}
    data = {"graphs": {"prefill": {}, "decode": {}}, "files": files,
            "calibration": {"variants": {"int8-wo": variant("weight-only", "fp32", "int8-wo"),
                                         "int8-fp16": variant("qdq", "fp16", "int8-fp16")}}}
    names = lambda got: [p.name for p in got]  # noqa: E731
    assert names(resolve_precisions(data, (), "cpu")) == ["fp32"]
    assert names(resolve_precisions(data, ("all",), "cpu")) == ["fp32", "int8-wo"]  # fp16-rest Q/DQ is TensorRT's
    assert names(resolve_precisions(data, ("all",), "cuda")) == ["fp32", "int8-wo", "int8-fp16"]
    wo = resolve_precisions(data, ("int8-wo", "fp32", "int8-wo"), "cpu")
    assert names(wo) == ["fp32", "int8-wo"] and wo[1].graph_files["decode"] == "calibration/decode.int8-wo.onnx"
    with pytest.raises(DartrtError, match="no precision 'int8' .*fp32, int8-wo, int8-fp16"):
        resolve_precisions(data, ("int8",), "cpu")
    with pytest.raises(DartrtError, match="does not run it"):
        resolve_precisions(data, ("int8-fp16",), "cpu")
    del data["files"]["calibration/decode.int8-wo.onnx"]  # a file the manifest does not hash is refused
    with pytest.raises(DartrtError, match="not among"):
        resolve_precisions(data, ("int8-wo",), "cpu")


def test_bench_times_int8_variants_next_to_fp32_and_torch(int8_package, tmp_path):
    out = tmp_path / "bench.json"
    lines: list[str] = []
    suite.run_bench(int8_package, batch_sizes=(1,), repeats=1, warmup=0, threads=1, json_path=out,
                    bandwidth_bytes=SMALL, accelerator=False, precisions=("all",), echo=lines.append)
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    base, labels = "onnxruntime-cpu", [f"onnxruntime-cpu[{v}]" for v in VARIANTS]
    assert data["backends"] == [base, "torch-cpu", *labels]
    assert data["settings"]["precisions"] == ["fp32", *VARIANTS]
    assert {data["variants"][lab]["precision"] for lab in labels} == set(VARIANTS)
    manifest = Manifest.load(int8_package)
    b = data["batches"][0]
    fp32_weights = b["floors"][base]["step_weights"]
    assert fp32_weights == Roofline.from_manifest(manifest).decode_step(2, 1).weights
    assert set(b["precisions"]) == set(labels)  # fp32 is the baseline, not an entry of its own
    for lab, variant in zip(labels, VARIANTS):
        for key in TIMING_KEYS:
            stats = b["timings"][key][lab]
            assert np.isfinite(stats["median_s"]) and stats["median_s"] > 0, (lab, key)
        v = b["precisions"][lab]
        assert v["precision"] == variant
        for ratios in (v["speedup_vs_fp32"], v["speedup_vs_torch"]):
            assert set(ratios) == set(TIMING_KEYS) and all(np.isfinite(x) and x > 0 for x in ratios.values())
        par = v["parity_vs_fp32"]
        assert par["teacher_forced_steps"] == b["write_index"] + 1  # prefill + the fill + the timed step
        for key in ("top1_rows", "top1_guided", "image_tokens_match_share"):
            assert 0.0 <= par[key] <= 1.0, (lab, key)
        assert np.isfinite(par["step_max_abs"]) and np.isfinite(par["prefill_max_abs"])
        # priced by the variant's own graphs: INT8 GEMM weights (the fp32 logits head stays)
        own = Roofline.from_manifest(precision_manifest(manifest, resolve_precision(manifest.data, variant)))
        assert b["floors"][lab]["step_weights"] == own.decode_step(2, 1).weights < 0.6 * fp32_weights
        assert b["floors"][lab]["step_floor_s"] < b["floors"][base]["step_floor_s"]
        assert b["derived"][lab]["per_image_s"] == b["timings"]["image"][lab]["median_s"]
    # the FP32-vs-torch figures are unchanged by the extra sides; every ratio is "how many times faster"
    assert b["parity"]["image_tokens_match_share"] == 1.0 and data["reference"]["same_model"] is True
    image = {lab: b["timings"]["image"][lab]["median_s"] for lab in data["backends"]}
    assert b["speedup"]["image"] == pytest.approx(image["torch-cpu"] / image[base])
    for lab in labels:
        assert b["precisions"][lab]["speedup_vs_fp32"]["image"] == pytest.approx(image[base] / image[lab])
        assert b["precisions"][lab]["speedup_vs_torch"]["image"] == pytest.approx(image["torch-cpu"] / image[lab])
    table = "\n".join(lines)
    assert "by precision" in table and all(lab in table for lab in labels) and "top-1 vs fp32" in table


def test_cli_bench_precision_option(int8_package, tmp_path, monkeypatch):
    from dartrt.cli import main

    monkeypatch.setattr(suite, "host_read_bandwidth", lambda nbytes, threads=1: host_read_bandwidth(SMALL, 2, threads))
    out = tmp_path / "b.json"
    args = ["bench", str(int8_package), "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--threads", "1",
            "--no-torch", "--json", str(out)]
    result = CliRunner().invoke(main, [*args, "--precision", "int8-wo"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["backends"] == ["onnxruntime-cpu", "onnxruntime-cpu[int8-wo]"]
    v = data["batches"][0]["precisions"]["onnxruntime-cpu[int8-wo]"]
    assert v["speedup_vs_torch"] is None and v["speedup_vs_fp32"]["image"] > 0
    bad = CliRunner().invoke(main, [*args, "--precision", "int4"])
    assert bad.exit_code != 0 and "no precision 'int4'" in bad.output and "Traceback" not in bad.output


# ---- the GPU path, with the CUDA parts stood in for ---------------------------------------------------
def test_static_step_replays_new_inputs_from_its_buffers():
    """What a CUDA graph relies on: after capture, copy_ new inputs and replay gives the new step."""
    ckpt = random_checkpoint("tiny-dar")
    model, info = ckpt.model, None
    from dartrt.dar.torch_backend import TorchBackend

    backend = TorchBackend(ckpt)
    info = backend.info
    inputs = Inputs(info, 2, cfg=True)
    fill_cache(backend, inputs, 10)
    step = StaticDecodeStep(model, backend.caches, backend.modulation, 4, 4, "cpu")
    step.set_inputs(*inputs.step_args(10))
    step.capture(eager_capture)
    for t in (11, 12):  # the step at t rewrites slot t, as generation would
        step.set_inputs(*inputs.step_args(t))
        got = step.replay().clone()
        want = backend.step(*inputs.step_args(t))
        np.testing.assert_allclose(got[:, -1].numpy(), want, rtol=0, atol=1e-6)


def test_accelerator_section_logic_on_cpu(tiny_dar_package):
    """Eager, graph and the torch.compile'd step (dynamo with its eager backend here: the same single-graph
    trace as inductor, without the kernel compile) all give eager's logits and are timed."""
    manifest = Manifest.load(tiny_dar_package)
    fake_bw = Bandwidth(10.0, SMALL, 1e-3, 1, "fake", 1, "fake device")
    acc = accelerator_section(random_checkpoint("tiny-dar"), Roofline.from_manifest(manifest), manifest.info,
                              (1,), True, 1, 0, 8, compile_backend="eager", device="cpu", capture=eager_capture,
                              bandwidth=fake_bw)
    assert acc["backends"] == ["torch-cpu", "torch-cpu-graph", "torch-cpu-compiled-graph"]
    b = acc["batches"][0]
    assert b["rows"] == 2 and b["step_floor_s"] > 0 and b["compile_error"] is None and b["compile_s"] > 0
    assert b["max_abs_vs_eager"] == {"torch-cpu-graph": 0.0, "torch-cpu-compiled-graph": 0.0}
    assert set(b["timings"]["step"]) == set(acc["backends"]) and b["timings"]["device"] == {}  # no CUDA events
    assert b["speedup_vs_eager"]["torch-cpu"] == 1.0


def test_a_failed_compile_is_reported_and_the_rest_still_runs(tiny_dar_package):
    manifest = Manifest.load(tiny_dar_package)
    fake_bw = Bandwidth(10.0, SMALL, 1e-3, 1, "fake", 1, "fake device")
    acc = accelerator_section(random_checkpoint("tiny-dar"), Roofline.from_manifest(manifest), manifest.info,
                              (1,), True, 1, 0, 8, compile_backend="no-such-backend", device="cpu",
                              capture=eager_capture, bandwidth=fake_bw)
    b = acc["batches"][0]
    assert "no-such-backend" in b["compile_error"] and b["compile_s"] is None
    assert set(b["timings"]["step"]) == {"torch-cpu", "torch-cpu-graph"}
    report = {"accelerator": acc, "bandwidth": None, "model": "tiny", "precision": "fp32",
              "reference": {"source": "preset tiny-dar"}, "settings": {"repeats": 1},
              "machine": {"load_avg_before": [0.0], "usable_cpus": 2}}
    assert "torch-cpu-compiled-graph" in format_table(report) and "not run: " in format_table(report)


def test_cuda_capture_follows_the_documented_recipe(monkeypatch):
    """Warm-up on a side stream, the current stream waits for it, then one capture; replay is the graph's."""
    events: list[str] = []

    class FakeStream:
        def __init__(self, name="side"):
            self.name = name

        def wait_stream(self, other):
            events.append(f"{self.name} waits {other.name}")

    class FakeGraph:
        def replay(self):
            events.append("replay")

    @contextmanager
    def on_stream(stream):
        events.append(f"enter {stream.name}")
        yield
        events.append(f"exit {stream.name}")

    @contextmanager
    def capture(graph):
        assert isinstance(graph, FakeGraph)
        events.append("capture begin")
        yield
        events.append("capture end")

    current = FakeStream("current")
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: current)
    monkeypatch.setattr(torch.cuda, "stream", on_stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    out = torch.zeros(1)
    replay, static = cuda_capture(lambda: events.append("fn") or out, warmup=2)
    assert static is out
    replay()
    assert events == ["side waits current", "enter side", "fn", "fn", "exit side", "current waits side",
                      "capture begin", "fn", "capture end", "replay"]


NO_TORCH = BLOCK_TORCH + """
from dartrt.bench.suite import run_bench
report = run_bench(sys.argv[1], batch_sizes=(1,), repeats=1, warmup=0, threads=1, use_torch=False,
                   bandwidth_bytes=1 << 20, echo=None)
assert report["backends"] == ["onnxruntime-cpu"] and "torch" not in sys.modules
print("ok")
"""


def test_bench_without_torch_installed(tiny_dar_package):
    """--no-torch must work on a production host where torch is not installed at all."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(tiny_dar_package)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_accelerator_section_prices_bf16_at_half_the_bytes(tiny_dar_package):
    manifest = Manifest.load(tiny_dar_package)
    roof = Roofline.from_manifest(manifest)
    fake_bw = Bandwidth(10.0, SMALL, 1e-3, 1, "fake", 1, "fake device")
    acc = accelerator_section(random_checkpoint("tiny-dar"), roof, manifest.info, (1,), True, 1, 0, 8,
                              dtypes=("float32", "bfloat16"), device="cpu", capture=eager_capture, bandwidth=fake_bw)
    f32, b16 = acc["batches"]
    assert (f32["dtype"], b16["dtype"]) == ("float32", "bfloat16")
    assert b16["max_abs_vs_eager"] == {"torch-cpu-graph": 0.0}  # the replayed bf16 step is the eager one
    assert b16["step_bytes"]["weights"] == pytest.approx(f32["step_bytes"]["weights"] / 2, abs=1)
    assert b16["step_bytes"]["kv"] == f32["step_bytes"]["kv"] // 2
    assert b16["step_floor_s"] < f32["step_floor_s"] and not b16["fits_in_l2"]  # no L2 figure on the CPU
    with pytest.raises(DartrtError, match="GPU dtypes"):
        accelerator_section(random_checkpoint("tiny-dar"), roof, manifest.info, (1,), True, 1, 0, 8,
                            dtypes=("int8",), device="cpu", capture=eager_capture, bandwidth=fake_bw)


def test_roofline_reprices_only_an_fp32_package(tiny_dar_package):
    roof = Roofline.from_manifest(Manifest.load(tiny_dar_package))
    half = roof.at_itemsize(2)
    assert half.decode.weight_bytes == pytest.approx(roof.decode.weight_bytes / 2, abs=1)
    assert half.decode_step(2, 9).total < roof.decode_step(2, 9).total
    with pytest.raises(DartrtError, match="fp32 package"):
        half.at_itemsize(1)
    from dartrt.bench.gpu import check_dtypes

    check_dtypes(half, ("float16",))  # a 16-bit package at its own size is priced as it is
    with pytest.raises(DartrtError, match="fp32 package"):
        check_dtypes(half, ("float32",))


def test_gpu_dtypes_are_refused_before_any_timing(tiny_dar_package, monkeypatch):
    def no_ort(*_a, **_k):
        raise AssertionError("the bad dtype was found only after the CPU section had started")

    monkeypatch.setattr("dartrt.runtime.ort_backend.OrtBackend", no_ort)
    with pytest.raises(DartrtError, match="GPU dtypes"):
        suite.run_bench(tiny_dar_package, batch_sizes=(1,), repeats=1, accelerator=True, gpu_dtypes=("int8",),
                        echo=None)


def test_gpu_only_runs_the_gpu_section_alone(tiny_dar_package, tmp_path, monkeypatch):
    """--gpu-only never opens onnxruntime; its report and table hold the GPU section alone (here with the
    CUDA parts stood in for by the CPU, as in the tests above)."""
    import functools

    fake_bw = Bandwidth(10.0, SMALL, 1e-3, 1, "fake", 1, "fake device")
    monkeypatch.setattr(suite, "_cuda_available", lambda: True)
    monkeypatch.setattr(suite, "accelerator_section", functools.partial(
        accelerator_section, device="cpu", capture=eager_capture, bandwidth=fake_bw))

    def no_ort(*_a, **_k):
        raise AssertionError("--gpu-only opened onnxruntime")

    monkeypatch.setattr("dartrt.runtime.ort_backend.OrtBackend", no_ort)
    out = tmp_path / "gpu.json"
    lines: list[str] = []
    report = suite.run_bench(tiny_dar_package, batch_sizes=(1,), repeats=1, gpu_only=True,
                             gpu_dtypes=("float32", "bfloat16"), json_path=out, echo=lines.append)
    data = json.loads(out.read_text())
    assert data["batches"] == [] and data["bandwidth"] is None
    assert [b["dtype"] for b in data["accelerator"]["batches"]] == ["float32", "bfloat16"]
    assert report["reference"]["source"].startswith("preset tiny-dar")
    table = lines[0]
    assert "--gpu-only" in table and "float32, batch 1 (2 rows)" in table and "bfloat16, batch 1" in table


def test_gpu_only_refuses_without_a_gpu_or_with_onnxruntime_options(tiny_dar_package, monkeypatch):
    from dartrt.cli import main

    monkeypatch.setattr(suite, "_cuda_available", lambda: False)
    r = CliRunner().invoke(main, ["bench", str(tiny_dar_package), "--gpu-only"])
    assert r.exit_code != 0 and "needs a CUDA GPU" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["bench", str(tiny_dar_package), "--gpu-only", "--no-torch"])
    assert r.exit_code != 0 and "--no-torch" in r.output
    r = CliRunner().invoke(main, ["bench", str(tiny_dar_package), "--gpu-only", "--precision", "all"])
    assert r.exit_code != 0 and "--precision" in r.output


# ---- the GPU path on a real GPU (skips without one) ---------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU that torch sees")


@pytest.mark.gpu
@needs_cuda
def test_gpu_section_on_a_real_gpu(tiny_dar_package):
    """A real CUDA graph (and the bf16 copy) replays eager's logits, and every figure is measured."""
    manifest = Manifest.load(tiny_dar_package)
    acc = accelerator_section(random_checkpoint("tiny-dar"), Roofline.from_manifest(manifest), manifest.info,
                              (1, 2), True, 2, 1, 8, dtypes=("float32", "bfloat16"))
    assert acc["bandwidth"]["gbps"] > 0 and acc["l2_bytes"] > 0
    for b in acc["batches"]:
        graph = "torch-cuda-graph"
        bound = 0.0 if b["dtype"] == "float32" else 0.1  # bf16: cuBLAS may pick other kernels under capture
        assert b["max_abs_vs_eager"][graph] <= bound
        assert b["timings"]["device"][graph]["median_s"] > 0 and b["fits_in_l2"]  # tiny-dar is KBs


def test_outside_share_never_prints_an_impossible_figure():
    """Each share is a difference of medians: noise can push it below 0 or above 100 %."""
    from dartrt.bench.report import outside_split

    assert outside_split({"outside_graph_share": 0.3, "binding_share": 0.1, "sampling_share": 0.2}) == \
        "30% (bind 10%, sample 20%)"
    for bad in (-0.02, 1.3):
        assert outside_split({"outside_graph_share": 0.3, "binding_share": bad, "sampling_share": 0.2}) == \
            "too noisy to split"
