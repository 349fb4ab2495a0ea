"""`dartrt`: export, build, calibrate, generate, verify and bench DAR image generators.

Every command turns a `DartrtError` (bad input, corrupt file, unsupported setting) into one line on
stderr and exit status 2; torch and onnxruntime are imported only by the commands that need them.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from runtime.errors import DartrtError


def one_line_errors(fn):
    """Report user-facing errors as a single line instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DartrtError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dartrt")
def main() -> None:
    """Export DAR-family image generators to ONNX/TensorRT packages and run them."""


def generation_options(fn):
    """The sampling options shared by `generate` and friends (defaults come from the model)."""
    options = [
        click.option("--class", "-c", "classes", type=int, multiple=True,
                     help="Class id (repeatable). Default: every class."),
        click.option("--n", "n_per_class", type=int, default=1, show_default=True, help="Images per class."),
        click.option("--cfg", type=float, default=None, help="CFG scale (model default if unset)."),
        click.option("--cfg-schedule", type=click.Choice(["constant", "linear", "power-cosine"]), default=None),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--order", default=None, help="diagonal | diagonal-mirror | raster | a .npy permutation."),
        click.option("--top-k", type=int, default=None),
        click.option("--top-p", type=float, default=None),
        click.option("--temperature", type=float, default=None),
        click.option("--batch-size", type=int, default=8, show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def load_order(order: str | None):
    if order is None or not order.endswith(".npy"):
        return order
    import numpy as np

    try:
        return np.load(order)
    except (OSError, ValueError) as exc:
        raise DartrtError(f"cannot read order file {order}: {exc}") from None


@main.command()
@click.argument("source", required=False)
@generation_options
@click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto", show_default=True,
              help="auto: onnxruntime for a package, torch for a checkpoint or preset.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="torch backend only.")
@click.option("--precision", default=None,
              help="Package only: fp32 (default), fp16 (prepared graphs) or a calibration variant (int8, "
                   "int8-dynamic, ...); an unknown name lists what the package has.")
@click.option("-o", "--out", type=click.Path(file_okay=False), default="out", show_default=True)
@one_line_errors
def generate(source, classes, n_per_class, cfg, cfg_schedule, seed, order, top_k, top_p, temperature,
             batch_size, backend, dtype, precision, out):
    """Generate images from SOURCE: a package, a checkpoint folder, a preset (random weights), or
    nothing for the bundled demo model. Writes one PNG per image and a labelled grid.png."""
    from tqdm import tqdm

    from runtime.images import make_grid, save_png
    from runtime.pipeline import generate_with_backend

    engine = open_backend(source, backend, dtype, precision)
    info = engine.info
    class_ids = list(classes) if classes else list(range(info.num_classes))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bars: list = []  # created on the first step, so a rejected setting prints only its error line

    def on_step(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="step", desc=f"generate ({engine.name})", file=sys.stderr))
        bars[0].update(done - bars[0].n)

    result = generate_with_backend(
        engine, class_ids, n_per_class=n_per_class, cfg=cfg, cfg_schedule=cfg_schedule, order=load_order(order),
        seed=seed, temperature=temperature, top_k=top_k, top_p=top_p, batch_size=batch_size, on_step=on_step)
    for bar in bars:
        bar.close()
    import numpy as np

    for i, (image, cid) in enumerate(zip(result.images, result.class_ids)):
        save_png(image, out_dir / f"{i:04d}_class{cid}.png")
    pixels = np.stack([np.asarray(im) for im in result.images])
    labels = [info.class_name(c) for c in result.class_ids[::n_per_class]]
    save_png(make_grid(pixels, nrow=n_per_class, labels=labels), out_dir / "grid.png")
    click.echo(f"wrote {len(result.images)} images and grid.png to {out_dir}")


def open_backend(source: str | None, backend: str, dtype: str = "fp32", precision: str | None = None):
    """A runtime Backend for SOURCE (see `generate`). ``precision`` selects a package's graphs; the torch
    reference has only ``dtype``."""
    if source is not None and (Path(source) / "manifest.json").is_file():
        if backend == "torch":
            raise DartrtError(f"{source} is an exported package; the torch backend needs a checkpoint or preset")
        from runtime.package import open_package_backend

        return open_package_backend(source, backend, precision=precision)
    if backend not in ("auto", "torch"):
        raise DartrtError(f"backend {backend} needs an exported package (run `dartrt export` first)")
    if precision is not None:
        raise DartrtError(f"--precision selects a package's graphs, and {source or 'the bundled demo'} is not a "
                          "package; the torch backend takes --dtype")
    import torch

    from dar.backend import TorchBackend
    from dar.checkpoint import resolve_source

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    return TorchBackend(resolve_source(source), dtype=torch_dtype)


@main.group()
def convert() -> None:
    """Convert third-party checkpoints into dartrt's format (safetensors + config.json)."""


@convert.command("llamagen")
@click.option("--gpt", "gpt_path", type=click.Path(), required=True, help="LlamaGen GPT c2i .pt")
@click.option("--vq", "vq_path", type=click.Path(), required=True, help="LlamaGen VQ-16 .pt (vq_ds16_c2i.pt)")
@click.option("--model", "preset", default="GPT-B", show_default=True, help="GPT-B/L/XL/XXL/3B")
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True)
@one_line_errors
def convert_llamagen(gpt_path, vq_path, preset, out):
    """Import LlamaGen c2i GPT + VQ-16 checkpoints."""
    from dar.convert import convert_llamagen as run

    run(gpt_path, vq_path, preset, out)
    click.echo(f"wrote {out}")


@main.command("export")
@click.argument("source", required=False)
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True, help="Package folder to write.")
@click.option("--opset", type=int, default=24, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing package.")
@one_line_errors
def export_cmd(source, out, opset, force):
    """Export SOURCE (checkpoint folder, preset, or the bundled model) to an ONNX package."""
    from dar.checkpoint import resolve_source
    from exporter import export_package

    if Path(out).exists() and not force:
        raise DartrtError(f"{out} already exists (use --force to overwrite)")
    ckpt = resolve_source(source)
    click.echo(f"exporting {ckpt.source} → {out}")
    report = export_package(ckpt, out, force=force, opset=opset, log=click.echo)
    click.echo(f"wrote {report.package} in {report.seconds:.1f}s")


@main.command("train-demo")
@click.option("-o", "--out", type=click.Path(file_okay=False), default="models/demo", show_default=True)
@click.option("--quick", is_flag=True, help="A seconds-long smoke run (tiny step counts; not a usable model).")
@click.option("--eval/--no-eval", "run_eval", default=True, show_default=True,
              help="Measure image quality afterwards and write metrics.json.")
@click.option("--threads", type=int, default=2, show_default=True,
              help="torch threads (use 1 on a machine shared with other jobs: oversubscription is far slower).")
@click.option("--reuse-classifier", is_flag=True, help="Keep the (seeded) classifier already in --out.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Keep the trained VQ and its token grids here and reuse them when the recipe matches "
                   "(retraining only the DAR then skips the tokenizer).")
@click.option("--budget-minutes", type=float, default=None,
              help="Wall-clock budget for the whole run; the DAR trains until it is spent (its LR schedule follows "
                   "the clock). Default: the recipe's 45. 0: no clock, the DAR runs its 20,000-step cap (hours).")
@one_line_errors
def train_demo_cmd(out, quick, run_eval, threads, reuse_classifier, cache_dir, budget_minutes):
    """Retrain the bundled demo (classifier, VQ tokenizer, DAR) from scratch, seeded, on the CPU."""
    import dataclasses
    import math

    from dar.demo.train import QUICK, DemoRecipe, train_demo

    recipe = dataclasses.replace(QUICK if quick else DemoRecipe(), threads=threads)
    if budget_minutes is not None:
        if not math.isfinite(budget_minutes) or budget_minutes < 0:
            raise DartrtError(f"--budget-minutes must be a finite number >= 0, got {budget_minutes}")
        recipe = dataclasses.replace(recipe, budget_minutes=budget_minutes or None)
    report = train_demo(out, recipe, log=click.echo, reuse_classifier=reuse_classifier, cache_dir=cache_dir)
    click.echo(f"trained in {report['timings_seconds']['total']:.0f}s: {report['timings_seconds']}")
    if run_eval:
        _eval_demo(out, n_per_class=2 if quick else 50, seed=0, backend="torch", write=True)


@main.command("eval-demo")
@click.argument("source", required=False)
@click.option("--n", "n_per_class", type=int, default=50, show_default=True, help="Images per class.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto", show_default=True)
@click.option("--write", is_flag=True, help="Store the result as SOURCE's metrics.json (checkpoints only).")
@one_line_errors
def eval_demo_cmd(source, n_per_class, seed, backend, write):
    """Class accuracy and Fréchet distance of generated demo images, at CFG 1.0 and the default CFG."""
    _eval_demo(source, n_per_class, seed, backend, write)


def _eval_demo(source, n_per_class: int, seed: int, backend: str, write: bool) -> None:
    import json

    from dar.checkpoint import BUNDLED, atomic_write
    from dar.demo.evaluate import evaluate_backend

    if n_per_class < 1:
        raise DartrtError(f"--n must be >= 1, got {n_per_class}")
    engine = open_backend(source, backend)
    folder = Path(source) if source else BUNDLED
    classifier_dir = folder if (folder / "classifier.json").is_file() else BUNDLED
    report = evaluate_backend(engine, classifier_dir, n_per_class=n_per_class, seed=seed)
    click.echo(f"real held-out images: Fréchet distance {report['real_heldout_frechet_distance']:.3f}")
    for cfg, row in report["by_cfg"].items():
        click.echo(f"cfg {cfg:>4}: class accuracy {row['class_accuracy']:.3f}, Fréchet distance "
                   f"{row['frechet_distance']:.3f} ({row['fd_ratio_to_real']:.2f}x real; shift of the means "
                   f"{row['frechet_mean_term']:.3f}), {row['seconds']:.0f}s")
        if row["per_class_fd_ratio"]:
            click.echo("  Fréchet distance by class, x real: " + ", ".join(
                f"{name} {ratio:.1f}" for name, ratio in row["per_class_fd_ratio"].items() if ratio is not None))
    if write:
        atomic_write(folder / "metrics.json", lambda p: Path(p).write_text(json.dumps(report, indent=2) + "\n"))
        click.echo(f"wrote {folder / 'metrics.json'}")


@main.command("verify")
@click.argument("package", type=click.Path(file_okay=False))
@click.option("--backend", default="onnxruntime", show_default=True,
              help="onnxruntime (CUDA when it runs there, else CPU) | onnxruntime-cpu | onnxruntime-cuda | tensorrt.")
@click.option("--source", default=None,
              help="Checkpoint folder or preset the package was exported from. Default: the manifest's source.")
@click.option("--seeds", type=int, default=2, show_default=True, help="Seeds for the sequence-level runs.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime (default: all).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the checks to this JSON file.")
@click.option("--precision", default=None,
              help="fp32 (default on onnxruntime; held to 1e-4), fp16 or a calibration variant (held to "
                   "teacher-forced top-1 agreement); on tensorrt the engine precision (default: best built).")
@one_line_errors
def verify(package, backend, source, seeds, threads, json_path, precision):
    """Check PACKAGE against the PyTorch reference: graphs, teacher-forced step logits, generated token
    grids, decoded images, and the decode graph under Polygraphy. Exit 1 if any check fails."""
    import json

    from dar.checkpoint import atomic_write
    from exporter.parity import ParitySettings, format_table, verify_package

    if threads is not None and threads < 1:
        raise DartrtError(f"--threads must be >= 1, got {threads}")
    if json_path is not None and not Path(json_path).resolve().parent.is_dir():
        raise DartrtError(f"cannot write {json_path}: its folder does not exist")
    settings = ParitySettings(seeds=seeds, threads=threads)
    report = verify_package(package, backend, source, settings, log=lambda msg: click.echo(f"  {msg}", err=True),
                            precision=precision)
    click.echo(f"{report.package}: {report.backend} on {report.device} against {report.source}")
    if report.precision != "fp32":
        click.echo(f"precision {report.precision}: judged by teacher-forced top-1 agreement (step:top1); the fp32 "
                   "bounds (1e-4 logits, identical tokens) are shown as INFO, not applied")
    click.echo(format_table(report.checks))
    failed = [c.name for c in report.failed]
    click.echo(f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} ({report.seconds:.1f}s)")
    if json_path is not None:
        text = json.dumps(report.to_json(), indent=2) + "\n"
        atomic_write(Path(json_path), lambda p: Path(p).write_text(text))
    if failed:
        sys.exit(1)


@main.command("bench")
@click.argument("package", type=click.Path(file_okay=False))
@click.option("--batch", "batches", type=int, multiple=True, help="Batch size (repeatable). Default: 1 and 8.")
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed turns per measurement.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed turns first.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report here.")
@click.option("--source", default=None,
              help="The torch reference: checkpoint folder or preset. Default: the package's recorded source.")
@click.option("--no-torch", is_flag=True, help="Time onnxruntime alone (no reference, no GPU section).")
@click.option("--no-cfg", is_flag=True, help="Bench without classifier-free guidance (rows not doubled).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where onnxruntime and torch run the main comparison.")
@click.option("--threads", type=int, default=None, help="Intra-op threads for both backends (default: usable CPUs).")
@click.option("--precision", "precisions", multiple=True, metavar="NAME",
              help="Also time this calibration variant (repeatable: int8-dynamic, int8-wo, int8-ort, int8; "
                   "'all' = every variant that runs on --device), interleaved with ORT fp32, which is always "
                   "timed. Default: fp32 only.")
@click.option("--gpu-only", is_flag=True,
              help="Only the GPU section: torch eager vs CUDA graph vs the HBM floor, no onnxruntime (for a GPU "
                   "machine without onnxruntime-gpu or TensorRT).")
@click.option("--gpu-dtype", "gpu_dtypes", type=click.Choice(["float32", "bfloat16", "float16"]), multiple=True,
              help="Dtype of the torch reference in the GPU section (repeatable). Default: float32 and bfloat16.")
@click.option("--gpu-compile", is_flag=True,
              help="GPU section: also time the torch.compile'd decode step replayed from a CUDA graph (gpt-fast's "
                   "recipe, the reference at its fastest); compiling takes tens of seconds per dtype and batch.")
@one_line_errors
def bench(package, batches, repeats, warmup, json_path, source, no_torch, no_cfg, device, threads, precisions,
          gpu_only, gpu_dtypes, gpu_compile):
    """Latency of PACKAGE: onnxruntime vs the torch reference, interleaved in one run, next to the
    memory-bandwidth floor measured in the same run (and torch eager vs CUDA graph on a GPU).
    With --precision, INT8 variants run in the same round-robin, priced by their own weight bytes."""
    from bench.suite import run_bench

    run_bench(package, batch_sizes=batches or (1, 8), repeats=repeats, cfg=not no_cfg, source=source,
              device=device, json_path=json_path, warmup=warmup, threads=threads, use_torch=not no_torch,
              precisions=precisions, gpu_only=gpu_only, gpu_dtypes=gpu_dtypes or ("float32", "bfloat16"),
              gpu_compile=gpu_compile, echo=click.echo, log=lambda line: click.echo(f"bench: {line}", err=True))
    if json_path:
        click.echo(f"wrote {json_path}")


@main.command("build")
@click.argument("package", type=click.Path(file_okay=False))
@click.option("--precision", type=click.Choice(["fp16", "int8", "fp8", "int4-awq"]), required=True,
              help="fp16: the FP16-cast graphs (prepared automatically); int8 / fp8 / int4-awq: the Q/DQ graphs "
                   "of `dartrt calibrate --format qdq|fp8|int4-awq` (the -fp16 variant when there is one).")
@click.option("--max-batch", type=int, default=8, show_default=True,
              help="Images per batch; decoder engines take up to 2x rows (CFG).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache to load and append to (speeds up rebuilds).")
@click.option("--graph", "graphs", type=click.Choice(["prefill", "decode", "vq_decoder"]), multiple=True,
              help="Build only this graph (repeatable). Default: all three.")
@one_line_errors
def build_cmd(package, precision, max_batch, timing_cache, graphs):
    """Build strongly typed TensorRT engines for PACKAGE into PACKAGE/engines/ and record them
    (GPU, compute capability, TensorRT version, profiles) in its manifest."""
    from graphs.trt_build import build_engines, require_tensorrt

    require_tensorrt()
    report = build_engines(package, precision, graphs=tuple(graphs) or ("prefill", "decode", "vq_decoder"),
                           max_batch=max_batch, timing_cache=timing_cache, log=click.echo)
    click.echo(f"built {', '.join(report.engines)} in {package}")


@main.command("calibrate")
@click.argument("package", type=click.Path(file_okay=False))
@click.option("--samples", type=int, default=64, show_default=True,
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
@click.option("--images", type=int, default=10, show_default=True, help="Images for the FP32-vs-INT8 comparison.")
@click.option("--eval-n", type=int, default=0, show_default=True,
              help="Demo model only: images per class for class accuracy / Fréchet distance (0: skip).")
@click.option("--sensitivity", is_flag=True, help="Also rank layer groups by INT8 cost and report the trade-off.")
@click.option("--auto-keep/--no-auto-keep", default=True, show_default=True,
              help="If the qdq variant misses top-1 0.95, keep its costliest sublayer kinds in high precision.")
@click.option("--reuse-traces", is_flag=True, help="Keep the recorded traces instead of re-recording them.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quantize-head", is_flag=True,
              help="Quantize the logits head too (kept high precision by default: CFG amplifies its error); "
                   "the last ~15 % of CPU INT8 speed.")
@one_line_errors
def calibrate_cmd(package, samples, method, formats, high_precision, keep, source, images, eval_n, sensitivity,
                  auto_keep, reuse_traces, seed, quantize_head):
    """Record real generation traces into PACKAGE, write INT8 (FP8, INT4, FP16) graphs under
    PACKAGE/calibration/, and print how they compare with FP32 on the CPU (also written to
    calibration/report.json)."""
    from calibration.run import CalibrateOptions, calibrate, format_table

    opts = CalibrateOptions(samples=samples, method=method, formats=tuple(formats) or ("qdq",),
                            high_precision=high_precision, keep=tuple(keep), source=source, images=images,
                            eval_n=eval_n, sensitivity=sensitivity, auto_keep=auto_keep, reuse_traces=reuse_traces,
                            seed=seed, quantize_head=quantize_head)
    report = calibrate(package, opts, log=lambda msg: click.echo(msg, err=True))
    click.echo(format_table(report))
    click.echo(f"wrote {Path(package) / 'calibration' / 'report.json'} ({report['seconds']:.0f}s)")


if __name__ == "__main__":
    main()
