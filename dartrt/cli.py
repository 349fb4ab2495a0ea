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
@click.option("-o", "--out", type=click.Path(file_okay=False), default="out", show_default=True)
@one_line_errors
def generate(source, classes, n_per_class, cfg, cfg_schedule, seed, order, top_k, top_p, temperature,
             batch_size, backend, dtype, out):
    """Generate images from SOURCE: a package, a checkpoint folder, a preset (random weights), or
    nothing for the bundled demo model. Writes one PNG per image and a labelled grid.png."""
    from tqdm import tqdm

    from runtime.pipeline import generate_with_backend
    from runtime.images import make_grid, save_png

    engine = open_backend(source, backend, dtype)
    info = engine.info
    class_ids = list(classes) if classes else list(range(info.num_classes))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=1, unit="step", desc=f"generate ({engine.name})", file=sys.stderr)

    def on_step(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    result = generate_with_backend(
        engine, class_ids, n_per_class=n_per_class, cfg=cfg, cfg_schedule=cfg_schedule, order=load_order(order),
        seed=seed, temperature=temperature, top_k=top_k, top_p=top_p, batch_size=batch_size, on_step=on_step)
    bar.close()
    import numpy as np

    for i, (image, cid) in enumerate(zip(result.images, result.class_ids)):
        save_png(image, out_dir / f"{i:04d}_class{cid}.png")
    pixels = np.stack([np.asarray(im) for im in result.images])
    labels = [info.class_name(c) for c in result.class_ids[::n_per_class]]
    save_png(make_grid(pixels, nrow=n_per_class, labels=labels), out_dir / "grid.png")
    click.echo(f"wrote {len(result.images)} images and grid.png to {out_dir}")


def open_backend(source: str | None, backend: str, dtype: str = "fp32"):
    """A runtime Backend for SOURCE (see `generate`)."""
    if source is not None and (Path(source) / "manifest.json").is_file():
        if backend == "torch":
            raise DartrtError(f"{source} is an exported package; the torch backend needs a checkpoint or preset")
        from runtime.package import open_package_backend

        return open_package_backend(source, backend)
    if backend not in ("auto", "torch"):
        raise DartrtError(f"backend {backend} needs an exported package (run `dartrt export` first)")
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
@one_line_errors
def train_demo_cmd(out, quick, run_eval):
    """Retrain the bundled demo (classifier, VQ tokenizer, DAR) from scratch, seeded, on the CPU."""
    from dar.demo.train import QUICK, DemoRecipe, train_demo

    report = train_demo(out, QUICK if quick else DemoRecipe(), log=click.echo)
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
                   f"{row['frechet_distance']:.3f} ({row['fd_ratio_to_real']:.2f}x real), {row['seconds']:.0f}s")
    if write:
        atomic_write(folder / "metrics.json", lambda p: Path(p).write_text(json.dumps(report, indent=2) + "\n"))
        click.echo(f"wrote {folder / 'metrics.json'}")


if __name__ == "__main__":
    main()
