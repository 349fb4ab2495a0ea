"""The admission gate in front of ``@serve.batch``: one batch forming at a time, while the model is free.

Why: ``@serve.batch`` starts forming the next batch the moment the previous one is handed off, and each
forms within ``batch_wait_timeout_s`` of its first request. A batch here runs for seconds (every step
of every image), so under steady load the requests that arrive meanwhile would split into many small
batches queued behind it, and the service would lose most of what batching buys. The gate holds them
instead: while a batch runs nothing is admitted; when it ends, the waiting requests are admitted in
arrival order, up to ``capacity`` images, and form the next batch together.

It is FIFO (a large request at the head is not overtaken by small ones behind it), and a request
cancelled while waiting or while admitted but not started gives its place back, so the count can never
leak and lock the gate. Used from one event loop only (the replica's); nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
from collections import deque


class AdmissionGate:
    """Admit requests of ``images`` each while no batch runs, at most ``capacity`` images at a time."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.running = False
        self.admitted = 0  # images admitted to the batch queue and not yet started
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting to be admitted."""
        return sum(1 for _, fut in self._waiting if not fut.done())

    async def enter(self, images: int) -> None:
        """Wait until this request may join the batch that forms next."""
        if images > self.capacity:
            raise ValueError(f"a request of {images} images never fits a gate of {self.capacity}")
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((images, fut))
        self._admit()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.withdraw(images)  # admitted, then cancelled before it could run
            else:
                fut.cancel()
                self._admit()
            raise

    def start(self, images: int) -> None:
        """A batch of ``images`` admitted images starts running."""
        self.running = True
        self.admitted = max(0, self.admitted - images)

    def finish(self) -> None:
        """The running batch ended: admit the next requests."""
        self.running = False
        self._admit()

    def withdraw(self, images: int) -> None:
        """An admitted request left before its batch started (cancelled): free its place."""
        self.admitted = max(0, self.admitted - images)
        self._admit()

    def _admit(self) -> None:
        while self._waiting and not self.running:
            images, fut = self._waiting[0]
            if fut.done():  # cancelled while waiting
                self._waiting.popleft()
                continue
            if self.admitted + images > self.capacity:
                return
            self._waiting.popleft()
            self.admitted += images
            fut.set_result(None)
