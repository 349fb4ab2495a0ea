"""The contenders of a bench run: a runtime `Backend` plus a way to run its graph and nothing else.

The bench times each backend twice per call: through the public `Backend` API (what the scheduler
pays: host → device binding, the logits copy back) and the graph alone (what the kernels cost). The
difference is host-side overhead, and it is what the "outside the graph" share splits off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dartrt.runtime.backend import Backend

Call = Callable[[], object]


class GraphCalls(Protocol):
    """Closures that run one graph call on inputs already bound by the matching `Backend` call."""

    def prefill(self, class_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray) -> Call: ...

    def step(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
             write_index: int) -> Call: ...


@dataclass
class Side:
    """``engine``: onnxruntime or torch; ``precision``: fp32 or the calibration variant it runs."""

    label: str
    backend: Backend
    graph: GraphCalls
    engine: str = "onnxruntime"
    precision: str = "fp32"


class OrtGraphCalls:
    """``run_with_iobinding`` on the binding the last `OrtBackend` call left in place.

    This reaches into `OrtBackend`'s IOBinding (``_io``) on purpose: the point is to time exactly the
    graph the backend runs, with its in-place cache binding, minus the per-call rebinding. Each closure
    must run after the backend call that bound its inputs and before any other call of that backend
    rebinds them (the bench's round-robin keeps that order), because the bound host arrays are owned by
    the backend and replaced on every call.
    """

    def __init__(self, backend) -> None:
        self.backend = backend

    def _run(self, graph: str) -> Call:
        session, io = self.backend.sessions[graph], self.backend._io[graph]

        def run() -> None:
            io.synchronize_inputs()
            session.run_with_iobinding(io)
            io.synchronize_outputs()

        return run

    def prefill(self, class_ids, positions, direction) -> Call:
        return self._run("prefill")

    def step(self, token_ids, positions, direction, write_index) -> Call:
        return self._run("decode")


class TorchGraphCalls:
    """The reference model's ``prefill``/``decode`` on pre-made device tensors and the backend's live
    caches: no host → device copies, no cache allocation, no logits copy back."""

    def __init__(self, backend) -> None:
        import torch

        self.torch = torch
        self.backend = backend

    def _t(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.backend.device)

    def _sync(self) -> None:
        if self.backend.device.type == "cuda":
            self.torch.cuda.synchronize(self.backend.device)

    def prefill(self, class_ids, positions, direction) -> Call:
        b, torch = self.backend, self.torch
        ids, pos, dirs = self._t(np.asarray(class_ids)[:, None]), self._t(positions), self._t(direction)
        write = torch.zeros(len(class_ids), dtype=torch.long, device=b.device)

        def run() -> None:
            with torch.no_grad():
                b.model.prefill(ids, pos, dirs, write, b.caches)
            self._sync()

        return run

    def step(self, token_ids, positions, direction, write_index) -> Call:
        b, torch = self.backend, self.torch
        ids, pos, dirs = self._t(token_ids), self._t(positions), self._t(direction)
        write = torch.full((len(token_ids),), int(write_index), dtype=torch.long, device=b.device)

        def run() -> None:
            with torch.no_grad():
                b.model.decode(ids, pos, dirs, write, b.caches, b.modulation)
            self._sync()

        return run
