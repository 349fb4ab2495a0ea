"""Scan orders, direction ids and per-index position tables (numpy only).

The reference model, the exporter and every backend take these from here, so there is one definition
of where token t sits on the grid. Conventions (docs/design.md, "Conventions"):

- An *order* is an int array [G*G, 2] of (row, col) cells: ``order[k]`` is the cell of image token
  k+1 (index 0 of the sequence is the class token).
- The decoder consumes N = G*G input indices: the class token at 0 and image tokens 1..N-1; the
  output at index t predicts the token at cell ``order[t]``.
- ``positions[t] = (cur_row, cur_col, next_row, next_col)``. The class token has no current cell: it
  gets the sentinel ``G`` in both current columns, which selects the dedicated "class row" of the RoPE
  tables (identity for DAR, zeros for LlamaGen).
- For 1D RoPE the position is simply the index: ``positions[t] = (t, 0, 0, 0)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import DartrtError

# The 8 king moves as (d_row, d_col), in a fixed order; id 8 is START (the class token).
KING_MOVES: tuple[tuple[int, int], ...] = (
    (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1),
)
DIRECTION_NAMES: tuple[str, ...] = ("UL", "U", "UR", "L", "R", "DL", "D", "DR", "START")
START = 8
NUM_DIRECTIONS = 9
ORDER_NAMES = ("diagonal", "diagonal-mirror", "raster")


def raster_order(grid: int) -> np.ndarray:
    """Row-major order: token t (1-based) at divmod(t-1, G)."""
    r, c = np.divmod(np.arange(grid * grid), grid)
    return np.stack([r, c], axis=1).astype(np.int64)


def diagonal_order(grid: int, mirror: bool = False) -> np.ndarray:
    """Zigzag over anti-diagonals s = r + c.

    On even s the cells are visited in decreasing r, on odd s in increasing r, so every consecutive
    pair is king-adjacent. ``mirror`` transposes the walk (first step down instead of right).
    """
    cells = []
    for s in range(2 * grid - 1):
        rows = range(max(0, s - grid + 1), min(s, grid - 1) + 1)
        rows = reversed(rows) if s % 2 == 0 else rows
        cells.extend((r, s - r) for r in rows)
    order = np.asarray(cells, dtype=np.int64)
    return order[:, ::-1].copy() if mirror else order


def make_order(spec: str | Sequence | np.ndarray, grid: int) -> np.ndarray:
    """Resolve an order name or a user permutation into a validated [G*G, 2] cell array.

    A custom order may be given as cells [[r, c], ...] or as flat cell indices r*G+c.
    """
    if isinstance(spec, str):
        if spec == "diagonal":
            return diagonal_order(grid)
        if spec == "diagonal-mirror":
            return diagonal_order(grid, mirror=True)
        if spec == "raster":
            return raster_order(grid)
        raise DartrtError(f"unknown order {spec!r}: use one of {', '.join(ORDER_NAMES)} or a permutation")
    arr = np.asarray(spec)
    if arr.size == 0:
        raise DartrtError(f"order is empty; a custom order lists all {grid * grid} cells")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        kind = {"f": "floats", "c": "complex numbers", "U": "strings", "S": "strings", "O": "objects",
                "b": "booleans"}.get(arr.dtype.kind, arr.dtype.name)
        raise DartrtError(f"order holds {kind}; only integer arrays are orders (cell indices r*G+c, or [G*G, 2] "
                          "(row, col) pairs)")
    if arr.ndim == 1:
        if arr.size != grid * grid:
            raise DartrtError(f"order has {arr.size} cells but the grid is {grid}x{grid} = {grid * grid}")
        arr = np.stack(np.divmod(arr.astype(np.int64), grid), axis=1)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] != grid * grid:
        raise DartrtError(f"order has shape {list(arr.shape)}; expected [{grid * grid}, 2] for a {grid}x{grid} grid")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= grid:
        raise DartrtError(f"order has a cell outside the {grid}x{grid} grid")
    flat = arr[:, 0] * grid + arr[:, 1]
    if np.unique(flat).size != flat.size:
        raise DartrtError("order is not a permutation: some cell is visited twice")
    return arr


def cell_to_index(order: np.ndarray, grid: int) -> np.ndarray:
    """[G, G] map from a cell to its sequence index (1-based: index 0 is the class token)."""
    out = np.empty((grid, grid), dtype=np.int64)
    out[order[:, 0], order[:, 1]] = np.arange(1, len(order) + 1)
    return out


def scatter_to_grid(tokens: np.ndarray, order: np.ndarray, grid: int) -> np.ndarray:
    """Place tokens [B, G*G] (in scan order) onto their cells: grid[b, order[t]] = tokens[b, t]."""
    tokens = np.asarray(tokens)
    out = np.empty(tokens.shape[:-1] + (grid, grid), dtype=tokens.dtype)
    out[..., order[:, 0], order[:, 1]] = tokens
    return out


def gather_from_grid(grids: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Inverse of `scatter_to_grid`: read [B, G, G] grids in scan order, giving [B, G*G]."""
    return np.asarray(grids)[..., order[:, 0], order[:, 1]]


def direction_ids(order: np.ndarray) -> np.ndarray:
    """Direction id of every input index [N]: START for the class token, then the sign pair of
    order[t] - order[t-1] as an index into KING_MOVES. A non-adjacent jump maps by sign."""
    step = np.sign(np.diff(order, axis=0))
    table = {move: i for i, move in enumerate(KING_MOVES)}
    ids = [START] + [table[(int(dr), int(dc))] for dr, dc in step]
    return np.asarray(ids, dtype=np.int64)


def direction_counts(order: np.ndarray) -> dict[str, int]:
    """How many steps of the walk go in each direction (START excluded)."""
    ids = direction_ids(order)[1:]
    return {DIRECTION_NAMES[i]: int((ids == i).sum()) for i in np.unique(ids)}


def positions_table(order: np.ndarray, grid: int, rope: str = "4d") -> np.ndarray:
    """Per-index RoPE positions [N, 4] int64 for the N = G*G decoder inputs (see module doc)."""
    n = len(order)
    if rope == "1d":
        pos = np.zeros((n, 4), dtype=np.int64)
        pos[:, 0] = np.arange(n)
        return pos
    cur = np.concatenate([np.full((1, 2), grid, dtype=np.int64), order[:-1]], axis=0)
    return np.concatenate([cur, order], axis=1).astype(np.int64)
