"""Which queued requests may share a batched forward, and running them (numpy + the runtime; no Ray).

Ray Serve's ``@serve.batch`` hands a replica the requests that arrived together; `run_batch` splits them
into groups whose settings allow one forward (`batch_key`: same scan order, same sampling settings,
CFG on for all or off for all) and runs each group as one merged runtime request. Per row stay the class
id, the CFG schedule (scale and kind) and the image's Gumbel generator, seeded by its own request's
seed and its index in that request. So every image is byte for byte what `runtime.generate` gives for
its request alone, wherever it is batched (the tests check this). CFG-off requests never join CFG-on
ones: a CFG row at scale 1 computes u + 1·(c − u), which may differ from c in the last bit.

Each group runs as its own forward, one after the other, so a failure (which validation should rule
out) fails only its group's requests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from dartrt.runtime.backend import Backend
from dartrt.runtime.pipeline import run_request
from dartrt.runtime.scheduler import Request, merge_requests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchKey:
    """What every row of one forward must share: the graphs take one order, the sampler one setting."""

    order: bytes
    sampling: tuple
    cfg_enabled: bool


def batch_key(request: Request) -> BatchKey:
    sampling = request.sampling
    return BatchKey(request.order.astype("int64").tobytes(),
                    (sampling.temperature, sampling.top_k, sampling.top_p), request.cfg.enabled)


def group_compatible(requests: Sequence[Request]) -> list[list[int]]:
    """Indices of ``requests`` grouped by `batch_key`, groups and members in arrival order."""
    groups: dict[BatchKey, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(batch_key(request), []).append(i)
    return list(groups.values())


@dataclass
class Outcome:
    """One request's share of a batch: its images, or the error that failed its group."""

    images: list[Image.Image] | None = None
    error: str | None = None
    batch_images: int = 0  # images in the forward it shared (its own included)
    batch_requests: int = 0  # requests in that forward


def run_group(backend: Backend, requests: Sequence[Request], max_batch: int) -> list[list[Image.Image]]:
    """Run compatible requests as one merged request (``max_batch`` images per forward); images per request."""
    result = run_request(backend, merge_requests(list(requests), max_batch))
    out, first = [], 0
    for request in requests:
        count = len(request.class_ids)
        out.append(result.images[first:first + count])
        first += count
    return out


def run_batch(backend: Backend, requests: Sequence[Request], max_batch: int) -> list[Outcome]:
    """Every request's outcome, in the order given; a group that fails reports its error to its own
    requests only (the replica logs the traceback)."""
    outcomes = [Outcome() for _ in requests]
    for group in group_compatible(requests):
        members = [requests[i] for i in group]
        images = sum(len(r.class_ids) for r in members)
        try:
            per_request = run_group(backend, members, max_batch)
        except Exception as exc:  # noqa: BLE001 - any failure must reach the waiting clients, not hang them
            log.exception("a batch of %d request(s) failed", len(group))
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            for i in group:
                outcomes[i] = Outcome(error=message, batch_images=images, batch_requests=len(group))
            continue
        for i, imgs in zip(group, per_request):
            outcomes[i] = Outcome(images=imgs, batch_images=images, batch_requests=len(group))
    return outcomes
