"""ModelOpt in a child process, for the ``qdq``, ``fp8``, ``int4-awq`` and ``fp16`` formats.

ModelOpt monkey-patches onnxruntime's calibrators process-wide, so it never runs in dartrt's own
process (`run_in_child`); ``python -m dartrt.calibration.modelopt_child`` reads a JSON spec on stdin
and runs every graph of one variant (`run_modelopt`).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from dartrt.runtime.errors import DartrtError

from .graphinfo import GEMM_OPS, exact
from .recipe import FP16_FEEDS, INT4_METHOD, QuantizeConfig
from .staging import quiet, write_external
from .traceset import load_traces


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
    external = write_external(Path(job["src"]))
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
    `run_in_child`): importing ModelOpt takes seconds, so one child per graph would pay it twice.
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


def run_in_child(cfg: QuantizeConfig, pkg: Path, jobs: list[dict]) -> None:
    """ModelOpt in a child process: it monkey-patches onnxruntime's calibrators process-wide
    (modelopt/onnx/quantization/ort_patching.py), after which onnxruntime's own ``quantize_static``
    fails ("Histogram has not been collected"). A fresh interpreter (``python -m``, not
    multiprocessing, which would re-run an unguarded caller script) keeps every other format usable."""
    if importlib.util.find_spec("modelopt") is None:
        raise DartrtError(f"ModelOpt is not installed; pip install 'dartrt[quant]'"
                          f"{' or use --format qdq-ort' if cfg.format == 'qdq' else ''}")
    spec = {"config": asdict(cfg), "pkg": str(pkg), "jobs": jobs}
    proc = subprocess.run([sys.executable, "-m", "dartrt.calibration.modelopt_child"], input=json.dumps(spec),
                          text=True, capture_output=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        graphs = "+".join(job["graph"] for job in jobs)
        raise DartrtError(f"ModelOpt {cfg.format} of {graphs} failed: {lines[-1] if lines else proc.returncode}")



if __name__ == "__main__":  # the child: a JSON spec on stdin
    run_modelopt(json.loads(sys.stdin.read()))
