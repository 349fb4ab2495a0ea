"""The adaptive-order generation loop (OAR): the model chooses, per image, which cell to paint next.

One loop for every backend, numpy only, like `runtime.scheduler.sample_tokens` (which walks a fixed
order and cannot choose cells). A step (docs/oar.md):

1. the image's last token is fed once per candidate cell c (every free cell, or a pruned few), with
   positions (its cell, c) and the direction of the jump: one batched call of the candidate graph, whose
   queries attend to the cached prefix and to themselves only; it returns logits [R, C, V] and each
   candidate's K/V row;
2. the logits are CFG-combined per candidate, each candidate is scored by its confidence (max softmax
   probability, or minus the entropy), and the most confident cell wins, ties to the lowest cell index;
3. the token at that cell is sampled with the image's own Gumbel generator, so the same seed gives the
   same images and orders on every backend and at every batch size;
4. the winner's K/V row is committed into the cache at the last token's slot, in place: the last token's
   K/V depend on which cell comes next (4D RoPE and direction), so the row was computed for each
   candidate and is only selected now, with no second forward.

The first step is the one exception. The class token attends to nothing but itself, so its attention
weight is exactly 1 on its own value, which RoPE does not rotate, and its direction is START for every
candidate: its logits are the same, bit for bit, whichever first cell it is asked about (tested). Scoring
would tie every cell, and the tie rule picks the lowest; so the first cell is the lowest free one (cell
(0, 0), an edit's first known cell, a fixed order's first) and the ordinary prefill computes the class
token's K/V for it. With ``cells_per_step`` K > 1 the K most confident cells of a step are all
painted; they enter the cache as a chain (the last token's row with the first chosen cell, then one
decode call of the K - 1 others, each predicting the next), so the sequence the model sees is a plain
any-order sequence. Editing prefills known cells first (`runtime.editing`).

A backend takes part through three more calls (`AdaptiveBackend`) besides ``prefill``/``step``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from .arguments import integer
from .backend import Backend, ModelInfo
from .candidates import CONFIDENCES, NO_CELL, CandidateSet, candidate_inputs, chain_inputs, confidence, rank_candidates
from .cfg import combine, weight_table
from .contract import cfg_double, cfg_rows
from .editing import Edit
from .errors import DartrtError
from .orders import make_order
from .sampler import gumbel_noise, image_generator, sample
from .scheduler import Request, StepCallback, build_request, check_finite_logits

ADAPTIVE = "adaptive"
CELL_SCHEDULES = ("constant", "linear")


class AdaptiveBackend(Backend, Protocol):
    """A `Backend` that can score candidate next cells and commit one (torch reference, onnxruntime)."""

    def score_candidates(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
                         write_index: int) -> np.ndarray:
        """The last token [R, 1] at slot write_index, C candidate next cells → logits [R, C, V]."""

    def commit(self, choice: np.ndarray, write_index: int) -> None:
        """Write candidate choice[r]'s K/V rows of the last scoring call at slot write_index, in place."""


@dataclass(frozen=True)
class AdaptiveSettings:
    """How an adaptive step chooses.

    ``confidence``: max-prob (OAR) or neg-entropy. ``candidates``: None scores every free cell, N the N
    free cells nearest the painted region. ``cells_per_step``: K cells
    painted per step (1: OAR); ``cells_schedule`` constant (K every step) or linear (1 at the start, K
    when the image is full: more cells per step as the context grows). ``fixed_order``: flat cells [N] of
    a fixed order to walk instead of choosing (editing in a fixed order)."""

    confidence: str = "max-prob"
    candidates: int | None = None
    cells_per_step: int = 1
    cells_schedule: str = "constant"
    fixed_order: np.ndarray | None = None

    def validate(self, cells: int) -> AdaptiveSettings:
        if self.confidence not in CONFIDENCES:
            raise DartrtError(f"confidence must be one of {', '.join(CONFIDENCES)}, got {self.confidence!r}")
        if self.candidates is not None:
            integer("candidates", self.candidates, 1, cells)
        integer("cells_per_step", self.cells_per_step, 1, cells)
        if self.cells_schedule not in CELL_SCHEDULES:
            raise DartrtError(f"cells_schedule must be one of {', '.join(CELL_SCHEDULES)}, got {self.cells_schedule!r}")
        return self

    def cells_at(self, filled: int, cells: int) -> int:
        """Cells to paint at a step that starts with ``filled`` of ``cells`` painted."""
        if self.cells_schedule == "linear":
            return 1 + (self.cells_per_step - 1) * filled // max(cells - 1, 1)
        return self.cells_per_step


@dataclass
class AdaptiveTokens:
    """What the loop chose: tokens [n, N] in painting order, and the flat cells [n, N] they were painted
    on (known cells of an edit first); ``steps`` scoring calls per batch."""

    tokens: np.ndarray
    cells: np.ndarray
    steps: int

    def grids(self, grid: int) -> np.ndarray:
        """[n, G, G] token grids."""
        out = np.empty((len(self.tokens), grid * grid), dtype=np.int64)
        np.put_along_axis(out, self.cells, self.tokens, axis=1)
        return out.reshape(-1, grid, grid)

    def orders(self, grid: int) -> np.ndarray:
        """[n, N, 2] (row, col) of every image's order: each one a valid ``order=`` for a fixed replay."""
        return np.stack([self.cells // grid, self.cells % grid], axis=-1)


def check_adaptive_model(backend: Backend, allow_untrained: bool = False) -> None:
    """Refuse what cannot choose its order: a model whose inputs do not name the next cell (2D or 1D
    RoPE), one not trained for any order (unless ``allow_untrained``), a backend without candidate calls."""
    info: ModelInfo = backend.info
    if info.rope != "4d":
        raise DartrtError(f"an adaptive order needs a model told which cell it predicts (4D RoPE: current and next "
                          f"cell); {info.name} has {info.rope} RoPE")
    if not info.any_order and not allow_untrained:
        raise DartrtError(f"{info.name} was not trained for any order (its config has any_order false), so it "
                          "cannot choose its own order well; pass allow_untrained=True (--allow-untrained) to run "
                          "it anyway")
    missing = [m for m in ("score_candidates", "commit") if not hasattr(backend, m)]
    if missing:
        raise DartrtError(f"the {backend.name} backend cannot run an adaptive order (no {missing[0]}); use "
                          "onnxruntime or the torch reference")
    if hasattr(backend, "adaptive_graphs"):  # a package: its candidate graphs exist (else one line, up front)
        backend.adaptive_graphs()


def sample_adaptive(backend: AdaptiveBackend, request: Request, settings: AdaptiveSettings = AdaptiveSettings(),
                    on_step: StepCallback | None = None, edit: Edit | None = None) -> AdaptiveTokens:
    """Run ``request`` choosing each image's order (see the module doc); ``request.order`` is not used.
    ``edit`` prefills its known cells (in raster order) and generates the rest."""
    info = backend.info
    grid, n = info.grid_size, info.seq_len
    settings = settings.validate(n)
    rows = request.images
    use_cfg = request.cfg.enabled
    if any(row.cfg.enabled != use_cfg for row in rows):
        raise DartrtError("a batch mixes images with CFG on and CFG off; run them as separate requests")
    known = edit.cells if edit is not None else np.empty(0, dtype=np.int64)
    tokens = np.empty((len(rows), n), dtype=np.int64)
    cells = np.empty((len(rows), n), dtype=np.int64)
    total = -(-len(rows) // request.batch_size) * (n - len(known))
    done, steps = 0, 0
    for first in range(0, len(rows), request.batch_size):
        chunk = rows[first:first + request.batch_size]
        b = len(chunk)
        classes = np.asarray([row.class_id for row in chunk], dtype=np.int64)
        rngs = [image_generator(row.seed, row.index) for row in chunk]
        weights = weight_table([row.cfg for row in chunk], n) if use_cfg else None
        class_rows = cfg_rows(classes, info.num_classes, use_cfg)
        out_tok, out_cell = tokens[first:first + b], cells[first:first + b]
        chooser = CandidateSet(b, grid, settings.candidates, settings.fixed_order)
        filled = _prefill_known(backend, edit, known, class_rows, out_tok, out_cell, chooser, first, use_cfg, grid)
        steps = 0
        while filled < n:
            cand = chooser.cells()
            positions, direction = candidate_inputs(chooser.last, cand, grid)
            positions, direction = cfg_double(positions, use_cfg), cfg_double(direction, use_cfg)
            if filled == 0:  # the first cell: the lowest candidate (module doc), no scoring
                cand, positions, direction = cand[:, :1], positions[:, :1], direction[:, :1]
                logits = backend.prefill(class_rows, positions, direction)[:, None]
            else:
                last = cfg_double(out_tok[:, filled - 1:filled], use_cfg)
                logits = backend.score_candidates(last, positions, direction, filled)
            steps += 1
            check_finite_logits(logits, filled, first, b)
            count, vocab = cand.shape[1], logits.shape[-1]
            if use_cfg:
                logits = combine(logits.reshape(len(logits), -1), weights[filled]).reshape(b, count, vocab)
            k = min(settings.cells_at(filled, n), count)
            rank = (np.zeros((b, 1), dtype=np.int64) if count == 1
                    else rank_candidates(_confidence(logits, settings.confidence))[:, :k])
            chosen = np.take_along_axis(cand, rank, axis=1)
            for j in range(k):
                picked = logits[np.arange(b), rank[:, j]]
                noise = None if request.sampling.greedy else gumbel_noise(rngs, vocab)
                out_tok[:, filled + j] = sample(picked, request.sampling, noise)
                out_cell[:, filled + j] = chosen[:, j]
                chooser.paint(chosen[:, j])
            if filled + k < n:  # the last token's row (with the first chosen cell as its next), then the chain
                if filled > 0:  # the class token's row was written by prefill
                    backend.commit(cfg_double(rank[:, 0], use_cfg), filled)
                if k > 1:
                    pos, dirs = chain_inputs(chosen, grid)
                    backend.step(cfg_double(out_tok[:, filled:filled + k - 1], use_cfg), cfg_double(pos, use_cfg),
                                 cfg_double(dirs, use_cfg), filled + 1)
            filled += k
            done += k
            if on_step is not None:
                on_step(done, total)
    return AdaptiveTokens(tokens, cells, steps)


def _confidence(logits: np.ndarray, kind: str) -> np.ndarray:
    """Per image, so that a large vocabulary times every free cell stays one image's float64 copy."""
    return np.stack([confidence(row[None], kind)[0] for row in logits])


def _prefill_known(backend: Backend, edit: Edit | None, known: np.ndarray, class_rows: np.ndarray,
                   out_tok: np.ndarray, out_cell: np.ndarray, chooser: CandidateSet, first: int, use_cfg: bool,
                   grid: int) -> int:
    """An edit's known cells as the prefix: the class token (prefill, next = the first known cell) and the
    known tokens but the last (one decode call), each with the next known cell. Returns the cells painted."""
    k = len(known)
    if k == 0:
        return 0
    b = len(out_tok)
    prefix = edit.prefix_tokens(np.arange(first, first + b))
    cells = np.broadcast_to(known, (b, k))
    out_tok[:, :k], out_cell[:, :k] = prefix, cells
    for j in range(k):
        chooser.paint(cells[:, j])
    pos, dirs = candidate_inputs(np.full(b, NO_CELL), cells[:, :1], grid)
    backend.prefill(class_rows, cfg_double(pos, use_cfg), cfg_double(dirs, use_cfg))
    if k > 1:
        pos, dirs = chain_inputs(cells, grid)
        backend.step(cfg_double(prefix[:, :k - 1], use_cfg), cfg_double(pos, use_cfg), cfg_double(dirs, use_cfg), 1)
    return k


@dataclass
class AdaptiveResult:
    """Images (when decoded), token grids [n, G, G], orders [n, N, 2] and the chosen tokens in order."""

    images: list[Image.Image]
    class_ids: list[int]
    grids: np.ndarray
    orders: np.ndarray
    tokens: np.ndarray
    steps: int


def run_adaptive(backend: AdaptiveBackend, request: Request, settings: AdaptiveSettings = AdaptiveSettings(),
                 on_step: StepCallback | None = None, edit: Edit | None = None, decode: bool = True) -> AdaptiveResult:
    """`sample_adaptive`, then the VQ decode of the grids ``request.batch_size`` at a time (``decode``)."""
    chosen = sample_adaptive(backend, request, settings, on_step, edit)
    grid = backend.info.grid_size
    grids = chosen.grids(grid)
    images: list[Image.Image] = []
    if decode:
        step = request.batch_size
        pixels = np.concatenate([backend.decode_vq(grids[i:i + step]) for i in range(0, len(grids), step)])
        images = [Image.fromarray(p) for p in pixels]
    return AdaptiveResult(images, list(request.class_ids), grids, chosen.orders(grid), chosen.tokens, chosen.steps)


def fixed_settings(backend: Backend, order, settings: AdaptiveSettings | None = None) -> AdaptiveSettings:
    """Settings that walk a fixed ``order`` (a name or permutation) through the adaptive loop: editing
    in a fixed order (the known cells are skipped)."""
    info = backend.info
    cells = make_order(info.order if order is None else order, info.grid_size)
    flat = cells[:, 0] * info.grid_size + cells[:, 1]
    return dataclasses.replace(settings or AdaptiveSettings(), fixed_order=flat, candidates=None, cells_per_step=1)


def generate_adaptive(backend: AdaptiveBackend, class_ids, *, n_per_class: int = 1, cfg: float | None = None,
                      cfg_schedule: str | None = None, seed: int = 0, temperature: float | None = None,
                      top_k: int | None = None, top_p: float | None = None, batch_size: int = 8,
                      confidence: str = "max-prob", candidates: int | None = None, cells_per_step: int = 1,
                      cells_schedule: str = "constant", edit: Edit | None = None, allow_untrained: bool = False,
                      decode: bool = True, on_step: StepCallback | None = None) -> AdaptiveResult:
    """Generate with the model choosing every image's order, on any `AdaptiveBackend` (the torch reference
    `dartrt.dar.torch_backend.TorchBackend`, onnxruntime): the entry point for OAR's order extraction.

    Returns `AdaptiveResult`: ``orders[i]`` [N, 2] is image i's order, valid as ``order=`` of a fixed
    replay; ``decode=False`` skips the VQ decoder (orders and grids only)."""
    check_adaptive_model(backend, allow_untrained)
    request = build_request(backend, class_ids, n_per_class=n_per_class, cfg=cfg, cfg_schedule=cfg_schedule,
                            seed=seed, temperature=temperature, top_k=top_k, top_p=top_p, batch_size=batch_size)
    settings = AdaptiveSettings(confidence, candidates, cells_per_step, cells_schedule)
    return run_adaptive(backend, request, settings, on_step, edit, decode)
