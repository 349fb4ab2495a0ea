"""`dartrt generate`: images from a package, a checkpoint, a preset or the bundled demo."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import generation_options, load_order, one_line_errors, open_backend


@click.command()
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

    from dartrt.runtime.images import make_grid, save_png
    from dartrt.runtime.pipeline import generate_with_backend

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
