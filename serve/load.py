"""A bounded load generator: N request bodies, C clients at a time, a timeout on each request and a
deadline on the whole run, so it always stops by itself (tests, `dartrt bench-serve`).

Each client thread takes the next body, posts it and records what came back; past the deadline no new
request starts and the rest are recorded as not sent. Nothing here retries: a 503 is a result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .client import Client

NOT_SENT = -1
NO_ANSWER = 0  # timeout or connection error: the request got no HTTP answer


@dataclass
class Shot:
    """One request's fate: its status (NOT_SENT, NO_ANSWER or HTTP), latency and answer."""

    index: int
    status: int = NOT_SENT
    seconds: float = 0.0
    body: bytes = b""
    error: str = ""
    start: float = 0.0


def run_load(url: str, bodies: Sequence[dict | bytes], concurrency: int, timeout_s: float, deadline_s: float,
             on_answer: Callable[[Shot], None] | None = None, accept: str = "application/json") -> list[Shot]:
    """Post every body (in order, ``concurrency`` at a time) to ``url``/v1/generate; one Shot per body."""
    client = Client(url, timeout=timeout_s)
    shots = [Shot(i) for i in range(len(bodies))]
    lock = threading.Lock()
    next_index = [0]
    stop_at = time.monotonic() + deadline_s

    def worker() -> None:
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(bodies) or time.monotonic() >= stop_at:
                return
            shot = shots[i]
            shot.start = time.monotonic()
            try:
                answer = client.request("POST", "/v1/generate", bodies[i], accept=accept)
                shot.status, shot.body = answer.status, answer.body
            except Exception as exc:  # noqa: BLE001 - a timeout or a reset connection is a result here
                shot.status, shot.error = NO_ANSWER, f"{type(exc).__name__}: {exc}"
            shot.seconds = time.monotonic() - shot.start
            if on_answer is not None:
                on_answer(shot)

    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="load") as pool:
        for _ in range(max(1, concurrency)):
            pool.submit(worker)
    return shots
