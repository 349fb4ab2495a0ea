"""`dartrt generate`'s options for the adaptive order (OAR) and editing, and how they become a plan.

Kept apart from generate.py because they form one feature (docs/oar.md): the options, reading the mask,
image and token files, and the progress of a loop that paints several cells per step. Ranges are checked
by the runtime (`dartrt.runtime.adaptive_request`), so the CLI and the API say the same thing.
"""

from __future__ import annotations

from pathlib import Path

import click

from dartrt.runtime.errors import DartrtError


def adaptive_options(fn):
    options = [
        click.option("--confidence", default=None, metavar="KIND",
                     help="--order adaptive: a candidate cell's score, max-prob (its CFG-combined logits' largest "
                          "softmax probability; default) or neg-entropy (minus their entropy)."),
        click.option("--candidates", type=int, default=None, metavar="N",
                     help="--order adaptive: score only the N free cells nearest the painted region, 1 <= N <= "
                          "G*G (default: every free cell)."),
        click.option("--cells-per-step", type=int, default=None, metavar="K",
                     help="--order adaptive: paint the K most confident cells per step, 1 <= K <= G*G (default 1)."),
        click.option("--cells-schedule", default=None, metavar="KIND",
                     help="--order adaptive with --cells-per-step: constant (K every step; default) or linear (1 "
                          "at the start, growing to K as the image fills)."),
        click.option("--image", "edit_image", type=click.Path(dir_okay=False), default=None,
                     help="Edit this image (a PNG of the model's image size): the cells --mask keeps are encoded "
                          "with the package's VQ encoder, the rest generated in --order (adaptive or fixed)."),
        click.option("--mask", type=click.Path(dir_okay=False), default=None,
                     help="Editing mask, a PNG of the image's size: white (grey >= 128) = generate, black = keep; "
                          "a token cell is generated when any pixel of its patch is white."),
        click.option("--tokens", "known_tokens", type=click.Path(dir_okay=False), default=None,
                     help="Edit a token grid instead of an image: a .npy of integers in [0, vocabulary), [G, G] or "
                          "one grid per image [n, G, G] (grids.npy of an earlier run)."),
        click.option("--allow-untrained", is_flag=True,
                     help="Run --order adaptive or an edit on a model whose config does not say it was trained for "
                          "any order (it cannot choose well: expect poor images)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def adaptive_plan(engine, class_ids, order, sampling: dict, confidence, candidates, cells_per_step, cells_schedule,
                  edit_image, mask, known_tokens, allow_untrained):
    """The validated plan of an adaptive or editing run, or None for a plain fixed-order run."""
    from dartrt.runtime.adaptive_request import plan_adaptive, wants_adaptive_loop

    choice = {"confidence": confidence, "candidates": candidates, "cells_per_step": cells_per_step,
              "cells_schedule": cells_schedule}
    if not wants_adaptive_loop(order, choice, known_tokens, edit_image, mask):
        if allow_untrained:
            raise DartrtError("--allow-untrained applies to --order adaptive and editing")
        return None
    return plan_adaptive(engine, class_ids, order=order, choice=choice,
                         known_tokens=_npy(known_tokens, "token grid") if known_tokens else None,
                         image=_png(edit_image, "image", "RGB") if edit_image else None,
                         mask=_png(mask, "mask", "L") if mask else None, allow_untrained=allow_untrained, **sampling)


class Progress:
    """on_step for the adaptive loop, which may paint several cells per call: the bar moves by the cells."""

    def __init__(self, bar, images: int) -> None:
        self.bar, self.images, self.done = bar, images, 0

    def __call__(self, done: int, total: int) -> None:
        self.bar.update(self.images * (done - self.done) / total)
        self.done = done


def _png(path: str, what: str, mode: str):
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise DartrtError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (UnidentifiedImageError, OSError) as exc:
        raise DartrtError(f"cannot read the {what} {path} as an image: {' '.join(str(exc).split())}") from None


def _npy(path: str, what: str):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DartrtError(f"{what} file not found: {path}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DartrtError(f"cannot read the {what} {path} as a numpy array: {' '.join(str(exc).split())}") from None


def save_npy(path: Path, array) -> None:
    """Write a .npy file atomically (orders.npy, grids.npy)."""
    import numpy as np

    from dartrt.runtime.fileio import atomic_write

    def write(tmp) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)
