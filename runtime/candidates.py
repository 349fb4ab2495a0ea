"""Which cells an adaptive step scores, with what positions, and how confident the model is about each
(numpy only; docs/oar.md).

At every step of an adaptive order each image has painted the same number of cells, so every row of a
batch scores the same number C of candidates, each row its own cells. Candidate lists are kept sorted
by flat cell index (r * G + c), so that "the most confident cell, ties broken by the lowest cell index"
is a stable argsort.

- `CandidateSet` picks the cells: every free cell (OAR), the ``limit`` free cells nearest the painted
  region (pruning), or the next cell of a fixed order (editing in a fixed order);
- `candidate_inputs` gives the positions (the last token's cell, the candidate's) and direction (the
  sign pair of the jump) each candidate query is fed;
- `confidence` scores the CFG-combined logits of each candidate: its max softmax probability, or minus
  its entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DartrtError
from .metrics import log_softmax
from .orders import KING_MOVES, START

CONFIDENCES = ("max-prob", "neg-entropy")
NO_CELL = -1  # "the last token is the class token": it has no cell

# Direction id of a jump by its sign pair: index (sign(dr) + 1) * 3 + (sign(dc) + 1); (0, 0) never occurs.
_SIGN_TO_ID = np.full(9, -1, dtype=np.int64)
for _i, (_dr, _dc) in enumerate(KING_MOVES):
    _SIGN_TO_ID[(_dr + 1) * 3 + (_dc + 1)] = _i


def jump_direction(cur: np.ndarray, nxt: np.ndarray, grid: int) -> np.ndarray:
    """Direction ids of jumps from flat cells ``cur`` to ``nxt`` (broadcast): the sign pair's king move,
    as `runtime.orders.direction_ids` defines it for any step of any permutation; START where ``cur`` is
    NO_CELL (the class token)."""
    cur, nxt = np.broadcast_arrays(np.asarray(cur, dtype=np.int64), np.asarray(nxt, dtype=np.int64))
    dr = np.sign(nxt // grid - cur // grid)
    dc = np.sign(nxt % grid - cur % grid)
    ids = _SIGN_TO_ID[(dr + 1) * 3 + (dc + 1)]
    return np.where(cur == NO_CELL, START, ids)


def candidate_inputs(last: np.ndarray, cells: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """positions [B, C, 4] and direction [B, C] of C candidate queries per image: the last token's cell
    ``last`` [B] (NO_CELL: the class token, whose current cell is the RoPE sentinel G) then candidate
    cell c, and the direction of the jump to c (START for the class token)."""
    last = np.asarray(last, dtype=np.int64)[:, None]
    cells = np.asarray(cells, dtype=np.int64)
    cur_r = np.where(last == NO_CELL, grid, last // grid)
    cur_c = np.where(last == NO_CELL, grid, last % grid)
    positions = np.stack(np.broadcast_arrays(cur_r, cur_c, cells // grid, cells % grid), axis=-1)
    return positions.astype(np.int64), jump_direction(last, cells, grid)


def chain_inputs(cells: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """positions [B, S-1, 4] and direction [B, S-1] of tokens painted on flat cells [B, S] in this order,
    each predicting the next one: the decode inputs of a prefix, or of several cells of one step."""
    cur, nxt = cells[:, :-1], cells[:, 1:]
    positions = np.stack([cur // grid, cur % grid, nxt // grid, nxt % grid], axis=-1).astype(np.int64)
    return positions, jump_direction(cur, nxt, grid)


def confidence(logits: np.ndarray, kind: str) -> np.ndarray:
    """[B, C, V] CFG-combined logits → [B, C] float64: the max softmax probability (``max-prob``, OAR's
    choice) or minus the entropy in nats (``neg-entropy``). Higher is more confident."""
    logp = log_softmax(logits)
    if kind == "max-prob":
        return np.exp(logp.max(axis=-1))
    if kind == "neg-entropy":
        return (np.exp(logp) * logp).sum(axis=-1)
    raise DartrtError(f"confidence must be one of {', '.join(CONFIDENCES)}, got {kind!r}")


def rank_candidates(scores: np.ndarray) -> np.ndarray:
    """[B, C] → candidate indices per row, most confident first, ties by the lowest index (the lowest
    cell, since candidate lists are sorted by cell)."""
    return np.argsort(-scores, axis=-1, kind="stable")


@dataclass
class CandidateSet:
    """The free cells of B images and the cells an adaptive step scores.

    ``limit`` None scores every free cell; an integer keeps the ``limit`` free cells nearest the painted
    region (Chebyshev distance to the nearest painted cell, then to the last painted one, then the cell
    index). ``fixed`` [N]
    (flat cells) replaces the choice by a fixed order: the one candidate is its first free cell."""

    images: int
    grid: int
    limit: int | None = None
    fixed: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.grid * self.grid
        self.painted = np.zeros((self.images, n), dtype=bool)
        self.last = np.full(self.images, NO_CELL, dtype=np.int64)
        cells = np.arange(n)
        r, c = cells // self.grid, cells % self.grid
        self._cheb = np.maximum(np.abs(r[:, None] - r[None, :]), np.abs(c[:, None] - c[None, :]))
        self.nearest = np.full((self.images, n), n, dtype=np.int64)  # distance to the nearest painted cell

    @property
    def free_count(self) -> int:
        return int((~self.painted[0]).sum())

    def paint(self, cells: np.ndarray) -> None:
        """Mark flat cells [B] (one per image) painted, in this order."""
        cells = np.asarray(cells, dtype=np.int64)
        rows = np.arange(self.images)
        if self.painted[rows, cells].any():
            raise DartrtError("internal: a cell was painted twice")
        self.painted[rows, cells] = True
        self.nearest = np.minimum(self.nearest, self._cheb[cells])
        self.last = cells

    def cells(self) -> np.ndarray:
        """[B, C] flat cells to score, sorted by cell index."""
        free = ~self.painted
        count = self.free_count
        if self.fixed is not None:
            rank = np.where(free[:, self.fixed], np.arange(len(self.fixed)), len(self.fixed))
            return self.fixed[rank.argmin(axis=1)][:, None]
        every = np.nonzero(free)[1].reshape(self.images, count)  # row-major: sorted within each row
        if self.limit is None or self.limit >= count or not self.painted.any():
            return every
        rows = np.arange(self.images)[:, None]
        near = self.nearest[rows, every]
        to_last = self._cheb[self.last][rows, every]
        keys = near * (self.grid * self.grid) ** 2 + to_last * self.grid * self.grid + every
        keep = np.sort(np.take_along_axis(every, np.argsort(keys, axis=1)[:, :self.limit], axis=1), axis=1)
        return keep
