"""`dartrt bench`: latency against the torch reference and the roofline, in one run."""

from __future__ import annotations

import click

from dartrt.extras import require
from dartrt.runtime.errors import DartrtError

from .common import check_json_path, json_option, one_line_errors, threads_option


@click.command("bench")
@click.argument("package", type=click.Path(file_okay=False))
@click.option("--batch-size", "batches", type=click.IntRange(min=1), multiple=True,
              help="Images per batch, >= 1 (repeatable; CFG doubles the rows). Default: 1 and 8.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed turns per measurement, >= 1.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed turns first, >= 0.")
@json_option
@click.option("--source", default=None,
              help="The torch reference: checkpoint folder or preset. Default: the package's recorded source.")
@click.option("--no-torch", is_flag=True, help="Time onnxruntime alone (no reference, no GPU section).")
@click.option("--no-cfg", is_flag=True, help="Bench without classifier-free guidance (rows not doubled).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where onnxruntime and torch run the main comparison.")
@threads_option
@click.option("--precision", "precisions", multiple=True, metavar="NAME",
              help="Also time this precision of the package (repeatable: fp16, int8-dynamic, int8-wo, int8-ort, "
                   "int8, ...; 'all' = every one that runs on --device), interleaved with ORT fp32, which is "
                   "always timed. Default: fp32 only.")
@click.option("--gpu-only", is_flag=True,
              help="Only the GPU section: torch eager vs CUDA graph vs the HBM floor, no onnxruntime (for a GPU "
                   "machine without onnxruntime-gpu or TensorRT).")
@click.option("--gpu-dtype", "gpu_dtypes", type=click.Choice(["float32", "bfloat16", "float16"]), multiple=True,
              help="Dtype of the torch reference in the GPU section (repeatable). Default: float32 and bfloat16.")
@click.option("--gpu-compile", is_flag=True,
              help="GPU section: also time the torch.compile'd decode step replayed from a CUDA graph (gpt-fast's "
                   "recipe, the reference at its fastest); compiling takes tens of seconds per dtype and batch.")
@click.option("--adaptive", is_flag=True,
              help="Bench the adaptive order instead (onnxruntime, CPU): per image, the fixed order against adaptive "
                   "(every free cell), pruned (--candidates) and several cells per step (--cells-per-step), next to "
                   "the compute (MatMul rate) and bandwidth floors. Needs a package with the adaptive-order graphs.")
@click.option("--candidates", "candidates", type=click.IntRange(min=1), multiple=True,
              help="With --adaptive: also time pruning to N candidates, 1 <= N <= G*G (repeatable; default G*G/16).")
@click.option("--cells-per-step", "cells", type=click.IntRange(min=1), multiple=True,
              help="With --adaptive: also time K cells per step, 1 <= K <= G*G (repeatable).")
@one_line_errors
def bench(package, batches, repeats, warmup, json_path, source, no_torch, no_cfg, device, threads, precisions,
          gpu_only, gpu_dtypes, gpu_compile, adaptive, candidates, cells):
    """Latency of PACKAGE: onnxruntime vs the torch reference, interleaved in one run, next to the
    memory-bandwidth floor measured in the same run (and torch eager vs CUDA graph on a GPU).
    With --precision, INT8 variants run in the same round-robin, priced by their own weight bytes."""
    check_json_path(json_path)
    if (candidates or cells) and not adaptive:
        raise DartrtError("--candidates and --cells-per-step go with --adaptive")
    against = "" if no_torch else " against the torch reference (--no-torch times onnxruntime alone)"
    require(("onnx",) if no_torch or adaptive else ("onnx", "torch", "safetensors"), f"`dartrt bench`{against}")
    from dartrt.bench.suite import run_bench

    run_bench(package, batch_sizes=batches or (1, 8), repeats=repeats, cfg=not no_cfg, source=source,
              device=device, json_path=json_path, warmup=warmup, threads=threads, use_torch=not no_torch,
              precisions=precisions, gpu_only=gpu_only, gpu_dtypes=gpu_dtypes or ("float32", "bfloat16"),
              gpu_compile=gpu_compile, echo=click.echo, log=lambda line: click.echo(f"bench: {line}", err=True),
              adaptive=adaptive, candidates=candidates, cells=cells)
    if json_path:
        click.echo(f"wrote {json_path}")
