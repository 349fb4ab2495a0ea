"""What a caller passes for an adaptive order or an edit, checked once for the API and the CLI.

`plan_adaptive` turns ``order="adaptive"``, the choice settings (confidence, candidates, cells per step)
and the editing inputs (a mask with known tokens or an image) into the validated `Request`,
`AdaptiveSettings` and `Edit` that `runtime.adaptive.run_adaptive` takes; every bad value is one
`DartrtError` line (docs/errors.md). Editing in a fixed order runs through the same loop, walking the
order's free cells (`adaptive.fixed_settings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .adaptive import ADAPTIVE, AdaptiveSettings, check_adaptive_model, fixed_settings
from .backend import Backend
from .editing import Edit, check_edit, keep_grid, mask_cells, token_grid
from .errors import DartrtError
from .scheduler import Request, build_request

CHOICE_OPTIONS = ("confidence", "candidates", "cells_per_step", "cells_schedule")


@dataclass(frozen=True)
class AdaptivePlan:
    request: Request
    settings: AdaptiveSettings
    edit: Edit | None

    def batch_edit(self, first: int, count: int) -> Edit | None:
        """The edit of images first .. first + count - 1 (their own token grids, when there is one per image)."""
        if self.edit is None or self.edit.tokens.ndim == 2:
            return self.edit
        return Edit(self.edit.keep, self.edit.tokens[first:first + count])


def wants_adaptive_loop(order, choice: dict, known_tokens=None, image=None, mask=None) -> bool:
    """Whether a call needs `runtime.adaptive` (an adaptive order, choice settings, or an edit)."""
    is_adaptive = isinstance(order, str) and order == ADAPTIVE
    return is_adaptive or any(v is not None for v in choice.values()) or any(
        v is not None for v in (known_tokens, image, mask))


def plan_adaptive(backend: Backend, class_ids, *, order=None, choice: dict | None = None, known_tokens=None,
                  image=None, mask=None, allow_untrained: bool = False, **request_kw) -> AdaptivePlan:
    """Validate an adaptive or editing call. ``choice``: confidence, candidates, cells_per_step,
    cells_schedule (None = default). ``mask``: a mask image of the image's size (white = generate) or a
    [G, G] bool cell mask (True = keep); with ``known_tokens`` ([G, G] or one grid per image) or ``image``
    (PIL or uint8 [H, W, 3], turned into tokens by the backend's VQ encoder)."""
    choice = {k: v for k, v in (choice or {}).items() if v is not None}
    unknown = sorted(set(choice) - set(CHOICE_OPTIONS))
    if unknown:
        raise DartrtError(f"unknown adaptive setting {unknown[0]!r}")
    adaptive = isinstance(order, str) and order == ADAPTIVE
    if choice and not adaptive:
        raise DartrtError(f"{', '.join(sorted(choice))} appl{'ies' if len(choice) == 1 else 'y'} to "
                          "order='adaptive' (--order adaptive)")
    info = backend.info
    editing = any(v is not None for v in (known_tokens, image, mask))
    # The caller's values first, then what the model and package can do, then the image (a graph call).
    settings = AdaptiveSettings(**choice).validate(info.seq_len) if adaptive else None
    request = build_request(backend, class_ids, order=None if adaptive else order, **request_kw)
    keep = _keep(backend, known_tokens, image, mask) if editing else None
    tokens = token_grid(known_tokens, info.grid_size, info.vocab_size, len(request.class_ids)) \
        if known_tokens is not None else None
    pixels = _image_array(backend, image) if image is not None else None
    check_adaptive_model(backend, allow_untrained)
    if settings is None:
        settings = fixed_settings(backend, order)
    edit = None
    if editing:
        tokens = _encode(backend, pixels) if pixels is not None else tokens
        edit = Edit(keep, tokens[0] if tokens.ndim == 3 and len(tokens) == 1 else tokens)
    return AdaptivePlan(request, settings, edit)


def _keep(backend: Backend, known_tokens, image, mask) -> np.ndarray:
    """The cells an edit keeps, from its mask (after checking that the edit has what it needs)."""
    info = backend.info
    if mask is None:
        raise DartrtError("editing needs a mask (white = generate, black = keep) with the known tokens or image")
    if (known_tokens is None) == (image is None):
        raise DartrtError("editing takes the known cells from a token grid or from an image: give one of them")
    g = info.grid_size
    if isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == (g, g):
        keep = keep_grid(mask, g)
    else:
        keep = mask_cells(mask, info.image_size, g)
    return check_edit(Edit(keep, np.zeros((g, g), dtype=np.int64))).keep


def _image_array(backend: Backend, image) -> np.ndarray:
    """An image (PIL, or uint8 [H, W, 3]) of the model's size as uint8 [H, W, 3]."""
    size = backend.info.image_size
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise DartrtError(f"the image must be RGB uint8 [H, W, 3], got {arr.dtype.name} {list(arr.shape)}")
    if arr.shape[:2] != (size, size):
        raise DartrtError(f"the image is {arr.shape[1]}x{arr.shape[0]} pixels but the model's images are "
                          f"{size}x{size}")
    return arr


def _encode(backend: Backend, arr: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] → its token grid [G, G] by the backend's VQ encoder."""
    if not hasattr(backend, "encode_vq"):
        raise DartrtError(f"the {backend.name} backend cannot turn an image into tokens; give a token grid")
    return backend.encode_vq(arr[None])[0]
