"""`dartrt calibrate` and `dartrt build`: lower-precision graphs and TensorRT engines."""

from __future__ import annotations

from pathlib import Path

import click

from dartrt.extras import EXPORT_MODULES, require
from dartrt.runtime.contract import ALL_GRAPHS

from .common import one_line_errors


@click.command("calibrate")
@click.argument("package", type=click.Path(file_okay=False))
@click.option("--samples", type=click.IntRange(min=1), default=64, show_default=True,
              help="Decode calls recorded (stratified over positions); the KV caches make each one MBs.")
@click.option("--method", type=click.Choice(["entropy", "max"]), default="max", show_default=True,
              help="Activation range calibration for the Q/DQ formats (max: no clipping; entropy: KL clipping).")
@click.option("--format", "formats", type=click.Choice(["qdq", "qdq-ort", "dynamic", "weight-only", "fp8", "int4-awq",
                                                       "fp16"]),
              multiple=True, help="Variant (repeatable). qdq: ModelOpt W8A8 Q/DQ (TensorRT); qdq-ort: "
              "onnxruntime static Q/DQ; dynamic / weight-only: onnxruntime CPU paths; fp8: ModelOpt FP8 E4M3 "
              "Q/DQ; int4-awq: ModelOpt INT4 AWQ weight-only; fp16: AutoCast FP16 with FP32 islands. Default: qdq.")
@click.option("--high-precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Dtype of what is not quantized in qdq/fp8 (fp32 runs on the CPU; fp16 for TensorRT engines).")
@click.option("--keep", multiple=True,
              help="Module-scope regex kept in high precision (repeatable), e.g. 'layers\\.5\\.'.")
@click.option("--source", default=None, help="Checkpoint or preset the package was exported from (default: manifest).")
@click.option("--images", type=click.IntRange(min=1), default=10, show_default=True,
              help="Images for the FP32-vs-INT8 comparison, >= 1.")
@click.option("--eval-n", type=click.IntRange(min=0), default=0, show_default=True,
              help="Demo model only: images per class for class accuracy / Fréchet distance (0: skip).")
@click.option("--sensitivity", is_flag=True, help="Also rank layer groups by INT8 cost and report the trade-off.")
@click.option("--auto-keep/--no-auto-keep", default=True, show_default=True,
              help="If the qdq variant misses top-1 0.95, keep its costliest sublayer kinds in high precision.")
@click.option("--reuse-traces", is_flag=True, help="Keep the recorded traces instead of re-recording them.")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True,
              help="Seed of the trace plan and of the comparison images, >= 0.")
@click.option("--quantize-head", is_flag=True,
              help="Quantize the logits head too (kept high precision by default: CFG amplifies its error); "
                   "the last ~15 % of CPU INT8 speed.")
@one_line_errors
def calibrate_cmd(package, samples, method, formats, high_precision, keep, source, images, eval_n, sensitivity,
                  auto_keep, reuse_traces, seed, quantize_head):
    """Record real generation traces into PACKAGE, write INT8 (FP8, INT4, FP16) graphs under
    PACKAGE/calibration/, and print how they compare with FP32 on the CPU (also written to
    calibration/report.json)."""
    require(EXPORT_MODULES, "`dartrt calibrate` (it records traces with the torch reference)")
    from dartrt.calibration.run import CalibrateOptions, calibrate, format_table

    opts = CalibrateOptions(samples=samples, method=method, formats=tuple(formats) or ("qdq",),
                            high_precision=high_precision, keep=tuple(keep), source=source, images=images,
                            eval_n=eval_n, sensitivity=sensitivity, auto_keep=auto_keep, reuse_traces=reuse_traces,
                            seed=seed, quantize_head=quantize_head)
    report = calibrate(package, opts, log=lambda msg: click.echo(msg, err=True))
    click.echo(format_table(report))
    click.echo(f"wrote {Path(package) / 'calibration' / 'report.json'} ({report['seconds']:.0f}s)")




@click.command("build")
@click.argument("package", type=click.Path(file_okay=False))
@click.option("--precision", type=click.Choice(["fp16", "int8", "fp8", "int4-awq"]), required=True,
              help="fp16: the FP16-cast graphs (prepared automatically); int8 / fp8 / int4-awq: the Q/DQ graphs "
                   "of `dartrt calibrate --format qdq|fp8|int4-awq` (the -fp16 variant when there is one).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per batch; decoder engines take up to 2x rows (CFG).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache to load and append to (speeds up rebuilds).")
@click.option("--graph", "graphs", type=click.Choice(ALL_GRAPHS), multiple=True,
              help="Build only this graph (repeatable). Default: all three.")
@one_line_errors
def build_cmd(package, precision, max_batch, timing_cache, graphs):
    """Build strongly typed TensorRT engines for PACKAGE into PACKAGE/engines/ and record them
    (GPU, compute capability, TensorRT version, profiles) in its manifest."""
    from dartrt.graphs.trt_build import build_engines, require_tensorrt

    require_tensorrt()
    report = build_engines(package, precision, graphs=tuple(graphs) or ALL_GRAPHS,
                           max_batch=max_batch, timing_cache=timing_cache, log=click.echo)
    click.echo(f"built {', '.join(report.engines)} in {package}")
