"""Editing (inpainting, outpainting): which cells are kept, with which tokens (numpy and Pillow only).

An any-order model can be handed any set of known cells as a prefix and asked for the rest, which is
inpainting (the mask is inside) and outpainting (the mask is outside) with no training for either
(docs/oar.md, "Editing"). The known tokens come from a token grid, or from an image through the
package's VQ encoder graph; the mask is a PNG of the image's size: white = generate, black = keep.

A mask pixel is "generate" when its grey value is >= 128 (a PNG with soft edges is thresholded there), and
a token cell is generated when any pixel of its patch is: a cell whose patch the mask only partly
covers cannot be half kept, and keeping it would leave part of what the user wanted replaced.

The known cells are prefilled in raster order (their order among themselves does not matter to an
any-order model; raster is the order a reader expects), the class token first, in one prefill and one
decode call of S = K - 1 tokens, each known token carrying the next known cell as its next position.
The last known token is then the "last token" of the first adaptive step, whose K/V depends on the cell
chosen after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DartrtError

GENERATE_LEVEL = 128  # mask grey values >= this mean "generate"


@dataclass(frozen=True)
class Edit:
    """Known cells and their tokens. ``keep`` [G, G] bool (True: the cell is known and kept);
    ``tokens`` [G, G] (every image) or [n, G, G] (one grid per image) int64, read at the kept cells."""

    keep: np.ndarray
    tokens: np.ndarray

    @property
    def cells(self) -> np.ndarray:
        """Flat indices of the kept cells, in raster order: the prefix order."""
        return np.flatnonzero(self.keep.reshape(-1))

    def prefix_tokens(self, images: list[int] | np.ndarray) -> np.ndarray:
        """[B, K] tokens of the kept cells for images (indices into ``tokens`` when it holds one per image)."""
        flat = self.tokens.reshape(*self.tokens.shape[:-2], -1)[..., self.cells]
        if flat.ndim == 1:
            return np.broadcast_to(flat, (len(images), flat.size)).copy()
        return flat[np.asarray(images, dtype=np.int64)]


def token_grid(tokens, grid: int, vocab: int, images: int | None = None) -> np.ndarray:
    """A known token grid: [G, G] or [images, G, G] integers in [0, vocab)."""
    arr = np.asarray(tokens)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise DartrtError(f"known tokens must be an integer array, got {arr.dtype.name}")
    if arr.shape[-2:] != (grid, grid) or arr.ndim not in (2, 3):
        raise DartrtError(f"known tokens have shape {list(arr.shape)}; expected [{grid}, {grid}] (every image) "
                          f"or [n, {grid}, {grid}] (one grid per image)")
    if arr.ndim == 3 and images is not None and arr.shape[0] != images:
        raise DartrtError(f"known tokens hold {arr.shape[0]} grids for {images} images; give one grid, or one "
                          "per image")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab):
        raise DartrtError(f"known tokens must be in [0, {vocab}), got values in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


def mask_cells(mask, image_size: int, grid: int) -> np.ndarray:
    """A mask image (PIL image or array [H, W], [H, W, C]) of the image's size → keep [G, G] bool.

    White (grey >= 128) = generate, black = keep; a cell is generated when any pixel of its patch is."""
    arr = _grey(mask)
    if arr.shape != (image_size, image_size):
        raise DartrtError(f"the mask is {arr.shape[1]}x{arr.shape[0]} pixels but the model's images are "
                          f"{image_size}x{image_size}; give a mask of the image's size")
    patch = image_size // grid
    generate = (arr >= GENERATE_LEVEL).reshape(grid, patch, grid, patch).any(axis=(1, 3))
    return ~generate


def keep_grid(keep, grid: int) -> np.ndarray:
    """A cell-level mask given directly: [G, G] bools (True = keep)."""
    arr = np.asarray(keep)
    if arr.shape != (grid, grid) or arr.dtype != bool:
        raise DartrtError(f"a cell mask must be a [{grid}, {grid}] bool array (True = keep), got "
                          f"{arr.dtype.name} {list(arr.shape)}")
    return arr


def check_edit(edit: Edit) -> Edit:
    """An edit must leave something to generate."""
    if edit.keep.all():
        raise DartrtError("the mask keeps every cell: nothing to generate (white = generate, black = keep)")
    return edit


def _grey(mask) -> np.ndarray:
    """Grey levels [H, W] in 0..255 of a mask given as a PIL image or an array (bool, 0..1 floats or 0..255)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a runtime dependency
        Image = None
    if Image is not None and isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L"), dtype=np.float64)
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr.astype(np.float64) * 255.0
    if not np.issubdtype(arr.dtype, np.number):
        raise DartrtError(f"the mask must be an image or a numeric array, got {arr.dtype.name}")
    arr = arr.astype(np.float64)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1)
    if arr.ndim != 2:
        raise DartrtError(f"the mask must be an image [H, W] or [H, W, C], got shape {list(arr.shape)}")
    if np.issubdtype(np.asarray(mask).dtype, np.floating) and arr.size and arr.max() <= 1.0:
        arr = arr * 255.0
    return arr
