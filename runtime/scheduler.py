"""The generation loop: scan order → backend steps → CFG → sampling → token grid.

Shared by every backend, the torch reference included, so that "same seed, same images" across
backends is a property of the numbers the backends return, not of two loops that might drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .backend import Backend
from .cfg import CFGSchedule, combine
from .contract import StepTables, cfg_double, cfg_rows
from .errors import DartrtError
from .orders import make_order, scatter_to_grid
from .sampler import SamplingConfig, gumbel_noise, image_generators, sample

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Request:
    """One validated generation request."""

    class_ids: tuple[int, ...]  # one entry per image
    cfg: CFGSchedule
    sampling: SamplingConfig
    order: np.ndarray
    seed: int
    batch_size: int


def check_class_ids(class_ids, num_classes: int) -> list[int]:
    out = []
    for c in class_ids:
        if isinstance(c, bool) or int(c) != c:
            raise DartrtError(f"class id {c!r} is not an integer")
        if not 0 <= int(c) < num_classes:
            raise DartrtError(f"class id {int(c)} is outside [0, {num_classes})")
        out.append(int(c))
    if not out:
        raise DartrtError("no class ids given")
    return out


def build_request(backend: Backend, class_ids, *, n_per_class: int = 1, cfg: float | None = None,
                  cfg_schedule: str | None = None, cfg_start: float = 1.0, cfg_power: float = 1.0,
                  order=None, seed: int = 0, temperature: float | None = None, top_k: int | None = None,
                  top_p: float | None = None, batch_size: int = 8) -> Request:
    """Validate every user setting against the model, filling unset ones from its defaults."""
    info = backend.info
    ids = check_class_ids(class_ids, info.num_classes)
    if isinstance(n_per_class, bool) or int(n_per_class) != n_per_class or n_per_class < 1:
        raise DartrtError(f"n_per_class must be an integer >= 1, got {n_per_class}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise DartrtError(f"batch_size must be an integer >= 1, got {batch_size}")
    schedule = CFGSchedule(
        scale=info.default_cfg if cfg is None else float(cfg),
        kind=cfg_schedule or info.default_cfg_schedule, start=float(cfg_start), power=float(cfg_power),
    )
    sampling = SamplingConfig(
        temperature=info.default_temperature if temperature is None else float(temperature),
        top_k=info.default_top_k if top_k is None else top_k,
        top_p=info.default_top_p if top_p is None else float(top_p),
    )
    resolved = make_order(info.order if order is None else order, info.grid_size)
    per_image = tuple(c for c in ids for _ in range(int(n_per_class)))
    return Request(per_image, schedule, sampling, resolved, int(seed), int(batch_size))


def sample_tokens(backend: Backend, request: Request, on_step: StepCallback | None = None) -> np.ndarray:
    """Run the request; returns tokens [n_images, G*G] in scan order."""
    info = backend.info
    n_tok = info.seq_len
    tables = StepTables.of(request.order, info.grid_size, info.rope)
    out = np.empty((len(request.class_ids), n_tok), dtype=np.int64)
    total_steps = -(-len(request.class_ids) // request.batch_size) * n_tok
    done = 0
    use_cfg = request.cfg.enabled
    for first in range(0, len(request.class_ids), request.batch_size):
        classes = np.asarray(request.class_ids[first:first + request.batch_size], dtype=np.int64)
        rngs = image_generators(request.seed, len(classes), first)
        logits = backend.prefill(cfg_rows(classes, info.num_classes, use_cfg), *tables.at(0))
        for t in range(n_tok):
            if t > 0:
                prev = cfg_double(out[first:first + len(classes), t - 1:t], use_cfg)
                logits = backend.step(prev, *tables.at(t), t)
            if use_cfg:
                logits = combine(logits, request.cfg.weight(t, n_tok))
            noise = None if request.sampling.greedy else gumbel_noise(rngs, logits.shape[-1])
            out[first:first + len(classes), t] = sample(logits, request.sampling, noise)
            done += 1
            if on_step is not None:
                on_step(done, total_steps)
    return out


def tokens_to_grids(tokens: np.ndarray, request: Request, grid: int) -> np.ndarray:
    return scatter_to_grid(tokens, request.order, grid)
