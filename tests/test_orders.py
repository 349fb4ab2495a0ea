"""Scan orders, direction ids and position tables (runtime core, numpy only)."""

import numpy as np
import pytest

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.orders import (
    DIRECTION_NAMES,
    START,
    cell_to_index,
    diagonal_order,
    direction_counts,
    direction_ids,
    gather_from_grid,
    make_order,
    positions_table,
    raster_order,
    scatter_to_grid,
)

SPEC_G4 = [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0), (3, 1), (2, 2),
           (1, 3), (2, 3), (3, 2), (3, 3)]
SPEC_G4_STEPS = "R DL D UR UR R DL DL DL R UR UR D DL R".split()


def test_diagonal_g4_matches_spec_exactly():
    order = diagonal_order(4)
    assert [tuple(c) for c in order] == SPEC_G4
    ids = direction_ids(order)
    assert ids[0] == START
    assert [DIRECTION_NAMES[i] for i in ids[1:]] == SPEC_G4_STEPS


def test_diagonal_g16_step_counts():
    assert direction_counts(diagonal_order(16)) == {"DL": 113, "UR": 112, "R": 16, "D": 14}
    # Every consecutive pair of the zigzag is king-adjacent.
    assert np.abs(np.diff(diagonal_order(16), axis=0)).max() == 1


def test_mirrored_diagonal_starts_down_and_is_the_transpose():
    mirrored = diagonal_order(16, mirror=True)
    assert tuple(mirrored[1]) == (1, 0)
    assert direction_counts(mirrored) == {"UR": 113, "DL": 112, "D": 16, "R": 14}


def test_raster_is_divmod():
    order = raster_order(16)
    t = np.arange(1, 257)
    assert (order == np.stack(np.divmod(t - 1, 16), 1)).all()
    assert direction_counts(order)["R"] == 240


@pytest.mark.parametrize("name", ["diagonal", "diagonal-mirror", "raster"])
def test_scatter_gather_and_cell_index_are_inverse(name):
    g = 8
    order = make_order(name, g)
    tokens = np.random.default_rng(0).integers(0, 100, size=(3, g * g))
    grids = scatter_to_grid(tokens, order, g)
    assert (gather_from_grid(grids, order) == tokens).all()
    idx = cell_to_index(order, g)
    for t, (r, c) in enumerate(order, start=1):
        assert idx[r, c] == t
        assert (grids[:, r, c] == tokens[:, t - 1]).all()


def test_custom_permutation_flat_and_cells():
    g = 4
    perm = np.random.default_rng(1).permutation(g * g)
    order = make_order(perm, g)
    assert (order[:, 0] * g + order[:, 1] == perm).all()
    assert (make_order(order.tolist(), g) == order).all()
    # A non-adjacent jump maps by sign.
    ids = direction_ids(np.array([[0, 0], [3, 2], [3, 0], [0, 0]]))
    assert [DIRECTION_NAMES[i] for i in ids] == ["START", "DR", "L", "U"]


@pytest.mark.parametrize("bad, needle", [
    (np.arange(15), "16"),
    (np.zeros(16, dtype=int), "permutation"),
    (np.arange(16) + 1, "outside"),
    ("zigzag", "unknown order"),
])
def test_bad_orders_get_one_line(bad, needle):
    with pytest.raises(DartrtError) as err:
        make_order(bad, 4)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_positions_table_rows():
    g = 4
    order = diagonal_order(g)
    pos = positions_table(order, g, "4d")
    assert pos.shape == (16, 4)
    assert tuple(pos[0]) == (g, g, 0, 0)  # class token: sentinel current cell, next = pi(1)
    assert tuple(pos[1]) == (0, 0, 0, 1)  # token 1 sits at (0,0) and is followed by (0,1)
    assert tuple(pos[15]) == (3, 2, 3, 3)
    one_d = positions_table(order, g, "1d")
    assert (one_d[:, 0] == np.arange(16)).all() and (one_d[:, 1:] == 0).all()


def test_direction_ids_of_arbitrary_jumps():
    """A step's direction id is the sign pair of (Δrow, Δcol) as an index into KING_MOVES, whatever the
    distance: adjacent moves and jumps alike (the next cell itself is in the positions' next-row/next-col
    columns). Index 0, the class token, is START. Checked on raster, diagonal and random permutations."""
    from dartrt.runtime.orders import KING_MOVES, START, direction_counts

    g = 4
    raster = direction_ids(make_order("raster", g))
    assert raster[0] == START and direction_counts(make_order("raster", g)) == {"R": 12, "DL": 3}  # row wraps
    assert direction_counts(make_order("diagonal", g)) == {"R": 4, "DL": 5, "D": 2, "UR": 4}
    rng = np.random.default_rng(0)
    for _ in range(5):
        order = make_order(rng.permutation(g * g), g)
        ids = direction_ids(order)
        assert ids[0] == START and ids.shape == (g * g,)
        for t in range(1, g * g):
            step = tuple(int(v) for v in np.sign(order[t] - order[t - 1]))
            assert KING_MOVES[ids[t]] == step
