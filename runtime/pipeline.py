"""High-level generation over any backend: validated settings in, PIL images (and grids) out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .backend import Backend
from .errors import DartrtError
from .scheduler import Request, StepCallback, build_request, sample_tokens, tokens_to_grids


@dataclass
class GenerationResult:
    images: list[Image.Image]
    class_ids: list[int]
    grids: np.ndarray  # [n, G, G] int64 token ids on their cells
    tokens: np.ndarray  # [n, G*G] in scan order


def run_request(backend: Backend, request: Request, on_step: StepCallback | None = None,
                on_preview: Callable[[int, list], None] | None = None) -> GenerationResult:
    """Sample a validated (or merged) request and decode its grids, ``request.batch_size`` images at a time.

    `generate_with_backend` and `dartrt serve`'s batches both end here, so a served image goes through
    the very code `runtime.generate` runs. A D-AR package decodes by diffusion instead (`runtime.d_ar`; its
    "grids" are its 1D tokens laid out row-major), and ``on_preview(group, images)`` sees its previews."""
    if getattr(backend, "family", None) == "d-ar":
        from .d_ar import run_d_ar_request

        result = run_d_ar_request(backend, request, on_step, on_preview=on_preview)
        grids = tokens_to_grids(result.tokens, request, backend.info.grid_size)
        return GenerationResult(result.images, result.class_ids, grids, result.tokens)
    if on_preview is not None:
        raise DartrtError("previews come from D-AR's decoder; this package decodes its grids with a VQ decoder")
    tokens = sample_tokens(backend, request, on_step)
    grids = tokens_to_grids(tokens, request, backend.info.grid_size)
    step = request.batch_size
    pixels = np.concatenate([backend.decode_vq(grids[i:i + step]) for i in range(0, len(grids), step)])
    images = [Image.fromarray(p) for p in pixels]
    return GenerationResult(images, list(request.class_ids), grids, tokens)


def generate_with_backend(backend: Backend, class_ids, *, n_per_class: int = 1, cfg: float | None = None,
                          cfg_schedule: str | None = None, order=None, seed: int = 0,
                          temperature: float | None = None, top_k: int | None = None,
                          top_p: float | None = None, batch_size: int = 8,
                          on_step: StepCallback | None = None, on_preview: Callable[[int, list], None] | None = None,
                          **schedule_kw) -> GenerationResult:
    request = build_request(backend, class_ids, n_per_class=n_per_class, cfg=cfg, cfg_schedule=cfg_schedule,
                            order=order, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                            batch_size=batch_size, **schedule_kw)
    return run_request(backend, request, on_step, on_preview)
