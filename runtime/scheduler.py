"""The generation loop: scan order → backend steps → CFG → sampling → token grid.

Shared by every backend, the torch reference included, so that "same seed, same images" across
backends is a property of the numbers the backends return, not of two loops that might drift apart.

A batch may hold the images of several requests (`merge_requests`, used by `dartrt serve`): each image
keeps its own class, its own Gumbel generator (its request's seed and its index in that request) and its
own CFG schedule, so it comes out the same as when its request runs alone. What rows of one forward must
share is what the graphs or the sampler take once per step: the scan order, the sampling settings, and
whether CFG is on (CFG rows double the batch; a CFG-on row at scale 1 is not bitwise a CFG-off row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .arguments import MAX_CFG, class_id_list, integer, number
from .backend import Backend
from .cfg import CFGSchedule, combine, weight_table
from .contract import StepTables, cfg_double, cfg_rows
from .errors import DartrtError
from .orders import make_order, scatter_to_grid
from .sampler import SamplingConfig, gumbel_noise, image_generator, sample

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageRow:
    """One image of a batch: what may differ between the images of one batched forward."""

    class_id: int
    seed: int  # its Gumbel generator is image_generator(seed, index)
    index: int  # the image's index within its own request
    cfg: CFGSchedule


@dataclass(frozen=True)
class Request:
    """One validated generation request, or several merged into one (`merge_requests`).

    ``rows`` lists every image's own settings; left empty (one request) they follow from ``class_ids``,
    ``seed`` and ``cfg``. In a merged request ``class_ids`` still lists every image and ``cfg`` is the
    first request's schedule (every row's schedule has the same ``enabled``), ``seed`` the first's."""

    class_ids: tuple[int, ...]  # one entry per image
    cfg: CFGSchedule
    sampling: SamplingConfig
    order: np.ndarray
    seed: int
    batch_size: int
    rows: tuple[ImageRow, ...] = ()

    @property
    def images(self) -> tuple[ImageRow, ...]:
        """Every image's row, in output order."""
        if self.rows:
            return self.rows
        return tuple(ImageRow(c, self.seed, i, self.cfg) for i, c in enumerate(self.class_ids))


def build_request(backend: Backend, class_ids, *, n_per_class: int = 1, cfg: float | None = None,
                  cfg_schedule: str | None = None, cfg_start: float = 1.0, cfg_power: float = 1.0,
                  order=None, seed: int = 0, temperature: float | None = None, top_k: int | None = None,
                  top_p: float | None = None, batch_size: int = 8) -> Request:
    """Validate every user setting against the model, filling unset ones from its defaults."""
    info = backend.info
    ids = class_id_list(class_ids, info.num_classes)
    n_per_class = integer("n_per_class", n_per_class, 1)
    batch_size = integer("batch_size", batch_size, 1)
    seed = integer("seed", seed, 0)  # numpy's seed sequences take no negatives
    if cfg_schedule is not None and not isinstance(cfg_schedule, str):
        raise DartrtError(f"cfg_schedule must be a schedule name, got {cfg_schedule!r}")
    schedule = CFGSchedule(
        scale=info.default_cfg if cfg is None else number("cfg", cfg, 0.0, MAX_CFG),
        kind=cfg_schedule or info.default_cfg_schedule, start=number("cfg start", cfg_start, 0.0, MAX_CFG),
        power=number("cfg power", cfg_power, 0.0, 100.0, low_open=True),
    )
    sampling = SamplingConfig(
        temperature=info.default_temperature if temperature is None else number("temperature", temperature),
        top_k=info.default_top_k if top_k is None else top_k,
        top_p=info.default_top_p if top_p is None else number("top_p", top_p),
    )
    resolved = make_order(info.order if order is None else order, info.grid_size)
    per_image = tuple(c for c in ids for _ in range(int(n_per_class)))
    return Request(per_image, schedule, sampling, resolved, int(seed), int(batch_size))


def merge_requests(requests: list[Request] | tuple[Request, ...], batch_size: int) -> Request:
    """One request that runs the images of ``requests`` together, ``batch_size`` images per forward.

    Every image keeps its class, generator and CFG schedule, so it comes out as its own request would
    give it; the requests must share what a forward takes once for all rows (see the module doc)."""
    if not requests:
        raise DartrtError("no requests to merge")
    first = requests[0]
    for other in requests[1:]:
        if not np.array_equal(other.order, first.order):
            raise DartrtError("requests with different scan orders cannot share a batch")
        if other.sampling != first.sampling:
            raise DartrtError("requests with different sampling settings cannot share a batch")
        if other.cfg.enabled != first.cfg.enabled:
            raise DartrtError("requests with CFG on and CFG off cannot share a batch")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise DartrtError(f"batch_size must be an integer >= 1, got {batch_size}")
    rows = tuple(row for request in requests for row in request.images)
    return Request(tuple(r.class_id for r in rows), first.cfg, first.sampling, first.order, first.seed,
                   int(batch_size), rows)


def sample_tokens(backend: Backend, request: Request, on_step: StepCallback | None = None) -> np.ndarray:
    """Run the request; returns tokens [n_images, G*G] in scan order."""
    info = backend.info
    n_tok = info.seq_len
    tables = StepTables.of(request.order, info.grid_size, info.rope)
    rows = request.images
    out = np.empty((len(rows), n_tok), dtype=np.int64)
    total_steps = -(-len(rows) // request.batch_size) * n_tok
    done = 0
    use_cfg = request.cfg.enabled
    if any(row.cfg.enabled != use_cfg for row in rows):
        raise DartrtError("a batch mixes images with CFG on and CFG off; run them as separate requests")
    for first in range(0, len(rows), request.batch_size):
        chunk = rows[first:first + request.batch_size]
        classes = np.asarray([row.class_id for row in chunk], dtype=np.int64)
        rngs = [image_generator(row.seed, row.index) for row in chunk]
        weights = weight_table([row.cfg for row in chunk], n_tok) if use_cfg else None
        class_rows = cfg_rows(classes, info.num_classes, use_cfg)
        logits = backend.prefill(class_rows, *tables.at(0, len(class_rows)))
        for t in range(n_tok):
            if t > 0:
                prev = cfg_double(out[first:first + len(classes), t - 1:t], use_cfg)
                logits = backend.step(prev, *tables.at(t, len(prev)), t)
            check_finite_logits(logits, t, first, len(chunk))
            if use_cfg:
                logits = combine(logits, weights[t])
            noise = None if request.sampling.greedy else gumbel_noise(rngs, logits.shape[-1])
            out[first:first + len(classes), t] = sample(logits, request.sampling, noise)
            done += 1
            if on_step is not None:
                on_step(done, total_steps)
    return out


def check_finite_logits(logits: np.ndarray, step: int, first: int, images: int) -> None:
    """NaN or inf logits never become an image: they come from broken weights (or an overflow), and argmax
    over them quietly returns token 0. One check per step over the step's [rows, V] logits, in every
    backend (they all run this loop): microseconds against a forward pass."""
    if np.isfinite(logits).all():
        return
    row = int(np.argwhere(~np.isfinite(logits))[0][0])
    image, half = first + row % images, "the null-class (CFG) row" if row >= images else "its row"
    raise DartrtError(f"the model returned non-finite logits at step {step} for image {image} ({half}, batch row "
                      f"{row}); its weights may hold NaN or inf (re-export, or check the checkpoint)")


def tokens_to_grids(tokens: np.ndarray, request: Request, grid: int) -> np.ndarray:
    return scatter_to_grid(tokens, request.order, grid)
