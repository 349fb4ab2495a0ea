"""The numpy step inputs a bench feeds every side alike, and the teacher-forced cache fill before a timed
decode step (shared by the CPU suite and the GPU section)."""

from __future__ import annotations

import numpy as np

from dartrt.runtime.contract import StepTables, cfg_double, cfg_rows

from .precisions import FillTrace


class Inputs:
    """The numpy step inputs of one batch: rows (CFG doubled), positions, directions, filler tokens."""

    def __init__(self, info, batch: int, cfg: bool, seed: int = 0) -> None:
        self.tables = StepTables.native(info)
        self.classes = np.arange(batch, dtype=np.int64) % info.num_classes
        self.rows = cfg_rows(self.classes, info.num_classes, cfg)
        rng = np.random.default_rng(seed)
        self.tokens = cfg_double(rng.integers(0, info.vocab_size, (batch, info.seq_len)), cfg)
        self.grids = rng.integers(0, info.vocab_size, (batch, info.grid_size, info.grid_size))

    def step_args(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Inputs of the decode call at write index t: the token sampled at t - 1."""
        return (self.tokens[:, t - 1:t], *self.tables.at(t, len(self.rows)), t)

    def prefill_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (self.rows, *self.tables.at(0, len(self.rows)))


def fill_cache(backend, inputs: Inputs, write_index: int, trace: FillTrace | None = None,
               cfg_scale: float | None = None) -> np.ndarray:
    """Prefill, then run the model up to ``write_index`` - 1 so the cache holds real keys/values;
    returns the logits at ``write_index``. ``trace`` collects every call's argmax (the fill is
    teacher-forced: every side is fed the same tokens), for the parity of a variant vs fp32."""
    logits = backend.prefill(*inputs.prefill_args())
    for t in range(1, write_index + 1):
        if trace is not None:
            trace.add(logits, cfg_scale)
        logits = backend.step(*inputs.step_args(t))
    if trace is not None:
        trace.add(logits, cfg_scale)
    return logits


