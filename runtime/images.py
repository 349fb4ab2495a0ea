"""Image conversion and grids (numpy + Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import DartrtError
from .fileio import atomic_write


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Decoder output [B, 3, H, W] in about [-1, 1] → uint8 [B, H, W, 3]: clamp(127.5·x + 128).

    Non-finite pixels are an error, not a black image (numpy would cast NaN to 0 with a warning): every
    backend's decoder output goes through here."""
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise DartrtError(f"the decoder returned non-finite pixels for image {row} of its batch; its weights may "
                          "hold NaN or inf (re-export, or check the checkpoint)")
    return np.clip(127.5 * x + 128.0, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] → float32 [B, 3, H, W] in [-1, 1] (x / 127.5 - 1, the VQ's training input)."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise DartrtError(f"expected uint8 [B, H, W, 3] images, got {arr.dtype.name} {list(arr.shape)}")
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write a PNG atomically."""
    atomic_write(path, lambda p: image.save(p, format="PNG"))


def make_grid(images: np.ndarray, nrow: int, labels: list[str] | None = None, pad: int = 2) -> Image.Image:
    """Tile uint8 [N, H, W, 3] images into rows of ``nrow``; one label per row, drawn at its left."""
    n, h, w, _ = images.shape
    rows = -(-n // nrow)
    label_w = 0
    if labels:
        label_w = 8 + 6 * max(len(s) for s in labels)
    canvas = Image.new("RGB", (label_w + nrow * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        canvas.paste(Image.fromarray(img), (label_w + pad + c * (w + pad), pad + r * (h + pad)))
    for r, text in enumerate(labels or []):
        draw.text((4, pad + r * (h + pad) + h // 2 - 5), text, fill=(0, 0, 0))
    return canvas
