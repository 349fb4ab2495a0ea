"""`dartrt generate`: images from a package, a checkpoint, a preset or the bundled demo.

The output folder is checked before anything is generated, each batch's PNGs are written as soon as
the batch is done (an interrupted run keeps what it finished), and a folder that already holds images of
an earlier run is refused unless ``--overwrite`` says to remove them (only those: files named like ours,
`NNNN_classK.png` and `grid.png`; nothing else in the folder is touched).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path

import click

from dartrt.runtime.errors import DartrtError

from .adaptive import Progress, adaptive_options, adaptive_plan, save_npy
from .common import (
    SOURCE_BACKENDS,
    backend_option,
    generation_options,
    load_order,
    one_line_errors,
    open_backend,
    precision_option,
    threads_option,
)

OURS = re.compile(r"^(\d{4,}_class\d+\.png|grid\.png|orders\.npy|grids\.npy)$")


def image_name(index: int, class_id: int) -> str:
    return f"{index:04d}_class{class_id}.png"


def check_output_folder(out: Path, overwrite: bool) -> list[Path]:
    """Refuse an output folder that cannot be written, or that holds an earlier run's images (unless
    ``overwrite``); returns those images, to be removed once the settings are known to be valid. Nothing
    is created here: a rejected run leaves no folder behind."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != out and not probe.is_dir():
        raise DartrtError(f"cannot write to {out}: {probe} is a file, not a folder")
    if probe == out and not out.is_dir():
        raise DartrtError(f"cannot write to {out}: it is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DartrtError(f"cannot write to {out}: {probe} is not writable")
    if not out.is_dir():
        return []
    earlier = sorted(p for p in out.iterdir() if p.is_file() and OURS.match(p.name))
    if earlier and not overwrite:
        raise DartrtError(f"{out} already holds {len(earlier)} image(s) of an earlier run; choose another folder or "
                          "pass --overwrite (it removes only files named like generate's output)")
    return earlier


@click.command()
@click.argument("source", required=False)
@generation_options
@backend_option(SOURCE_BACKENDS)
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Precision of the torch reference (checkpoints and presets only; default fp32).")
@precision_option
@threads_option
@click.option("-o", "--out", type=click.Path(), default="out", show_default=True,
              help="Folder for the PNGs (one per image, and a labelled grid.png); created if needed.")
@click.option("--overwrite", is_flag=True,
              help="Remove an earlier run's images from --out first (only files named like generate's output).")
@click.option("--previews", is_flag=True,
              help="D-AR only: also write previews/group{k}.png, every image after group k of its tokens.")
@adaptive_options
@one_line_errors
def generate(source, classes, n_per_class, cfg, cfg_schedule, seed, order, top_k, top_p, temperature,
             batch_size, backend, dtype, precision, threads, out, overwrite, previews, confidence, candidates,
             cells_per_step, cells_schedule, edit_image, mask, known_tokens, allow_untrained):
    """Generate images from SOURCE: a package, a checkpoint folder, a preset (random weights), or
    nothing for the bundled demo model. Writes one PNG per image, as each batch finishes, and a labelled
    grid.png at the end. With --order adaptive or an edit (--mask with --image or --tokens) it also writes
    orders.npy (every image's order, [n, G*G, 2] (row, col)) and grids.npy (its tokens, [n, G, G])."""
    import numpy as np
    from tqdm import tqdm

    from dartrt.runtime.adaptive import run_adaptive
    from dartrt.runtime.images import make_grid, save_png
    from dartrt.runtime.pipeline import run_request
    from dartrt.runtime.scheduler import build_request

    out_dir = Path(out)
    earlier = check_output_folder(out_dir, overwrite)
    engine = open_backend(source, backend, dtype, precision, threads)
    info = engine.info
    if previews and getattr(engine, "family", None) != "d-ar":  # D-AR's decoder makes them (runtime.d_ar)
        raise DartrtError("--previews is for D-AR packages and checkpoints, whose decoder runs group by group")
    groups: dict[int, list] = {}  # --previews: group k → every image's preview after k groups
    class_ids = list(classes) if classes else list(range(info.num_classes))
    sampling = dict(n_per_class=n_per_class, cfg=cfg, cfg_schedule=cfg_schedule, seed=seed, temperature=temperature,
                    top_k=top_k, top_p=top_p, batch_size=batch_size)
    plan = adaptive_plan(engine, class_ids, load_order(order), sampling, confidence, candidates, cells_per_step,
                         cells_schedule, edit_image, mask, known_tokens, allow_untrained)
    request = plan.request if plan else build_request(engine, class_ids, order=load_order(order), **sampling)
    for stale in earlier:
        stale.unlink(missing_ok=True)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    images = request.images
    bar = tqdm(total=len(images), unit="image", desc=f"generate ({engine.name})", file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} images [{elapsed}<{remaining}]")
    pixels, written, chosen = [], 0, []
    try:
        for first in range(0, len(images), batch_size):
            chunk = images[first:first + batch_size]
            batch = dataclasses.replace(request, class_ids=tuple(r.class_id for r in chunk), rows=chunk)

            def on_step(done: int, total: int, size: int = len(chunk)) -> None:
                bar.update(size / total)

            if plan:
                result = run_adaptive(engine, batch, plan.settings, Progress(bar, len(chunk)),
                                      plan.batch_edit(first, len(chunk)))
                chosen.append((result.orders, result.grids))
            else:
                result = run_request(engine, batch, on_step,
                                     (lambda k, ims: groups.setdefault(k, []).extend(ims)) if previews else None)
            for offset, (image, class_id) in enumerate(zip(result.images, result.class_ids)):
                save_png(image, out_dir / image_name(first + offset, class_id))
                pixels.append(np.asarray(image))
                written += 1
            bar.n = float(written)
            bar.refresh()
    except BaseException:
        bar.close()
        if written:
            click.echo(f"kept {written} finished image(s) in {out_dir}", err=True)
        elif created:
            out_dir.rmdir()  # ours and empty: a failed run leaves no folder behind
        raise
    bar.close()
    labels = [info.class_name(c) for c in request.class_ids[::n_per_class]]
    save_png(make_grid(np.stack(pixels), nrow=n_per_class, labels=labels), out_dir / "grid.png")
    if chosen:
        save_npy(out_dir / "orders.npy", np.concatenate([o for o, _ in chosen]))
        save_npy(out_dir / "grids.npy", np.concatenate([g for _, g in chosen]))
    if previews:
        from .d_ar import write_previews

        write_previews(out_dir / "previews", [groups[k] for k in sorted(groups)], nrow=n_per_class)
    extra = ", orders.npy and grids.npy" if chosen else ""
    click.echo(f"wrote {written} images and grid.png{extra} to {out_dir}")
