"""The graph I/O contract: the names, shapes and row layout that every step graph and every caller share.

The exporter writes graphs with these names, the backends bind them, and the checkers (verify, graph
passes, calibration traces, bench) build feeds for them; each imports them from here, so a change of
the contract is a change in one file (docs/design.md describes it in prose).

Decoder graphs (``prefill``, ``decode``), R rows, S new tokens, T_max cache slots:

- inputs: ``input_ids [R, S]`` int64 (prefill: the class ids, S = 1), ``positions [R, S, 4]`` int64,
  ``direction [R, S]`` int64 (per row, so every row may follow its own scan order), ``write_index [R]``
  int64 (the cache slot of the first new token), for AdaLN
  models the decode graph's ``adaln_modulation [R, 9, M]`` (prefill computes it), and per layer i
  ``past_key_values.{i}.key|value [R, H, T_max, D]``;
- outputs: ``logits [R, S, V]`` float32, prefill's ``adaln_modulation``, and ``present.{i}.key|value``,
  which a runtime binds to the same buffer as the matching past input (an in-place cache update).

VQ decoder: ``token_grid [B, G, G]`` int64 → ``image [B, 3, H, W]`` float32 in about [-1, 1].

Adaptive order (OAR, docs/oar.md), for 4D-RoPE models:

- ``candidates``: the step inputs with ``input_ids [R, 1]`` (the last token, at slot ``write_index``),
  ``positions [R, C, 4]`` and ``direction [R, C]`` (one per candidate next cell), the AdaLN table and the
  caches (read only) → ``logits [R, C, V]`` and per layer ``candidate.{i}.key|value [R, H, C, D]``;
- ``commit``: ``choice [R]`` int64 (a candidate index), ``write_index [R]``, the candidate rows and the
  caches → ``present.{i}.*``, bound in place like decode's: one [R, H, 1, D] row written per cache.

VQ encoder (editing, when the checkpoint's VQ has one): ``image [B, 3, H, W]`` float32 in [-1, 1] →
``token_grid [B, G, G]`` int64.

Rows with classifier-free guidance: R = 2B, the B conditional rows first, then the same images'
null-class rows (class id ``num_classes``); both halves are fed the same tokens and positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .orders import direction_ids, make_order, positions_table

# The step graphs need RotaryEmbedding and Attention (opset 23) and TensorScatter (24); TensorRT's parser
# reads up to 24. The dynamo exporter writes broken files at 17 and at 26 and above without an error.
OPSET = 24
MIN_OPSET, MAX_OPSET = 18, 25

PREFILL, DECODE, VQ_DECODER = "prefill", "decode", "vq_decoder"
# Adaptive order (OAR, docs/oar.md) and editing: optional graphs, exported for 4D-RoPE models (candidates,
# commit) and for a VQ with an encoder (vq_encoder); a package without them runs every fixed order.
CANDIDATES, COMMIT, VQ_ENCODER = "candidates", "commit", "vq_encoder"
ADAPTIVE_GRAPHS = (CANDIDATES, COMMIT)
DECODER_GRAPHS = (PREFILL, DECODE)
ALL_GRAPHS = (PREFILL, DECODE, VQ_DECODER)

INPUT_IDS, POSITIONS, DIRECTION, WRITE_INDEX = "input_ids", "positions", "direction", "write_index"
STEP_INPUTS = (INPUT_IDS, POSITIONS, DIRECTION, WRITE_INDEX)
MODULATION = "adaln_modulation"
LOGITS = "logits"
PAST, PRESENT = "past_key_values", "present"
TOKEN_GRID, IMAGE = "token_grid", "image"
CANDIDATE, CHOICE = "candidate", "choice"  # candidate.{i}.key|value rows; the commit's chosen candidate
# Symbolic dims of the exported graphs (batch rows, new tokens, candidate cells).
BATCH_DIM, SEQ_DIM, CANDIDATES_DIM = "batch", "seq", "candidates"


def cache_names(n_layer: int, prefix: str = PAST) -> list[str]:
    """``{prefix}.{i}.key`` / ``.value`` for every layer, in graph order."""
    return [f"{prefix}.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]


def is_cache(name: str) -> bool:
    return name.startswith((f"{PAST}.", f"{PRESENT}."))


def past_name(present: str) -> str:
    """``present.{i}.key`` → ``past_key_values.{i}.key`` (the input an output is aliased to)."""
    return PAST + present[len(PRESENT):] if present.startswith(f"{PRESENT}.") else present


@dataclass(frozen=True)
class GraphIO:
    """Input and output names of one graph, in graph order."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def graph_io(graph: str, n_layer: int, adaln: bool) -> GraphIO:
    """The names ``graph`` takes and returns for a model with ``n_layer`` layers (and AdaLN or not)."""
    past, present = cache_names(n_layer, PAST), cache_names(n_layer, PRESENT)
    mod = [MODULATION] if adaln else []
    if graph == PREFILL:
        return GraphIO((*STEP_INPUTS, *past), (LOGITS, *mod, *present))
    if graph == DECODE:
        return GraphIO((*STEP_INPUTS, *mod, *past), (LOGITS, *present))
    if graph == VQ_DECODER:
        return GraphIO((TOKEN_GRID,), (IMAGE,))
    rows = cache_names(n_layer, CANDIDATE)
    if graph == CANDIDATES:  # the caches are read only: no present outputs
        return GraphIO((*STEP_INPUTS, *mod, *past), (LOGITS, *rows))
    if graph == COMMIT:
        return GraphIO((CHOICE, WRITE_INDEX, *rows, *past), tuple(present))
    if graph == VQ_ENCODER:
        return GraphIO((IMAGE,), (TOKEN_GRID,))
    raise ValueError(f"unknown graph {graph!r}")


# ---- rows ---------------------------------------------------------------------------------------------
def cfg_rows(class_ids, num_classes: int, cfg: bool) -> np.ndarray:
    """The class id of every row: the images' classes, then (with CFG) as many null-class rows."""
    classes = np.asarray(class_ids, dtype=np.int64)
    return np.concatenate([classes, np.full_like(classes, num_classes)]) if cfg else classes


def cfg_double(x: np.ndarray, cfg: bool) -> np.ndarray:
    """Per-image inputs (tokens) for every row: the null half is fed exactly what its image was."""
    return np.concatenate([x, x]) if cfg else x


# ---- positions of scan orders --------------------------------------------------------------------------
@dataclass(frozen=True)
class StepTables:
    """``positions`` and ``direction`` of every decoder input index, for one scan order shared by every
    row (B = 1) or one order per image (B images)."""

    positions: np.ndarray  # [B, N, 4] int64
    directions: np.ndarray  # [B, N] int64

    @classmethod
    def of(cls, order: np.ndarray, grid: int, rope: str) -> StepTables:
        """Tables of ``order`` [N, 2] (shared by every row) or ``orders`` [B, N, 2] (one per image)."""
        orders = np.asarray(order)
        orders = orders[None] if orders.ndim == 2 else orders
        return cls(np.stack([positions_table(o, grid, rope) for o in orders]),
                   np.stack([direction_ids(o) for o in orders]))

    @classmethod
    def native(cls, model) -> StepTables:
        """The tables of a model's own scan order; ``model`` is a ModelInfo or a ModelConfig (anything
        with ``order``, ``grid_size`` and ``rope``)."""
        return cls.of(make_order(model.order, model.grid_size), model.grid_size, model.rope)

    def at(self, index: int, rows: int, count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(positions [rows, count, 4], direction [rows, count]) of input indices index .. index+count-1
        (prefill: index 0). A shared order serves any number of rows; per-image tables serve their B
        images, or 2B rows with CFG (the null-class half follows its image)."""
        pos, dirs = self.positions[:, index:index + count], self.directions[:, index:index + count]
        images = pos.shape[0]
        if images == 1:
            return np.broadcast_to(pos, (rows, *pos.shape[1:])), np.broadcast_to(dirs, (rows, dirs.shape[1]))
        if rows == images:
            return pos, dirs
        if rows == 2 * images:
            return cfg_double(pos, True), cfg_double(dirs, True)
        raise ValueError(f"tables of {images} images cannot feed {rows} rows")


def step_feed(input_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray, write_index: int | np.ndarray
              ) -> dict[str, np.ndarray]:
    """The four step inputs as contiguous int64 arrays (positions [R, S, 4], direction [R, S] from
    `StepTables.at`); ``write_index`` a scalar (same slot for every row) or one slot per row."""
    ids = np.ascontiguousarray(input_ids, dtype=np.int64)
    write = np.broadcast_to(np.asarray(write_index, dtype=np.int64), (ids.shape[0],))
    return {INPUT_IDS: ids, POSITIONS: np.ascontiguousarray(positions, dtype=np.int64),
            DIRECTION: np.ascontiguousarray(direction, dtype=np.int64),
            WRITE_INDEX: np.ascontiguousarray(write)}


# ---- D-AR: the tokenizer's decode graphs ------------------------------------------------------------------
# A D-AR package (manifest ``family: "d-ar"``) has the AR graphs above (prefill/decode with 1D RoPE) and, in
# place of the VQ decoder, the two graphs of D-AR's sequential diffusion tokenizer (docs/d-ar.md):
#
# - ``conditions``: token ids [R, S] int64 at slots ``write_index`` [R] .. + S - 1 → their conditions
#   [R, S, cond_dim] float32, through the causal conditions transformer with its own static KV cache
#   ``past_key_values.{i}.key|value`` [R, H, num_tokens, Dh] (bound in place, as the AR cache). S is dynamic:
#   one call per group, per token, or over a whole prefix;
# - ``velocity``: one ODE step's velocity, x [R, 3, H, W] float32 at time s [R] float32 with the conditions
#   of one group [R, tokens_per_step, cond_dim] → velocity [R, 3, H, W]. The noise x_0 is the caller's, so a
#   seed reproduces an image; the Euler/AB2 loop around this graph runs on the host (runtime.d_ar_decoder).
D_AR_FAMILY = "d-ar"
CONDITIONS, VELOCITY = "conditions", "velocity"
D_AR_DECODER_GRAPHS = (CONDITIONS, VELOCITY)
D_AR_GRAPHS = (PREFILL, DECODE, CONDITIONS, VELOCITY)
COND = "conditions"  # the conditions graph's output and the velocity graph's group input
SAMPLE, TIME = "x", "s"
VELOCITY_OUT = "velocity"
TOKENS_DIM = "tokens"  # the symbolic S of the conditions graph


def d_ar_graph_io(graph: str, cond_layers: int) -> GraphIO:
    """The names a D-AR tokenizer graph takes and returns (``cond_layers`` conditions-transformer layers)."""
    if graph == CONDITIONS:
        return GraphIO((INPUT_IDS, WRITE_INDEX, *cache_names(cond_layers, PAST)),
                       (COND, *cache_names(cond_layers, PRESENT)))
    if graph == VELOCITY:
        return GraphIO((SAMPLE, TIME, COND), (VELOCITY_OUT,))
    raise ValueError(f"unknown D-AR graph {graph!r}")


def conditions_feed(input_ids: np.ndarray, write_index: int | np.ndarray) -> dict[str, np.ndarray]:
    """The conditions graph's two step inputs as contiguous int64 arrays (``write_index`` a scalar or per row)."""
    ids = np.ascontiguousarray(input_ids, dtype=np.int64)
    write = np.broadcast_to(np.asarray(write_index, dtype=np.int64), (ids.shape[0],))
    return {INPUT_IDS: ids, WRITE_INDEX: np.ascontiguousarray(write)}


def velocity_feed(x: np.ndarray, s: float | np.ndarray, cond: np.ndarray) -> dict[str, np.ndarray]:
    """The velocity graph's inputs: x and the group's conditions as float32, s broadcast to one time per row."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    times = np.ascontiguousarray(np.broadcast_to(np.asarray(s, dtype=np.float32), (x.shape[0],)))
    return {SAMPLE: x, TIME: times, COND: np.ascontiguousarray(cond, dtype=np.float32)}
