"""INT8 decoder graphs from the recorded traces: the TensorRT Q/DQ recipe and onnxruntime CPU variants.

Formats (each writes ``calibration/<graph>.<variant>.onnx`` for prefill and decode):

- ``qdq`` → variant ``int8`` (``int8-fp16`` with ``high_precision='fp16'``): ModelOpt ONNX PTQ, W8A8
  with explicit QuantizeLinear/DequantizeLinear. This is the TensorRT path: TRT 11 is strongly typed
  and has no INT8 builder flag or calibrator, so INT8 must be *in the graph* (docs/design.md,
  "Backends"). Weights per output channel (symmetric, zero-point 0), stored as INT8 behind a DQ
  (``dq_only``: a quarter of the fp32 file, and TRT takes pre-quantized weights as they are);
  activations per tensor from the traces by ``max`` (no clipping; our default) or ``entropy``
  (KL-optimal clipping, ModelOpt's default). On the trained demo, max halves the guided KL of
  entropy (0.012 vs 0.022, teacher-forced, 10 images) and lifts per-row top-1 from 0.96 to 0.98:
  entropy clips the rare large activations these small decoders rely on. Shared activation Q/DQ
  pairs are then split per consumer (`dedicate_qdq_pairs`) so that onnxruntime's CPU EP fuses
  every INT8 GEMM.
- ``qdq-ort`` → ``int8-ort``: the same placement with onnxruntime's own static quantizer, as a
  cross-check of ModelOpt and a path that needs no NVIDIA package. Activations are *asymmetric uint8*
  (onnxruntime's CPU U8S8 kernels; TensorRT would need symmetric int8, which is what ``qdq`` writes):
  with symmetric int8 activations ORT 1.32's QDQ propagation rewrites the Q after a Reshape into an
  invalid node at load ("output_dtype INT8 does not match y_zero_point type UINT8", cf.
  microsoft/onnxruntime#25526), seen on the exported decoder at opset 24.
- ``dynamic`` → ``int8-dynamic``: onnxruntime dynamic quantization (weights INT8 per channel,
  activations quantized per call at run time, MatMulInteger). No calibration, CPU only.
- ``weight-only`` → ``int8-wo``: onnxruntime ``MatMulNBits``, 8-bit symmetric weights in blocks of
  128 along K: a quarter of the fp32 weight bytes a memory-bound step reads (half of fp16), no
  calibration. ``accuracy_level=4`` lets the CPU kernel quantize activations per block on the fly
  (int8 dot products); without it ORT 1.32's 8-bit kernel took 4.9 ms against FP32's 0.74 ms for one
  DAR-demo-sized decode call (2 rows, one core), with it 0.54 ms, at the same top-1.
  Not a TensorRT INT8 path (TRT has weight-only INT4, not INT8).

Beyond INT8, same machinery, same exclusions, same report (on Hopper, FP8 for larger batches, INT4 AWQ
for memory-bound small-batch decoding; docs/precisions.md):

- ``fp8`` → ``fp8`` (``fp8-fp16`` with ``high_precision='fp16'``): ModelOpt ``quantize_mode='fp8'``,
  FP8 E4M3 Q/DQ on the same GEMMs as ``qdq``. Activations per tensor, calibrated from our traces
  (``max``/``entropy`` as for INT8); weights as ModelOpt places them (per output channel, E4M3,
  stored FP8 behind a DQ with ``dq_only``). ModelOpt also skips GEMMs whose K or N is below 16
  (no Tensor Core gain; the demo's 8-wide codebook MLP input), read off the result as for INT8.
  onnxruntime's CPU EP runs FP8 Q/DQ unfused (DequantizeLinear, then an fp32 MatMul): slow, but the
  exact FP8 numerics (matches ``onnx.reference`` to 1e-7 on tiny-dar), so the report is measured as is.
- ``int4-awq`` → ``int4-awq``: ModelOpt ``quantize_mode='int4'``, ``calibration_method='awq_clip'``
  (its default: per-block clipping ratios searched on the traced activations), symmetric INT4 weights
  in blocks along K behind a blockwise DequantizeLinear; weight-only by nature, activations stay in
  high precision. The block is ModelOpt's 128 unless that does not divide the GEMMs' K (a
  d_model of 192, say), then the largest of 64/32/16 that does; GEMMs whose K it does not divide (an
  8-wide input) stay fp32, so every block is full. ModelOpt packs INT4 with a C++ extension built by
  ``cppimport`` (the ``nvidia-modelopt[onnx]`` extra); without it the child process makes ModelOpt
  take its own numpy packer (same bytes). On the CPU EP onnxruntime fuses the DQ+MatMul into
  ``MatMulNBits`` with ``accuracy_level=4``, which also quantizes *activations* to int8 per block:
  not INT4 weight-only numerics (1.5e-3 max-abs off ``onnx.reference`` on tiny-dar). The report
  therefore measures quality with graph optimizations at ``basic`` (DQ then fp32 MatMul: the
  reference numerics to 1e-7) and times latency with the fused kernel (`REPORT_SESSION_OPTIONS`).
- ``fp16`` → ``fp16``: `graphs.fp16.convert_fp16` (ModelOpt AutoCast with the FP32 islands of
  `graphs.prepare`: RMSNorm, RoPE tables, logits head; fp16 KV-cache I/O), fed with traced decode
  calls instead of a short greedy trace, and ``keep`` GEMMs pinned to FP32 too. Recorded like the
  INT8 variants (``calibration/<graph>.fp16.onnx``, ``calibration.variants['fp16']``) so FP16 gets
  the same report; the CPU EP runs these graphs (its fp16 kernels), so no fallback is needed.

Every ModelOpt call (``qdq``, ``fp8``, ``int4-awq``, ``fp16``) runs in a child process
(`dartrt.calibration.modelopt_child`); the recipe itself is `dartrt.calibration.recipe`.

What stays in high precision, and why:

- only GEMMs (MatMul/Gemm) are quantized. ModelOpt's default placement would also put Q/DQ on the
  inputs of Add, Mul, Pow and Sigmoid, i.e. on the fp32 residual stream, inside RMSNorm (Pow/Mul),
  on the AdaLN modulation products and on SiLU (seen on the exported tiny-dar graph); that costs
  accuracy and buys nothing on a decoder whose step time is weight bytes;
- the logits head (``model.output``): its output is sampled directly, CFG amplifies its errors by the
  guidance scale (u + s·(c − u)), and it is ~3.5 % of the demo's decode GEMM weights;
- RoPE (``RotaryEmbedding``), the attention core (``Attention``: QKᵀ, softmax and PV, so no INT8 on
  the KV cache), and the norms: excluded by op type too, so a later fusion pass cannot pull them in;
- in prefill, the AdaLN modulation GEMMs: they run once per image and set the modulation used by
  every step (see graphinfo.MODULATION_SCOPES);
- plus any module scopes the caller names (``keep``), e.g. the layers the sensitivity sweep flags.

``high_precision='fp32'`` (default) keeps everything else fp32, so the graph runs on the onnxruntime
CPU EP for the report; for a TensorRT engine use ``'fp16'`` (ModelOpt converts the rest of the graph
to fp16 with fp32 I/O, the strongly-typed equivalent of an "INT8 + FP16" engine).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_copy
from dartrt.runtime.manifest import Manifest

from .graphinfo import gemm_nodes, int8_gemms, low_precision_gemms, present_op_types, quant_layout
from .modelopt_child import run_in_child
from .ort_quantizers import run_ort_dynamic, run_ort_static, run_weight_only
from .qdq import dedicate_qdq_pairs, weight_bytes
from .recipe import (
    GRAPHS,
    INT4_METHOD,
    LOW_LABEL,
    MODELOPT_FORMATS,
    REPORT_SESSION_OPTIONS,
    QuantizeConfig,
    QuantizedGraph,
    Variant,
    fp16_pins,
    int4_block_size,
    plan_exclusions,
)
from .staging import has_external_data, stage
from .store import CALIBRATION_DIR, update_calibration_entry
from .traceset import TraceSet, load_traces

__all__ = ["REPORT_SESSION_OPTIONS", "QuantizeConfig", "QuantizedGraph", "Variant", "quantize_graph",
           "quantize_graphs", "quantize_package"]


@dataclass
class _Job:
    """One graph on its way through a quantizer: the plan, the scratch paths, the result's details."""

    graph: str
    src: Path
    dst: Path
    staged: Path
    out: Path
    traces: TraceSet | None
    quantize: list[str]
    excluded: list[str]
    op_types: list[str]
    block: int | None
    start: float

    def spec(self) -> dict:
        return {"graph": self.graph, "src": str(self.staged), "dst": str(self.out), "quantize": self.quantize,
                "excluded": self.excluded, "op_types": self.op_types, "block_size": self.block,
                "details": str(self.out.parent / f"{self.out.name}.details.json")}


def _plan(src: Path, dst: Path, graph: str, cfg: QuantizeConfig, traces: TraceSet | None, work: Path) -> _Job:
    start = time.perf_counter()
    model = onnx.load(str(src), load_external_data=False)
    quantize, excluded = plan_exclusions(model, graph, cfg)
    block = None
    if cfg.format == "int4-awq":
        block, unblocked = int4_block_size(model, quantize)
        quantize = [n for n in quantize if n not in unblocked]
        excluded = [g.name for g in gemm_nodes(model) if g.name not in quantize]
    elif cfg.format == "fp16":
        excluded = fp16_pins(model, cfg)
    if not quantize:
        raise DartrtError(f"{graph}: the recipe leaves no GEMM to quantize (check --keep/only)")
    if cfg.calibrated and traces is None:
        raise DartrtError(f"{graph}: the {cfg.format} format needs recorded traces (run `dartrt calibrate`)")
    folder = work / graph
    folder.mkdir()
    return _Job(graph, src, dst, stage(src, folder), folder / f"out.{dst.name}", traces, quantize, excluded,
                present_op_types(model), block, start)


def _finish(job: _Job, cfg: QuantizeConfig) -> QuantizedGraph:
    """Check the quantizer's output, copy it to ``job.dst`` and read off what it really holds."""
    if not job.out.is_file():
        raise DartrtError(f"{job.graph}: the {cfg.format} quantizer wrote no output")
    if has_external_data(job.out):  # > 2 GB models: the data file would need moving with it
        raise DartrtError(f"{job.graph}: quantized graphs with external data are not supported yet")
    if cfg.format == "qdq":
        qmodel = onnx.load(str(job.out))
        if dedicate_qdq_pairs(qmodel):
            onnx.save(qmodel, str(job.out))
    onnx.checker.check_model(str(job.out))
    shutil.copyfile(job.out, job.dst)
    info = Path(job.spec()["details"])
    details: dict = json.loads(info.read_text()) if info.is_file() else {}
    child_seconds = details.pop("seconds", None)  # ModelOpt: this graph's own share of the child
    qmodel = onnx.load(str(job.dst))
    excluded = job.excluded
    if cfg.format == "int4-awq":
        details = {"calibration_method": INT4_METHOD, "block_size": job.block,
                   "block_axis": "K (DequantizeLinear axis 0)", "symmetric": True,
                   "activations": "not quantized (weight-only)", **details}
    elif cfg.format == "fp8":
        details = {"dtype": "float8e4m3fn", "activations": f"per tensor, {cfg.method} calibration on the traces",
                   "weights": "as ModelOpt quantizes them, stored FP8 (dq_only)", **details}
    if cfg.format == "fp16":
        done = low_precision_gemms(qmodel)
        excluded = [g.name for g in gemm_nodes(qmodel) if g.name not in done]
        samples = int(details.get("calibration_feeds", 0))
    else:
        done = int8_gemms(qmodel)
        n = len(job.traces) if job.traces is not None and cfg.calibrated else 0
        samples = min(n, cfg.samples or n)
    details["layout"] = quant_layout(qmodel)
    return QuantizedGraph(job.graph, "", done, excluded, job.op_types, weight_bytes(qmodel), samples,
                          child_seconds or round(time.perf_counter() - job.start, 2), details)


def quantize_graphs(items: list[tuple[Path, Path, str, TraceSet | None]], cfg: QuantizeConfig) -> list[QuantizedGraph]:
    """Quantize (or, for ``fp16``, cast) FP32 graph files: ``items`` are (src, dst, graph, traces), dst a
    scratch path. The ModelOpt formats run all of them in one child process."""
    with tempfile.TemporaryDirectory(prefix="dartrt-quant-") as work:
        jobs = [_plan(src, dst, graph, cfg, traces, Path(work)) for src, dst, graph, traces in items]
        if cfg.format in MODELOPT_FORMATS:
            pkgs = {job.traces.pkg for job in jobs}
            if None in pkgs or len(pkgs) != 1:
                raise DartrtError("ModelOpt calibration needs traces stored in one package")
            run_in_child(cfg, pkgs.pop(), [job.spec() for job in jobs])
        for job in jobs:
            if cfg.format == "qdq-ort":
                run_ort_static(job.staged, job.out, job.traces, cfg, job.quantize, job.excluded)
            elif cfg.format == "dynamic":
                run_ort_dynamic(job.staged, job.out, job.quantize, job.excluded)
            elif cfg.format == "weight-only":
                run_weight_only(job.staged, job.out, job.quantize, job.excluded)
        return [_finish(job, cfg) for job in jobs]


def quantize_graph(src: Path, dst: Path, graph: str, cfg: QuantizeConfig, traces: TraceSet | None) -> QuantizedGraph:
    """Quantize one FP32 graph file into ``dst`` (a scratch path); returns what was done."""
    return quantize_graphs([(src, dst, graph, traces)], cfg)[0]


def quantize_package(pkg: str | Path, cfg: QuantizeConfig, graphs=GRAPHS, record: bool = True,
                     name: str | None = None, log=print) -> Variant:
    """Quantize the package's FP32 ``graphs`` with ``cfg`` into ``calibration/<graph>.<variant>.onnx``.

    Every graph is quantized in a scratch folder first; only when all succeeded are they moved into
    the package (by rename) and, with ``record``, the manifest's ``calibration.variants[<variant>]``
    written right after, so a failed run leaves the package as it was."""
    pkg = Path(pkg)
    manifest = Manifest.read(pkg).data
    variant = Variant(name or cfg.variant, cfg)
    with tempfile.TemporaryDirectory(prefix="dartrt-quant-") as work:
        rels = {graph: f"{CALIBRATION_DIR}/{graph}.{variant.name}.onnx" for graph in graphs}
        items = [(pkg / manifest["graphs"][graph]["file"], Path(work) / Path(rel).name, graph,
                  load_traces(pkg, graph) if cfg.calibrated else None) for graph, rel in rels.items()]
        for result in quantize_graphs(items, cfg):
            graph, rel = result.graph, rels[result.graph]
            result.file = rel
            variant.graphs[graph] = result
            log(f"  {graph}: {cfg.format} → {rel}: {len(result.quantized)} GEMMs {LOW_LABEL.get(cfg.format, 'INT8')}, "
                f"{len(result.excluded)} kept in {'fp32' if cfg.format == 'fp16' else cfg.high_precision} "
                f"({result.seconds:.1f}s)")
        (pkg / CALIBRATION_DIR).mkdir(exist_ok=True)
        for result in variant.graphs.values():
            atomic_copy(Path(work) / Path(result.file).name, pkg / result.file)
    if record:
        variants = dict((Manifest.read(pkg).data.get("calibration") or {}).get("variants") or {})
        variants[variant.name] = variant.to_dict()
        update_calibration_entry(pkg, "variants", variants)
    return variant


