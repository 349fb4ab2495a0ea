"""D-AR's commands: `dartrt decode` (tokens from anywhere → images with a package's diffusion decoder, no
torch), and `dartrt train-demo-dar` / `eval-demo-dar` (the trained D-AR demo's recipe and its judge)."""

from __future__ import annotations

from pathlib import Path

import click

from dartrt.extras import require
from dartrt.runtime.errors import DartrtError

from .common import (
    PACKAGE_BACKENDS,
    backend_option,
    check_training_output,
    one_line_errors,
    precision_option,
    threads_option,
)

TORCH_FREE_BACKENDS = tuple(b for b in PACKAGE_BACKENDS if b != "tensorrt")


def load_array(path: str, what: str):
    """A .npy file as a numpy array, or one line naming the file."""
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DartrtError(f"cannot read {what} file {path} as a numpy array: {' '.join(str(exc).split())}") from None


def write_previews(folder: Path, previews: list, nrow: int) -> list[Path]:
    """One PNG per group: ``group{k}.png``, every image's preview after group k, in a grid."""
    import numpy as np

    from dartrt.runtime.images import make_grid, save_png

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, images in enumerate(previews, start=1):
        path = folder / f"group{k}.png"
        save_png(make_grid(np.stack([np.asarray(im) for im in images]), nrow=nrow), path)
        paths.append(path)
    return paths


@click.command("decode")
@click.argument("package", type=click.Path(exists=True, file_okay=False))
@click.argument("tokens", type=click.Path(exists=True, dir_okay=False))
@click.option("--noise", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The decoder's initial x (x_0), float32 [n, 3, H, W] in D-AR's layout (.npy). "
                   "Default: drawn from --seed per image, as `dartrt generate` draws it.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the default noise (image i's x_0 comes from (seed, i)); ignored with --noise.")
@click.option("--previews", is_flag=True, help="Also write previews/group{k}.png: every image after group k.")
@click.option("--group", type=int, default=None,
              help="Stop after this many groups (1..G) and write that preview as the images; TOKENS may then hold "
                   "only the tokens those groups read.")
@click.option("--save-float", is_flag=True,
              help="Also write images.npy: the decoder's raw output, float32 [n, 3, H, W] before clamping to pixels.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images decoded together, >= 1 (the same images at every batch size).")
@backend_option(TORCH_FREE_BACKENDS)
@precision_option
@threads_option
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True, help="Folder for the PNGs.")
@one_line_errors
def decode_cmd(package, tokens, noise, seed, previews, group, save_float, batch_size, backend, precision, threads,
               out):
    """Decode D-AR token ids (TOKENS: a .npy of int ids [n, num_tokens], or [num_tokens] for one image) into
    images with PACKAGE's tokenizer graphs. Writes NNNN.png per image (and group PNGs with --previews)."""
    import numpy as np

    from dartrt.runtime.d_ar import decode_result, open_d_ar_package
    from dartrt.runtime.images import save_png, to_uint8

    ids = load_array(tokens, "tokens")
    x0 = load_array(noise, "noise") if noise is not None else None
    options = {} if threads is None else {"intra_op_threads": threads}
    engine = open_d_ar_package(package, backend, precision=precision, **options)
    result = decode_result(engine, ids, noise=x0, seed=seed, previews=previews, output="float", batch_size=batch_size,
                           groups=group)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(result.images)
    from PIL import Image

    for i, p in enumerate(pixels):
        save_png(Image.fromarray(p), out_dir / f"{i:04d}.png")
    if save_float:
        np.save(out_dir / "images.npy", np.asarray(result.images, dtype=np.float32))
    if previews:
        groups = [[Image.fromarray(p) for p in to_uint8(g)] for g in result.previews]
        write_previews(out_dir / "previews", groups, nrow=min(len(pixels), 8))
    click.echo(f"decoded {len(pixels)} image(s) with {engine.name} to {out_dir}"
               + (f" (+ {len(result.previews)} preview groups)" if previews else ""))


@click.command("train-demo-dar")
@click.option("-o", "--out", type=click.Path(file_okay=False), default="models/demo-dar", show_default=True,
              help="Folder for the D-AR checkpoint, its encoder, train_log.json and metrics.json.")
@click.option("--quick", is_flag=True, help="A seconds-long smoke run (tiny step counts; not a usable model).")
@click.option("--eval/--no-eval", "run_eval", default=True, show_default=True,
              help="Measure image quality afterwards and write metrics.json (outside the training budget).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch threads.")
@click.option("--budget-minutes", type=click.FloatRange(min=0), default=None,
              help="Wall-clock budget for the training; the decoder takes its share, the GPT the rest, each "
                   "annealing on the clock. Default: the recipe's 45. 0: no clock (the step caps; hours).")
@click.option("--tokens-from", "source", type=click.Path(file_okay=False), default=None,
              help="DAR demo folder whose VQ encoder and codebook give the tokens. Default: the bundled "
                   "models/demo-anyorder.")
@one_line_errors
def train_demo_dar_cmd(out, quick, run_eval, threads, budget_minutes, source):
    """Train the D-AR demo, seeded, on the CPU: the tokenizer's flow-matching pixel decoder (256 tokens, the
    any-order demo's VQ codes, in 8 coarse-to-fine groups) and a 1D GPT on the demo's shapes at 64x64."""
    import dataclasses
    import os

    # OpenMP threads that spin while they wait collapse when another process holds a core: a tokenizer step took
    # 7.0 s with spinning threads against 2.35 s with passive ones (0.7 s on an idle machine; 2 threads, a test
    # run beside it). Set before torch loads its OpenMP runtime; an explicit setting is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    require(("torch", "safetensors"), "`dartrt train-demo-dar`")
    from dartrt.dar.d_ar.demo.train import QUICK, DemoDARRecipe, train_demo_dar
    from dartrt.models import DEMO_ANYORDER

    recipe = dataclasses.replace(QUICK if quick else DemoDARRecipe(), threads=threads)
    if budget_minutes is not None:
        recipe = dataclasses.replace(recipe, budget_minutes=budget_minutes or None)
    check_training_output(out, "D-AR-demo")
    report = train_demo_dar(out, recipe, log=click.echo, source=source or DEMO_ANYORDER)
    click.echo(f"trained in {report['timings_seconds']['total']:.0f}s: {report['timings_seconds']}")
    if run_eval:
        _eval_demo_dar(out, n_per_class=2 if quick else 50, seed=0, write=True)


@click.command("eval-demo-dar")
@click.argument("source", type=click.Path(file_okay=False))
@click.option("--n", "n_per_class", type=click.IntRange(min=2), default=50, show_default=True,
              help="Images per class.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the generations (the demo's protocol uses 0, 1 and 2).")
@click.option("--write", is_flag=True, help="Store the result as SOURCE's metrics.json.")
@one_line_errors
def eval_demo_dar_cmd(source, n_per_class, seed, write):
    """Class accuracy and Fréchet distance of the D-AR demo's images (SOURCE: the checkpoint folder
    `train-demo-dar` wrote), per preview group too, judged by the DAR demo's classifier."""
    _eval_demo_dar(source, n_per_class, seed, write)


def _eval_demo_dar(source, n_per_class: int, seed: int, write: bool) -> None:
    require(("torch", "safetensors"), "`dartrt eval-demo-dar` (its judge is a torch classifier)")
    from dartrt.dar.checkpoint import BUNDLED
    from dartrt.dar.d_ar.checkpoint import load_d_ar_checkpoint
    from dartrt.dar.d_ar.demo.encoder import ENCODER_CONFIG, load_demo_tokens
    from dartrt.dar.d_ar.demo.evaluate import evaluate_d_ar
    from dartrt.dar.d_ar.torch_backend import torch_d_ar_backend
    from dartrt.runtime.fileio import atomic_write_json

    folder = Path(source)
    ckpt = load_d_ar_checkpoint(folder)
    tokens = load_demo_tokens(folder) if (folder / ENCODER_CONFIG).is_file() else None
    report = evaluate_d_ar(torch_d_ar_backend(ckpt), BUNDLED, n_per_class=n_per_class, seed=seed, tokens=tokens)
    click.echo(f"real held-out images: Fréchet distance {report['real_heldout_frechet_distance']:.3f}")
    for cfg, row in report["by_cfg"].items():
        groups = ", ".join(f"{g['class_accuracy']:.2f}" for g in row["preview_by_group"])
        click.echo(f"cfg {cfg:>4}: class accuracy {row['class_accuracy']:.3f}, Fréchet distance "
                   f"{row['fd_ratio_to_real']:.2f}x real; preview accuracy by group: {groups}")
    if "reconstruction" in report:
        rec = report["reconstruction"]
        click.echo(f"reconstructions (the decoder's ceiling): {rec['psnr_db']:.1f} dB, class accuracy "
                   f"{rec['class_accuracy']:.3f}, Fréchet distance {rec['fd_ratio_to_real']:.2f}x real")
    if write:
        atomic_write_json(folder / "metrics.json", report)
        click.echo(f"wrote {folder / 'metrics.json'}")
