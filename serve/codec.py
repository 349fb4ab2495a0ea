"""PNG bytes and the JSON answer of ``POST /v1/generate``.

PNGs are written with fixed settings, so the same pixels always give the same bytes: a client (or a
test) can compare a served image with `runtime.generate`'s by its bytes.
"""

from __future__ import annotations

import base64
import io

from PIL import Image

from dartrt.runtime.scheduler import Request


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def settings_of(request: Request, order_name: str | None) -> dict:
    """The resolved settings an answer echoes (defaults filled in), so a client can reproduce it."""
    return {"seed": request.seed, "cfg": request.cfg.scale, "cfg_schedule": request.cfg.kind,
            "order": order_name if order_name is not None else "custom",
            "temperature": request.sampling.temperature, "top_k": int(request.sampling.top_k),
            "top_p": request.sampling.top_p}


def generate_answer(model: str, precision: str, request: Request, pngs: list[bytes], order_name: str | None,
                    batch_images: int, batch_requests: int, retries: int = 0) -> dict:
    """The JSON answer: one entry per image (class-major, like `runtime.generate`), base64 PNGs."""
    entries = [{"class_id": int(c), "index": i, "png_base64": base64.b64encode(data).decode("ascii")}
               for i, (c, data) in enumerate(zip(request.class_ids, pngs))]
    return {"model": model, "precision": precision, "settings": settings_of(request, order_name),
            "images": entries, "batch": {"images": batch_images, "requests": batch_requests}, "retries": retries}


def decode_png(data: str | bytes) -> Image.Image:
    """A PNG (base64 text or bytes) back into a PIL image (clients, tests)."""
    raw = base64.b64decode(data) if isinstance(data, str) else data
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image
