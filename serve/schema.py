"""The body of ``POST /v1/generate``: parsed, type-checked and validated against the model.

Every refusal is one line naming the field, raised as a `ServeError` (400, or 413 for a request larger
than the service takes), so a client learns what to fix and nothing bad ever reaches a batch: a request
is validated completely before it is queued, which is why a bad one cannot disturb the others.

The settings mean exactly what `runtime.generate`'s keyword arguments mean (unset ones take the model's
defaults), and the service answers with the images `runtime.generate` gives for them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from dartrt.runtime.backend import ModelInfo
from dartrt.runtime.scheduler import Request, build_request

from .errors import NOT_ACCEPTABLE, TOO_LARGE, ServeError

MAX_BODY_BYTES = 1 << 20
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GenerateBody:
    """The request's fields as sent (None: the model's default)."""

    class_ids: tuple[int, ...]
    n_per_class: int = 1
    seed: int = 0
    cfg: float | None = None
    cfg_schedule: str | None = None
    order: str | tuple[int, ...] | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    precision: str | None = None

    @property
    def images(self) -> int:
        return len(self.class_ids) * self.n_per_class


FIELDS = tuple(f.name for f in fields(GenerateBody))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(data: dict, name: str, default: int | None) -> int | None:
    value = data.get(name, default)
    if value is None or _is_int(value):
        return value
    raise ServeError(f"{name} must be an integer, got {json.dumps(value)}")


def _number(data: dict, name: str) -> float | None:
    """A JSON number (NaN and infinities pass here: the runtime refuses them with its own message)."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ServeError(f"{name} must be a number or null, got {json.dumps(value)}")
    return float(value)


def _string(data: dict, name: str) -> str | None:
    value = data.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ServeError(f"{name} must be a string or null, got {json.dumps(value)}")


def _class_ids(data: dict) -> tuple[int, ...]:
    if "class_ids" not in data:
        raise ServeError("class_ids is required: a list of class ids, e.g. {\"class_ids\": [3]}")
    value = data["class_ids"]
    if not isinstance(value, list) or not value:
        raise ServeError(f"class_ids must be a non-empty list of integers, got {json.dumps(value)[:80]}")
    for c in value:
        if not _is_int(c):
            raise ServeError(f"class id {json.dumps(c)} is not an integer")
    return tuple(value)


def _order(data: dict) -> str | tuple[int, ...] | None:
    value = data.get("order")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(_is_int(v) for v in value):
        return tuple(value)
    raise ServeError("order must be an order name (diagonal, diagonal-mirror, raster) or a list of flat cell "
                     "indices r*G+c")


def parse_body(raw: bytes) -> GenerateBody:
    """JSON bytes → GenerateBody; malformed JSON, a non-object, an unknown field or a wrong type: one line."""
    if len(raw) > MAX_BODY_BYTES:
        raise ServeError(f"the request body has {len(raw)} bytes; the limit is {MAX_BODY_BYTES}", TOO_LARGE)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServeError(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ServeError("the request body must be a JSON object such as {\"class_ids\": [3]}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ServeError(f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    seed = _int(data, "seed", 0)
    if seed is None or not 0 <= seed <= MAX_SEED:
        raise ServeError(f"seed must be an integer in [0, 2^63), got {json.dumps(data.get('seed'))}")
    n_per_class = _int(data, "n_per_class", 1)
    if n_per_class is None or n_per_class < 1:
        raise ServeError(f"n_per_class must be an integer >= 1, got {json.dumps(data.get('n_per_class'))}")
    return GenerateBody(
        class_ids=_class_ids(data), n_per_class=n_per_class, seed=seed, cfg=_number(data, "cfg"),
        cfg_schedule=_string(data, "cfg_schedule"), order=_order(data), temperature=_number(data, "temperature"),
        top_k=_int(data, "top_k", None), top_p=_number(data, "top_p"), precision=_string(data, "precision"))


def check_precision(requested: str | None, served: str, available: tuple[str, ...]) -> None:
    """A request may name the precision it expects; any other than the one served is refused."""
    if requested is None or requested == served:
        return
    if requested not in available:
        raise ServeError(f"the package has no precision {requested!r} (it has: {', '.join(available)}); "
                         f"this service runs {served!r}")
    raise ServeError(f"this service runs precision {served!r}, not {requested!r}; start another service with "
                     f"`dartrt serve PKG --precision {requested}`")


@dataclass(frozen=True)
class _Model:
    """What `build_request` reads of a backend: the model info (the ingress validates without graphs)."""

    info: ModelInfo


def to_request(body: GenerateBody, info: ModelInfo, max_images: int) -> Request:
    """Validate ``body`` against the model into a runtime Request. The runtime's checks raise its own
    one-line DartrtError (a class id out of range, a NaN CFG scale), which the service answers with 400."""
    if body.images > max_images:
        raise ServeError(f"the request asks for {body.images} images ({len(body.class_ids)} classes x "
                         f"{body.n_per_class}); this service takes at most {max_images} per request "
                         "(--max-batch): split it into several requests", TOO_LARGE)
    order = list(body.order) if isinstance(body.order, tuple) else body.order
    return build_request(_Model(info), list(body.class_ids), n_per_class=body.n_per_class, cfg=body.cfg,
                         cfg_schedule=body.cfg_schedule, order=order, seed=body.seed, temperature=body.temperature,
                         top_k=body.top_k, top_p=body.top_p, batch_size=max_images)


def wants_png(accept: str | None, images: int) -> bool:
    """``Accept: image/png`` asks for the bare PNG, which only a one-image request can have (else 406)."""
    types = {part.split(";")[0].strip().lower() for part in (accept or "").split(",")}
    if "image/png" not in types or "application/json" in types:
        return False
    if images != 1:
        raise ServeError(f"Accept: image/png returns one image and this request makes {images}; "
                         "accept application/json (base64 PNGs) instead", NOT_ACCEPTABLE)
    return True
