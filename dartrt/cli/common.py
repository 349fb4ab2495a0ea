"""What every command shares: one-line errors, the generation options, opening a SOURCE."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from dartrt.extras import require
from dartrt.runtime.errors import DartrtError


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


def open_backend(source: str | None, backend: str, dtype: str = "fp32", precision: str | None = None):
    """A runtime Backend for SOURCE (see `generate`). ``precision`` selects a package's graphs; the torch
    reference has only ``dtype``."""
    if source is not None and (Path(source) / "manifest.json").is_file():
        if backend == "torch":
            raise DartrtError(f"{source} is an exported package; the torch backend needs a checkpoint or preset")
        from dartrt.runtime.package import open_package_backend

        return open_package_backend(source, backend, precision=precision)
    if backend not in ("auto", "torch"):
        raise DartrtError(f"backend {backend} needs an exported package (run `dartrt export` first)")
    if precision is not None:
        raise DartrtError(f"--precision selects a package's graphs, and {source or 'the bundled demo'} is not a "
                          "package; the torch backend takes --dtype")
    require(("torch", "safetensors"), f"running {source or 'the bundled demo'} with the torch reference (only an "
            "exported package runs without it)")
    import torch

    from dartrt.dar.checkpoint import resolve_source
    from dartrt.dar.torch_backend import TorchBackend

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    return TorchBackend(resolve_source(source), dtype=torch_dtype)
