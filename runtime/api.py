"""`runtime.generate`: class ids in, PIL images out, from a package path or an opened backend.

Production scripts call this one function. It opens (and verifies) a package on every call when
given a path; pass the Backend from `open_package_backend` instead to load the graphs once.
"""

from __future__ import annotations

import os

import numpy as np

from .adaptive import run_adaptive
from .adaptive_request import plan_adaptive, wants_adaptive_loop
from .arguments import callback
from .backend import Backend
from .errors import DartrtError
from .orders import make_order
from .package import open_package_backend
from .pipeline import generate_with_backend
from .scheduler import StepCallback


def _is_backend(obj) -> bool:
    return all(hasattr(obj, attr) for attr in ("info", "prefill", "step", "decode_vq"))


def generate(package, class_ids, *, n_per_class: int = 1, cfg: float | None = None,
             cfg_schedule: str | None = None, order=None, seed: int = 0, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, batch_size: int = 8,
             backend: str = "auto", precision: str | None = None, on_step: StepCallback | None = None,
             return_grids: bool = False, on_preview=None, confidence: str | None = None,
             candidates: int | None = None, cells_per_step: int | None = None, cells_schedule: str | None = None,
             known_tokens=None, image=None, mask=None, allow_untrained: bool = False, return_orders: bool = False):
    """Generate ``n_per_class`` images for each class id; unset settings take the model's defaults.

    ``package``: a package folder (str/PathLike) or an already opened Backend. Returns the list of PIL
    images (class-major: every image of class_ids[0] first), or ``(images, grids [n, G, G] int64)``
    with ``return_grids``. The same seed gives the same images on every backend and batch size.

    ``precision`` picks the graphs a package path runs (None: fp32; "fp16"; a calibration variant such as
    "int8-dynamic"; see `dartrt.runtime.precisions`). An opened Backend already has its precision, so a different
    one is refused rather than silently ignored.

    A D-AR package (docs/d-ar.md) decodes its tokens by diffusion, streamed: ``on_preview(group, images)`` is
    called with the previews after each group of tokens (`dartrt.runtime.d_ar` has the full API: previews,
    noise, a token prefix, raw float output; ``grids`` are its 1D tokens laid out row-major).

    ``order="adaptive"`` lets the model choose every image's order (OAR, docs/oar.md; a model trained for
    any order, or ``allow_untrained``): ``confidence`` "max-prob" (default) or "neg-entropy", ``candidates``
    N scores only the N free cells nearest the painted region (default: all), ``cells_per_step`` K paints
    the K most confident cells per step (``cells_schedule`` "constant" or "linear": 1 growing to K).
    Editing: ``mask`` (an image of the model's size, white = generate, black = keep; or a [G, G] bool cell
    mask, True = keep) with ``known_tokens`` ([G, G] or one grid per image) or ``image`` (encoded by the
    package's VQ encoder); the rest is generated in ``order`` (adaptive or fixed). ``return_orders`` adds
    every image's order [n, N, 2] (row, col) to what is returned: (images, [grids,] orders).
    """
    callback("on_step", on_step)
    if _is_backend(package):
        engine: Backend = package
        have = getattr(package, "precision", None) or "fp32"
        if precision is not None and precision != have:
            raise DartrtError(f"the backend was opened at precision {have!r}, not {precision!r}; "
                              "pass precision to open_package_backend instead")
    elif isinstance(package, (str, os.PathLike)):
        engine = open_package_backend(os.fspath(package), backend, precision=precision)
    else:
        raise DartrtError(f"package must be a package folder or a Backend, got {type(package).__name__}")
    choice = {"confidence": confidence, "candidates": candidates, "cells_per_step": cells_per_step,
              "cells_schedule": cells_schedule}
    sampling = dict(n_per_class=n_per_class, cfg=cfg, cfg_schedule=cfg_schedule, seed=seed, temperature=temperature,
                    top_k=top_k, top_p=top_p, batch_size=batch_size)
    if wants_adaptive_loop(order, choice, known_tokens, image, mask):
        plan = plan_adaptive(engine, class_ids, order=order, choice=choice, known_tokens=known_tokens, image=image,
                             mask=mask, allow_untrained=allow_untrained, **sampling)
        result = run_adaptive(engine, plan.request, plan.settings, on_step, plan.edit)
        orders = result.orders
    else:
        result = generate_with_backend(engine, class_ids, order=order, on_step=on_step, on_preview=on_preview,
                                       **sampling)
        cells = make_order(engine.info.order if order is None else order, engine.info.grid_size)
        orders = np.broadcast_to(cells, (len(result.grids), *cells.shape)).copy() if return_orders else None
    out = (result.images, *((result.grids,) if return_grids else ()), *((orders,) if return_orders else ()))
    return out if len(out) > 1 else out[0]
