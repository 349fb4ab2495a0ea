"""One decode step of the torch reference on static buffers, replayed from a CUDA graph.

Why: eager torch pays a kernel launch (and Python dispatch) per op, which at decode batch sizes costs
more than the bandwidth floor of the step (docs/design.md, "The performance model"); a CUDA graph replays the whole
step with one launch. Replay reruns the captured kernels on the captured *addresses*, so every input
must live in a static device tensor updated in place with ``copy_`` before ``replay()``: the token ids,
positions, direction and write index here, and the KV cache, which the model's ``decode`` already
writes in place at ``write_index``.

The capture follows the documented recipe (torch.cuda graph semantics): warm up on a side stream so
lazy initialisation (cuBLAS handles, autotuning, allocator growth) happens outside the capture, then
``with torch.cuda.graph(g): out = fn()``; ``out`` is a static output overwritten by every replay.
The capture itself is passed in (``capture=``), so the static-buffer logic can be checked on the CPU
with `eager_capture` (CI has no GPU); the CUDA path ran on one H200, eager, plain and torch.compile'd
steps alike, with the replayed logits equal to eager's (docs/benchmarks.md, "GPU").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Capture = Callable[[Callable[[], torch.Tensor]], tuple[Callable[[], None], torch.Tensor]]


def cuda_capture(fn: Callable[[], torch.Tensor], warmup: int = 3) -> tuple[Callable[[], None], torch.Tensor]:
    """Capture ``fn`` into a CUDA graph; returns (replay, static output)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def eager_capture(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """A stand-in for `cuda_capture` (CPU, tests): "replay" reruns ``fn`` into the same output buffer,
    so it exercises exactly the static-buffer contract a real graph relies on."""
    out = fn()

    def replay() -> None:
        out.copy_(fn())

    return replay, out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StaticDecodeStep:
    """``model.decode`` of one token per row, reading only static tensors (graph-capturable)."""

    def __init__(self, model, caches, modulation: torch.Tensor | None, rows: int, pos_width: int,
                 device: torch.device | str, compile_backend: str | None = None) -> None:
        self.model, self.caches, self.modulation = model, caches, modulation
        self.device = torch.device(device)
        kw = dict(dtype=torch.long, device=self.device)
        self.token_ids = torch.zeros(rows, 1, **kw)
        self.positions = torch.zeros(rows, 1, pos_width, **kw)  # per row (the graph contract)
        self.direction = torch.zeros(rows, 1, **kw)
        self.write_index = torch.zeros(rows, **kw)
        self.logits: torch.Tensor | None = None
        self._replay: Callable[[], None] | None = None
        # torch.compile of the whole step (gpt-fast's recipe): one graph, fused kernels; static shapes, so a
        # new batch size is a new step object. Compiled lazily, by the first call (warm-up or eager()).
        self._fn: Callable[[], torch.Tensor] = (self.forward if compile_backend is None else
                                                torch.compile(self.forward, backend=compile_backend,
                                                              fullgraph=True, dynamic=False))

    def set_inputs(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
                   write_index: int) -> None:
        """Copy new step inputs into the static buffers (host → device; the addresses never change)."""
        self.token_ids.copy_(torch.from_numpy(np.ascontiguousarray(token_ids, dtype=np.int64)))
        self.positions.copy_(torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64)))
        self.direction.copy_(torch.from_numpy(np.ascontiguousarray(direction, dtype=np.int64)))
        self.write_index.fill_(int(write_index))

    @torch.no_grad()
    def forward(self) -> torch.Tensor:
        logits, _ = self.model.decode(self.token_ids, self.positions, self.direction, self.write_index,
                                      self.caches, self.modulation)
        return logits

    def eager(self) -> torch.Tensor:
        """The same step, launched op by op; synchronised so host timing covers the GPU work."""
        out = self._fn()
        synchronize(self.device)
        return out

    def capture(self, capture: Capture = cuda_capture) -> None:
        """Set inputs first: warm-up and capture run the step for real (rewriting the same cache slot)."""
        self._replay, self.logits = capture(self._fn)
        synchronize(self.device)

    def launch(self) -> None:
        """Replay without waiting for it: back-to-back launches time the GPU's own work per step."""
        if self._replay is None:
            raise RuntimeError("capture() the step before replaying it")
        self._replay()

    def replay(self) -> torch.Tensor:
        self.launch()
        synchronize(self.device)
        return self.logits
