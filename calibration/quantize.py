"""INT8 decoder graphs from the recorded traces: the TensorRT Q/DQ recipe and onnxruntime CPU variants.

Formats (each writes ``calibration/<graph>.<variant>.onnx`` for prefill and decode):

- ``qdq`` → variant ``int8`` (``int8-fp16`` with ``high_precision='fp16'``): ModelOpt ONNX PTQ, W8A8
  with explicit QuantizeLinear/DequantizeLinear. This is the TensorRT path: TRT 11 is strongly typed
  and has no INT8 builder flag or calibrator, so INT8 must be *in the graph* (toolchain notes §0.1,
  §3.4). Weights per output channel (symmetric, zero-point 0), stored as INT8 behind a DQ
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

Beyond INT8, same machinery, same exclusions, same report (toolchain notes: on Hopper, FP8 for larger
batches, INT4 AWQ for memory-bound small-batch decoding):

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

Every ModelOpt call (``qdq``, ``fp8``, ``int4-awq``, ``fp16``) runs in a child process (`run_modelopt`).

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

import contextlib
import importlib.util
import io
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from dartrt.runtime.errors import DartrtError

from .graphinfo import (
    GEMM_OPS,
    exact,
    gemm_nodes,
    head_nodes,
    int8_gemms,
    low_precision_gemms,
    modulation_nodes,
    present_op_types,
    quant_layout,
    scope_matches,
)
from .store import CALIBRATION_DIR, atomic_move, package_manifest, update_calibration_entry
from .traceset import TraceSet, load_traces

FORMATS = ("qdq", "qdq-ort", "dynamic", "weight-only", "fp8", "int4-awq", "fp16")
MODELOPT_FORMATS = ("qdq", "fp8", "int4-awq", "fp16")
VARIANTS = {"qdq": "int8", "qdq-ort": "int8-ort", "dynamic": "int8-dynamic", "weight-only": "int8-wo",
            "fp8": "fp8", "int4-awq": "int4-awq", "fp16": "fp16"}
METHODS = ("entropy", "max")
HIGH_PRECISIONS = ("fp32", "fp16")
FP16_REST = ("qdq", "fp8")  # formats ModelOpt can write with the non-quantized rest in fp16
GRAPHS = ("prefill", "decode")
WO_BLOCK = 128
INT4_METHOD = "awq_clip"
INT4_BLOCKS = (128, 64, 32, 16)  # ModelOpt's default first; smaller only where K needs it
# OrtBackend options the quality report opens a variant with (see the module docstring, int4-awq):
# at the default level ORT fuses INT4 DQ+MatMul into MatMulNBits with int8 activations.
REPORT_SESSION_OPTIONS: dict[str, dict] = {"int4-awq": {"optimization": "basic"}}
LOW_LABEL = {"fp8": "FP8", "int4-awq": "INT4", "fp16": "FP16"}  # what the quantized GEMMs are, for logs
FP16_FEEDS = 16  # traced calls AutoCast runs to find values beyond fp16's safe range


@dataclass(frozen=True)
class QuantizeConfig:
    """One INT8 recipe. ``keep``: extra module-scope regexes kept in high precision (e.g. ``layers\\.5\\.``);
    ``only``: quantize only GEMMs matching these (the sensitivity sweep); ``samples``: cap on the
    calibration samples used (None = all recorded)."""

    format: str = "qdq"
    method: str = "max"
    high_precision: str = "fp32"
    keep: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    keep_head: bool = True
    samples: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DartrtError(f"unknown --format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.method not in METHODS:
            raise DartrtError(f"unknown --method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.high_precision not in HIGH_PRECISIONS:
            raise DartrtError(f"high precision must be one of {', '.join(HIGH_PRECISIONS)}")
        if self.high_precision == "fp16" and self.format not in (*FP16_REST, "fp16"):
            raise DartrtError(f"--high-precision fp16 is for the TensorRT Q/DQ formats ({', '.join(FP16_REST)}), "
                              f"not {self.format}")
        if self.samples is not None and self.samples < 1:
            raise DartrtError(f"--samples must be >= 1, got {self.samples}")

    @property
    def variant(self) -> str:
        base = VARIANTS[self.format]
        return f"{base}-fp16" if self.format in FP16_REST and self.high_precision == "fp16" else base

    @property
    def calibrated(self) -> bool:
        """Whether the format reads the traces (activation ranges, AWQ clipping, AutoCast's feeds)."""
        return self.format in ("qdq", "qdq-ort", "fp8", "int4-awq", "fp16")

    @property
    def method_used(self) -> str | None:
        """The calibration method the format really applies (recorded in the manifest)."""
        if self.format in ("qdq", "qdq-ort", "fp8"):
            return self.method
        return INT4_METHOD if self.format == "int4-awq" else None

    @property
    def rest_dtype(self) -> str:
        """Dtype of what the format leaves unquantized (fp16 graphs: everything but the FP32 islands)."""
        return "fp16" if self.format == "fp16" else self.high_precision


@dataclass
class QuantizedGraph:
    """One written graph and what the recipe did to it."""

    graph: str
    file: str  # package-relative
    quantized: list[str]
    excluded: list[str]
    excluded_op_types: list[str]
    weight_bytes: dict[str, int]
    samples: int
    seconds: float
    details: dict = field(default_factory=dict)  # format specifics: layout read off the graph, block size, ...


@dataclass
class Variant:
    name: str
    config: QuantizeConfig
    graphs: dict[str, QuantizedGraph] = field(default_factory=dict)

    @property
    def graph_files(self) -> dict[str, str]:
        return {g: q.file for g, q in self.graphs.items()}

    def to_dict(self) -> dict:
        return {"format": self.config.format, "method": self.config.method_used,
                "high_precision_dtype": self.config.rest_dtype, "keep": list(self.config.keep),
                "only": list(self.config.only), "keep_head": self.config.keep_head,
                "tool": tool_version(self.config.format),
                "graphs": {g: asdict(q) for g, q in self.graphs.items()}}


def tool_version(fmt: str) -> str:
    if fmt in MODELOPT_FORMATS:
        from importlib.metadata import version

        return f"nvidia-modelopt {version('nvidia-modelopt')}"
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def plan_exclusions(model: onnx.ModelProto, graph: str, cfg: QuantizeConfig) -> tuple[list[str], list[str]]:
    """(GEMM nodes to quantize, GEMM nodes kept in high precision) under the recipe."""
    names = [g.name for g in gemm_nodes(model)]
    keep = set(scope_matches(model, cfg.keep)) if cfg.keep else set()
    if cfg.keep_head:
        keep |= set(head_nodes(model))
    if graph == "prefill":
        keep |= set(modulation_nodes(model))
    if cfg.only:
        chosen = set(scope_matches(model, cfg.only))
        keep |= {n for n in names if n not in chosen}
    return [n for n in names if n not in keep], [n for n in names if n in keep]


@contextlib.contextmanager
def quiet():
    """ModelOpt and ORT's calibrators print progress bars and per-call warnings (e.g. TensorScatter's
    'in-place optimization not activated', expected: the calibrator does not alias caches)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    loggers = [logging.getLogger(n) for n in ("", "onnxruntime", "onnxruntime.quantization", "modelopt")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
            ort.set_default_logger_severity(2)


def _stage(src: Path, work: Path) -> Path:
    """Copy a graph and its external data into a scratch folder: the quantizers write intermediates
    next to their input, and the package folder must only ever receive finished files."""
    for f in src.parent.iterdir():
        if f.name == src.name or f.name.startswith(src.name + "."):
            shutil.copyfile(f, work / f.name)
    return work / src.name


def _has_external_data(model_path: Path) -> bool:
    proto = onnx.load(str(model_path), load_external_data=False)
    return any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer)


PROTOBUF_LIMIT = 2**31 - 1


def _write_external(src: Path) -> bool:
    """Whether a quantized copy of ``src`` must use external data. The exporter moves weights out of the
    graph above 1 GiB (DAR-B's fp32 graphs), but a lower-precision copy of a graph under the 2 GB
    protobuf limit always fits inline, and inline is what `_finish` accepts; only sources at or above
    the limit (graph file plus its data files) still need external data, which is refused for now."""
    if not _has_external_data(src):
        return False
    total = sum(f.stat().st_size for f in src.parent.iterdir()
                if f.name == src.name or f.name.startswith(src.name + "."))
    return total >= PROTOBUF_LIMIT


def _int4_packer() -> str:
    """ModelOpt packs INT4 weights with a C++ extension it builds through ``cppimport`` (the
    ``nvidia-modelopt[onnx]`` extra), and its ``extensions`` module imports ``cppimport`` outside its
    own try/except, so a plain install fails at the first INT4 weight. Registering that module with
    ``round_and_pack_ext = None`` selects ModelOpt's own numpy packer, the fallback it already has for
    a failed build (same packed bytes). Child process only: nothing else imports ModelOpt there."""
    if importlib.util.find_spec("cppimport") is not None:
        return "modelopt C++ extension (cppimport)"
    import types

    stub = types.ModuleType("modelopt.onnx.quantization.extensions")
    stub.round_and_pack_ext = None  # type: ignore[attr-defined]
    sys.modules[stub.__name__] = stub
    return "modelopt numpy fallback (cppimport not installed)"


def _modelopt_job(cfg: QuantizeConfig, pkg: str, job: dict) -> dict:
    """One graph's ModelOpt call (child process); returns what it learned about the format."""
    traces = load_traces(pkg, job["graph"], check_hash=False)  # the parent checked the hash
    external = _write_external(Path(job["src"]))
    if cfg.format == "fp16":
        from dartrt.graphs.fp16 import Fp16Policy, convert_fp16

        reader = traces.reader(min(cfg.samples or FP16_FEEDS, FP16_FEEDS))
        feeds = list(iter(reader.get_next, None))
        result = convert_fp16(job["src"], job["dst"], feeds, Fp16Policy(extra_nodes=tuple(exact(job["excluded"]))))
        return {**result.to_dict(), "calibration_feeds": len(feeds)}
    from modelopt.onnx.quantization import quantize as mo_quantize

    if cfg.format == "int4-awq":
        mo_quantize(job["src"], quantize_mode="int4", calibration_data_reader=traces.reader(cfg.samples),
                    calibration_method=INT4_METHOD, calibration_eps=["cpu"], block_size=job["block_size"],
                    use_zero_point=False, nodes_to_exclude=exact(job["excluded"]), use_external_data_format=external,
                    output_path=job["dst"], log_level="ERROR")
        return {}
    mo_quantize(job["src"], quantize_mode="fp8" if cfg.format == "fp8" else "int8",
                calibration_data_reader=traces.reader(cfg.samples), calibration_method=cfg.method,
                calibration_eps=["cpu"], op_types_to_quantize=list(GEMM_OPS), op_types_to_exclude=job["op_types"],
                nodes_to_quantize=exact(job["quantize"]), nodes_to_exclude=exact(job["excluded"]),
                high_precision_dtype=cfg.high_precision, dq_only=True, use_external_data_format=external,
                output_path=job["dst"], log_level="ERROR")
    return {}


def run_modelopt(spec: dict) -> None:
    """The ModelOpt calls of one variant, every graph of it in this one child process (see
    `_run_modelopt`): importing ModelOpt takes seconds, so one child per graph would pay it twice.
    Each job's details (the INT4 packer, AutoCast's FP32 islands, its seconds) go to its JSON file."""
    cfg = QuantizeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items()})
    packer = _int4_packer() if cfg.format == "int4-awq" else None
    for job in spec["jobs"]:
        start = time.perf_counter()
        with quiet():
            details = _modelopt_job(cfg, spec["pkg"], job)
        if packer:
            details["int4_packing"] = packer
        details["seconds"] = round(time.perf_counter() - start, 2)
        Path(job["details"]).write_text(json.dumps(details))


def _run_modelopt(cfg: QuantizeConfig, pkg: Path, jobs: list[dict]) -> None:
    """ModelOpt in a child process: it monkey-patches onnxruntime's calibrators process-wide
    (modelopt/onnx/quantization/ort_patching.py), after which onnxruntime's own ``quantize_static``
    fails ("Histogram has not been collected"). A fresh interpreter (``python -m``, not
    multiprocessing, which would re-run an unguarded caller script) keeps every other format usable."""
    if importlib.util.find_spec("modelopt") is None:
        raise DartrtError(f"ModelOpt is not installed; pip install 'dartrt[quant]'"
                          f"{' or use --format qdq-ort' if cfg.format == 'qdq' else ''}")
    spec = {"config": asdict(cfg), "pkg": str(pkg), "jobs": jobs}
    proc = subprocess.run([sys.executable, "-m", "dartrt.calibration.quantize"], input=json.dumps(spec), text=True,
                          capture_output=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        graphs = "+".join(job["graph"] for job in jobs)
        raise DartrtError(f"ModelOpt {cfg.format} of {graphs} failed: {lines[-1] if lines else proc.returncode}")


def int4_block_size(model: onnx.ModelProto, names: list[str]) -> tuple[int, list[str]]:
    """(block size, GEMMs it cannot block): the first of `INT4_BLOCKS` that divides the K of every
    GEMM in ``names`` with K >= 16, and the GEMMs whose K that block does not divide (kept fp32)."""
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    k = {g.name: int(dims[g.weight][0]) for g in gemm_nodes(model)
         if g.name in names and g.op_type == "MatMul" and len(dims.get(g.weight, [])) == 2}
    wide = [v for v in k.values() if v >= INT4_BLOCKS[-1]]
    block = next((b for b in INT4_BLOCKS if all(v % b == 0 for v in wide)), INT4_BLOCKS[-1])
    return block, [n for n in names if n not in k or k[n] % block]


def _run_ort_static(src: Path, dst: Path, traces: TraceSet, cfg: QuantizeConfig, quantize: list[str],
                    excluded: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax}[cfg.method]
    with quiet():
        quantize_static(str(src), str(dst), traces.reader(cfg.samples), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(GEMM_OPS), per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=quantize, nodes_to_exclude=excluded,
                        calibrate_method=method, use_external_data_format=_write_external(src),
                        extra_options={"WeightSymmetric": True,
                                       # ORT also Q/DQs GEMM *outputs* by default (then SiLU's Sigmoid and
                                       # the residual Add would read INT8-rounded values): inputs only.
                                       "OpTypesToExcludeOutputQuantization": list(GEMM_OPS)})


def _run_ort_dynamic(src: Path, dst: Path, quantize: list[str], excluded: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_quantize=quantize, nodes_to_exclude=excluded,
                         use_external_data_format=_write_external(src))


def _run_weight_only(src: Path, dst: Path, quantize: list[str], excluded: list[str]) -> None:
    model = onnx.load(str(src))
    with quiet():  # importing it calls logging.basicConfig(level=INFO): import under quiet(), which restores
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quant = MatMulNBitsQuantizer(model, bits=8, block_size=WO_BLOCK, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=excluded, nodes_to_include=quantize,
                                     op_types_to_quantize=("MatMul",))
        quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=_write_external(src))


def dedicate_qdq_pairs(model: onnx.ModelProto) -> int:
    """Give every consumer of a shared activation Q→DQ its own pair (same scale, same zero point).

    ModelOpt quantizes an activation once when several GEMMs read it (w1 and w3 of the FFN share
    their input). TensorRT fuses that fine, but onnxruntime's CPU QDQ fusion then leaves those
    MatMuls unfused and dequantizes their INT8 weights on every call: 12 of the demo's 31 GEMMs, and
    a step 2.6x slower than FP32. Dedicated pairs let all of them become MatMulIntegerToFloat.
    Returns the number of pairs added."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    added = 0
    new_nodes = []
    for node in model.graph.node:
        new_nodes.append(node)
        if node.op_type != "DequantizeLinear" or len(consumers.get(node.output[0], [])) < 2:
            continue
        q = producers.get(node.input[0])
        if q is None or q.op_type != "QuantizeLinear" or list(q.input[1:]) != list(node.input[1:]) \
                or not all(name in inits for name in q.input[1:]):
            continue
        for k, user in enumerate(consumers[node.output[0]][1:], start=1):
            q_out, dq_out = f"{q.output[0]}_dedicated_{k}", f"{node.output[0]}_dedicated_{k}"
            # Own copies of the scale/zero point: with shared ones ORT's common-subexpression pass
            # merges the pairs straight back before its QDQ fusion sees them.
            params = []
            for name in q.input[1:]:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}_dedicated_{k}"
                model.graph.initializer.append(copy)
                params.append(copy.name)
            q2 = onnx.helper.make_node("QuantizeLinear", [q.input[0], *params], [q_out], name=f"{q.name}_dedicated_{k}")
            q2.attribute.extend(q.attribute)
            dq2 = onnx.helper.make_node("DequantizeLinear", [q_out, *params], [dq_out],
                                        name=f"{node.name}_dedicated_{k}")
            dq2.attribute.extend(node.attribute)
            new_nodes.extend([q2, dq2])
            for i, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[i] = dq_out
            added += 1
    if added:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
    return added


def weight_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Initializer bytes by element type: what a memory-bound step reads. 4-bit types are packed two
    to a byte in the file and on the device (numpy's stand-in dtype for them takes a whole byte)."""
    packed = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, getattr(onnx.TensorProto, "FLOAT4E2M1", -1)}
    out: dict[str, int] = {}
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        n = int(np.prod(init.dims)) if init.dims else 1
        key = np.dtype(dtype).name
        out[key] = out.get(key, 0) + ((n + 1) // 2 if init.data_type in packed else n * np.dtype(dtype).itemsize)
    return out


def _fp16_pins(model: onnx.ModelProto, cfg: QuantizeConfig) -> list[str]:
    """GEMMs an fp16 variant keeps in FP32 on top of `graphs.fp16`'s own islands (which already hold
    the logits head): the ``keep`` scopes, and with ``only`` every GEMM not chosen."""
    pinned = set(scope_matches(model, cfg.keep)) if cfg.keep else set()
    if cfg.only:
        chosen = set(scope_matches(model, cfg.only))
        pinned |= {g.name for g in gemm_nodes(model) if g.name not in chosen}
    return [g.name for g in gemm_nodes(model) if g.name in pinned]


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
        excluded = _fp16_pins(model, cfg)
    if not quantize:
        raise DartrtError(f"{graph}: the recipe leaves no GEMM to quantize (check --keep/only)")
    if cfg.calibrated and traces is None:
        raise DartrtError(f"{graph}: the {cfg.format} format needs recorded traces (run `dartrt calibrate`)")
    folder = work / graph
    folder.mkdir()
    return _Job(graph, src, dst, _stage(src, folder), folder / f"out.{dst.name}", traces, quantize, excluded,
                present_op_types(model), block, start)


def _finish(job: _Job, cfg: QuantizeConfig) -> QuantizedGraph:
    """Check the quantizer's output, copy it to ``job.dst`` and read off what it really holds."""
    if not job.out.is_file():
        raise DartrtError(f"{job.graph}: the {cfg.format} quantizer wrote no output")
    if _has_external_data(job.out):  # > 2 GB models: the data file would need moving with it
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
            _run_modelopt(cfg, pkgs.pop(), [job.spec() for job in jobs])
        for job in jobs:
            if cfg.format == "qdq-ort":
                _run_ort_static(job.staged, job.out, job.traces, cfg, job.quantize, job.excluded)
            elif cfg.format == "dynamic":
                _run_ort_dynamic(job.staged, job.out, job.quantize, job.excluded)
            elif cfg.format == "weight-only":
                _run_weight_only(job.staged, job.out, job.quantize, job.excluded)
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
    manifest = package_manifest(pkg)
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
            atomic_move(Path(work) / Path(result.file).name, pkg / result.file)
    if record:
        variants = dict((package_manifest(pkg).get("calibration") or {}).get("variants") or {})
        variants[variant.name] = variant.to_dict()
        update_calibration_entry(pkg, "variants", variants)
    return variant


if __name__ == "__main__":  # the ModelOpt child: a JSON spec on stdin
    run_modelopt(json.loads(sys.stdin.read()))
