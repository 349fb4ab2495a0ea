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
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from runtime.errors import DartrtError

from .graphinfo import (
    GEMM_OPS,
    exact,
    gemm_nodes,
    head_nodes,
    int8_gemms,
    modulation_nodes,
    present_op_types,
    scope_matches,
)
from .store import CALIBRATION_DIR, atomic_move, package_manifest, update_calibration_entry
from .traceset import TraceSet, load_traces

FORMATS = ("qdq", "qdq-ort", "dynamic", "weight-only")
METHODS = ("entropy", "max")
HIGH_PRECISIONS = ("fp32", "fp16")
GRAPHS = ("prefill", "decode")
WO_BLOCK = 128


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
        if self.high_precision == "fp16" and self.format != "qdq":
            raise DartrtError(f"--high-precision fp16 is for the TensorRT Q/DQ format (qdq), not {self.format}")
        if self.samples is not None and self.samples < 1:
            raise DartrtError(f"--samples must be >= 1, got {self.samples}")

    @property
    def variant(self) -> str:
        base = {"qdq": "int8", "qdq-ort": "int8-ort", "dynamic": "int8-dynamic", "weight-only": "int8-wo"}[self.format]
        return f"{base}-fp16" if self.format == "qdq" and self.high_precision == "fp16" else base

    @property
    def calibrated(self) -> bool:
        return self.format in ("qdq", "qdq-ort")


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


@dataclass
class Variant:
    name: str
    config: QuantizeConfig
    graphs: dict[str, QuantizedGraph] = field(default_factory=dict)

    @property
    def graph_files(self) -> dict[str, str]:
        return {g: q.file for g, q in self.graphs.items()}

    def to_dict(self) -> dict:
        return {"format": self.config.format, "method": self.config.method if self.config.calibrated else None,
                "high_precision_dtype": self.config.high_precision, "keep": list(self.config.keep),
                "only": list(self.config.only), "tool": tool_version(self.config.format),
                "graphs": {g: asdict(q) for g, q in self.graphs.items()}}


def tool_version(fmt: str) -> str:
    if fmt == "qdq":
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


def run_modelopt(spec: dict) -> None:
    """The ModelOpt call itself; runs in a child process (see `_run_modelopt`)."""
    from modelopt.onnx.quantization import quantize as mo_quantize

    cfg = QuantizeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items()})
    traces = load_traces(spec["pkg"], spec["graph"], check_hash=False)  # the parent checked the hash
    with quiet():
        mo_quantize(spec["src"], quantize_mode="int8", calibration_data_reader=traces.reader(cfg.samples),
                    calibration_method=cfg.method, calibration_eps=["cpu"], op_types_to_quantize=list(GEMM_OPS),
                    op_types_to_exclude=spec["op_types"], nodes_to_quantize=exact(spec["quantize"]),
                    nodes_to_exclude=exact(spec["excluded"]), high_precision_dtype=cfg.high_precision, dq_only=True,
                    use_external_data_format=_has_external_data(Path(spec["src"])), output_path=spec["dst"],
                    log_level="ERROR")


def _run_modelopt(src: Path, dst: Path, traces: TraceSet, cfg: QuantizeConfig, quantize: list[str],
                  excluded: list[str], op_types: list[str]) -> None:
    """ModelOpt in a child process: it monkey-patches onnxruntime's calibrators process-wide
    (modelopt/onnx/quantization/ort_patching.py), after which onnxruntime's own ``quantize_static``
    fails ("Histogram has not been collected"). A fresh interpreter (``python -m``, not
    multiprocessing, which would re-run an unguarded caller script) keeps every other format usable."""
    if importlib.util.find_spec("modelopt") is None:
        raise DartrtError("ModelOpt is not installed; pip install 'dartrt[quant]' or use --format qdq-ort")
    if traces.pkg is None:
        raise DartrtError("ModelOpt calibration needs traces stored in a package")
    spec = {"src": str(src), "dst": str(dst), "pkg": str(traces.pkg), "graph": traces.graph,
            "config": asdict(cfg), "quantize": quantize, "excluded": excluded, "op_types": op_types}
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "calibration.quantize"], input=json.dumps(spec), text=True,
                          capture_output=True, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise DartrtError(f"ModelOpt quantization of {traces.graph} failed: {lines[-1] if lines else proc.returncode}")


def _run_ort_static(src: Path, dst: Path, traces: TraceSet, cfg: QuantizeConfig, quantize: list[str],
                    excluded: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax}[cfg.method]
    with quiet():
        quantize_static(str(src), str(dst), traces.reader(cfg.samples), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(GEMM_OPS), per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=quantize, nodes_to_exclude=excluded,
                        calibrate_method=method, use_external_data_format=_has_external_data(src),
                        extra_options={"WeightSymmetric": True,
                                       # ORT also Q/DQs GEMM *outputs* by default (then SiLU's Sigmoid and
                                       # the residual Add would read INT8-rounded values): inputs only.
                                       "OpTypesToExcludeOutputQuantization": list(GEMM_OPS)})


def _run_ort_dynamic(src: Path, dst: Path, quantize: list[str], excluded: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_quantize=quantize, nodes_to_exclude=excluded,
                         use_external_data_format=_has_external_data(src))


def _run_weight_only(src: Path, dst: Path, quantize: list[str], excluded: list[str]) -> None:
    model = onnx.load(str(src))
    with quiet():  # importing it calls logging.basicConfig(level=INFO): import under quiet(), which restores
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quant = MatMulNBitsQuantizer(model, bits=8, block_size=WO_BLOCK, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=excluded, nodes_to_include=quantize,
                                     op_types_to_quantize=("MatMul",))
        quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=_has_external_data(src))


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
    """Initializer bytes by element type: what a memory-bound step reads."""
    out: dict[str, int] = {}
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        n = int(np.prod(init.dims)) if init.dims else 1
        key = np.dtype(dtype).name
        out[key] = out.get(key, 0) + n * np.dtype(dtype).itemsize
    return out


def quantize_graph(src: Path, dst: Path, graph: str, cfg: QuantizeConfig, traces: TraceSet | None) -> QuantizedGraph:
    """Quantize one FP32 graph file into ``dst`` (a scratch path); returns what was done."""
    start = time.perf_counter()
    model = onnx.load(str(src), load_external_data=False)
    quantize, excluded = plan_exclusions(model, graph, cfg)
    op_types = present_op_types(model)
    if not quantize:
        raise DartrtError(f"{graph}: the recipe leaves no GEMM to quantize (check --keep/only)")
    with tempfile.TemporaryDirectory(prefix="dartrt-quant-") as work:
        staged = _stage(src, Path(work))
        out = Path(work) / f"out.{dst.name}"
        if cfg.format == "qdq":
            _run_modelopt(staged, out, traces, cfg, quantize, excluded, op_types)
        elif cfg.format == "qdq-ort":
            _run_ort_static(staged, out, traces, cfg, quantize, excluded)
        elif cfg.format == "dynamic":
            _run_ort_dynamic(staged, out, quantize, excluded)
        else:
            _run_weight_only(staged, out, quantize, excluded)
        if not out.is_file():
            raise DartrtError(f"{graph}: the {cfg.format} quantizer wrote no output")
        if _has_external_data(out):  # > 2 GB models: the data file would need moving with it
            raise DartrtError(f"{graph}: quantized graphs with external data are not supported yet")
        if cfg.format == "qdq":
            qmodel = onnx.load(str(out))
            if dedicate_qdq_pairs(qmodel):
                onnx.save(qmodel, str(out))
        onnx.checker.check_model(str(out))
        shutil.copyfile(out, dst)
    qmodel = onnx.load(str(dst))
    samples = 0 if traces is None or not cfg.calibrated else min(len(traces), cfg.samples or len(traces))
    return QuantizedGraph(graph, "", int8_gemms(qmodel), excluded, op_types, weight_bytes(qmodel), samples,
                          round(time.perf_counter() - start, 2))


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
        for graph in graphs:
            src = pkg / manifest["graphs"][graph]["file"]
            traces = load_traces(pkg, graph) if cfg.calibrated else None
            rel = f"{CALIBRATION_DIR}/{graph}.{variant.name}.onnx"
            result = quantize_graph(src, Path(work) / Path(rel).name, graph, cfg, traces)
            result.file = rel
            variant.graphs[graph] = result
            log(f"  {graph}: {cfg.format} → {rel}: {len(result.quantized)} GEMMs INT8, {len(result.excluded)} "
                f"kept in {cfg.high_precision} ({result.seconds:.1f}s)")
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
