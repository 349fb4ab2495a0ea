"""Rungs 1 to 4 of the ladder: graphs, teacher-forced steps, sequences, images (see `dartrt.verify`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dartrt.runtime.backend import Backend
from dartrt.runtime.contract import LOGITS, MODULATION, PAST, PRESENT, step_feed
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.metrics import Deviation, Tolerance, psnr_uint8
from dartrt.runtime.scheduler import Request, build_request, sample_tokens, tokens_to_grids

from .checks import MIN_PSNR_DB, TOP1_MIN, Check, ParitySettings, at_least, info


# ---- rung 1: graphs -------------------------------------------------------------------------------------
def graph_checks(manifest: Manifest) -> list[Check]:
    """onnx.checker (full, path-based so external data works), strict shape inference, and the graph's
    I/O names, dtypes and ranks against what the manifest promises the runtime."""
    import onnx

    from dartrt.graphs.check import value_specs

    rows = []
    for name in manifest.data["graphs"]:
        spec = manifest.graph(name)
        try:
            onnx.checker.check_model(str(spec.path), full_check=True)
            proto = onnx.load(str(spec.path), load_external_data=False)
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
            problems = _io_mismatches(value_specs(proto.graph.input), spec.inputs, "input")
            problems += _io_mismatches(value_specs(proto.graph.output), spec.outputs, "output")
            opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
            detail = (f"checker + strict shape inference ok; opset {opset}, {len(proto.graph.node)} nodes, "
                      f"{len(inferred.graph.value_info)} inferred values")
            if problems:
                detail = "; ".join(problems[:3])
        except Exception as exc:  # onnx raises ValidationError, InferenceError, DecodeError, ...
            problems = [str(exc)]
            detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        rows.append(Check(f"graph:{name}", float(len(problems)), "== 0 errors", not problems, detail))
    return rows


def _io_mismatches(actual: list[dict], recorded: Sequence[dict], kind: str) -> list[str]:
    have = {io["name"]: io for io in actual}
    out = []
    for io in recorded:
        got = have.get(io["name"])
        if got is None:
            out.append(f"{kind} {io['name']} is in the manifest but not in the graph")
        elif got["dtype"] != io["dtype"] or len(got["shape"]) != len(io["shape"]):
            out.append(f"{kind} {io['name']} is {got['dtype']}{got['shape']}, manifest says {io['dtype']}{io['shape']}")
    if recorded and len(actual) != len(recorded):
        out.append(f"the graph has {len(actual)} {kind}s, the manifest {len(recorded)}")
    return out


# ---- rung 2: teacher-forced steps --------------------------------------------------------------------------
class Lockstep:
    """A Backend that runs the reference and the backend under test on identical inputs and returns the
    reference's logits. Driven by the shared scheduler, the tokens are therefore sampled from the
    reference, and the backend is teacher-forced with them at every step.

    It records the worst |Δlogit| of every call, and at ``capture`` write indices it keeps the decode
    graph's full feed and torch's outputs for it (for the Polygraphy rung)."""

    name = "lockstep"

    def __init__(self, reference, backend: Backend, tolerance: Tolerance, capture: Iterable[int] = (),
                 adaln: bool = False) -> None:
        self.ref, self.other = reference, backend
        self.info = backend.info
        self.tolerance = tolerance
        self.capture = set(capture)
        self.adaln = adaln
        self.deviations: list[Deviation] = []  # one per call: prefill, then each step
        self.peak = 0.0  # max |logit| of the reference
        self.top1 = [0, 0]  # rows whose argmax equals the reference's, rows compared
        self.feeds: list[dict[str, np.ndarray]] = []
        self.expected: list[dict[str, np.ndarray]] = []

    def _record(self, want: np.ndarray, got: np.ndarray) -> np.ndarray:
        if got.shape != want.shape:
            raise DartrtError(f"{self.other.name} returned logits {got.shape}, the reference {want.shape}")
        self.deviations.append(self.tolerance.judge(want, got))
        self.peak = max(self.peak, float(np.abs(want).max()))
        self.top1[0] += int((np.argmax(got, axis=-1) == np.argmax(want, axis=-1)).sum())
        self.top1[1] += int(np.prod(want.shape[:-1]))
        return want

    def prefill(self, class_ids, positions, direction):
        return self._record(self.ref.prefill(class_ids, positions, direction),
                            self.other.prefill(class_ids, positions, direction))

    def step(self, token_ids, positions, direction, write_index):
        feed = self._feed(token_ids, positions, direction, write_index) if write_index in self.capture else None
        want = self.ref.step(token_ids, positions, direction, write_index)
        if feed is not None:
            self.feeds.append(feed)
            self.expected.append({LOGITS: want[:, None].copy(), **self.ref.cache_feed(PRESENT)})
        return self._record(want, self.other.step(token_ids, positions, direction, write_index))

    def decode_vq(self, grids):
        return self.ref.decode_vq(grids)

    def _feed(self, token_ids, positions, direction, write_index) -> dict[str, np.ndarray]:
        """The decode graph's inputs exactly as the step will see them (caches before the write)."""
        feed = step_feed(token_ids, positions, direction, write_index)
        if self.adaln:
            feed[MODULATION] = self.ref.modulation.detach().cpu().float().numpy().copy()
        feed.update(self.ref.cache_feed(PAST))
        return feed


# ---- rungs 2-4 ------------------------------------------------------------------------------------------------
@dataclass
class _Runs:
    """What the generation runs produced, for the rows that summarise them."""

    step_deviations: list[Deviation] = field(default_factory=list)
    top1: list[int] = field(default_factory=lambda: [0, 0])  # teacher-forced argmax matches, rows compared
    peak: float = 0.0
    rows: int = 0
    runs: int = 0
    mismatches: dict[str, int] = field(default_factory=lambda: {"greedy": 0, "sampling": 0})
    tokens: dict[str, int] = field(default_factory=lambda: {"greedy": 0, "sampling": 0})
    first_diff: dict[str, str] = field(default_factory=dict)
    grids: list[np.ndarray] = field(default_factory=list)  # the reference's, sampling first
    feeds: list[dict] = field(default_factory=list)
    expected: list[dict] = field(default_factory=list)
    describe: str = ""


MODES = {"greedy": {"top_k": 1}, "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0}}


def _request(backend: Backend, classes: list[int], seed: int, mode: str, order: str | None) -> Request:
    """The model's own CFG scale and schedule; CFG is forced on (scale 2) for a model whose default
    is off, because the null-class rows are part of what the step rung must check."""
    request = build_request(backend, classes, seed=seed, order=order, batch_size=len(classes), **MODES[mode])
    if not request.cfg.enabled:
        request = build_request(backend, classes, seed=seed, order=order, batch_size=len(classes), cfg=2.0,
                                **MODES[mode])
    return request


def _generation_runs(reference, backend: Backend, settings: ParitySettings, adaln: bool) -> _Runs:
    info = backend.info
    out = _Runs()
    n = info.seq_len
    capture = sorted({1, n // 2, n - 1})[:settings.polygraphy_steps]  # first, middle and last decode step
    for seed in range(settings.seeds):
        classes = [(seed * settings.classes_per_seed + j) % info.num_classes for j in range(settings.classes_per_seed)]
        for mode in ("sampling", "greedy"):
            request = _request(backend, classes, seed, mode, settings.order)
            lock = Lockstep(reference, backend, settings.tolerance, capture if out.runs == 0 else (), adaln)
            want = sample_tokens(lock, request)
            got = sample_tokens(backend, request)
            out.runs += 1
            out.step_deviations += lock.deviations
            out.top1 = [out.top1[0] + lock.top1[0], out.top1[1] + lock.top1[1]]
            out.peak = max(out.peak, lock.peak)
            out.rows = 2 * len(classes) if request.cfg.enabled else len(classes)
            out.feeds += lock.feeds
            out.expected += lock.expected
            differ = want != got
            out.mismatches[mode] += int(differ.sum())
            out.tokens[mode] += int(want.size)
            if differ.any() and mode not in out.first_diff:
                img, t = np.argwhere(differ)[0]
                out.first_diff[mode] = f"first at seed {seed}, class {classes[img]}, step {t}"
            out.grids += list(tokens_to_grids(want, request, info.grid_size))
            if not out.describe:
                sched = request.cfg
                out.describe = (f"cfg {sched.scale:g} {sched.kind}, order "
                                f"{settings.order or info.order}")
    return out


def step_check(runs: _Runs, steps_per_run: int, tolerance: Tolerance, precision: str = "fp32") -> list[Check]:
    """fp32: every call's max |Δlogit| within ``tolerance``. Lower precisions: that figure as INFO, and
    teacher-forced top-1 agreement (every step, every row incl. CFG null rows) >= TOP1_MIN as the bound."""
    devs = runs.step_deviations
    at = int(np.argmax([d.ratio for d in devs])) if devs else -1
    worst = devs[at] if devs else Deviation(math.nan, math.nan)
    err = max((d.max_abs for d in devs), default=math.nan)
    rel = err / runs.peak if runs.peak else math.nan
    detail = (f"{runs.runs} runs x {steps_per_run} steps (all G*G), {runs.rows} rows incl. CFG null rows; "
              f"closest to its bound at step {at % steps_per_run if devs else -1}; max|logit| {runs.peak:.3g}, "
              f"largest difference relative {rel:.2e}")
    bound = f"<= {worst.bound:.3g} ({tolerance.describe()})"
    if precision == "fp32":
        return [Check("step:logits", worst.max_abs, bound, all(d.ok for d in devs) and bool(devs), detail)]
    same, total = runs.top1
    agreement = same / total if total else math.nan
    return [info("step:logits", err, f"fp32 only: {tolerance.describe()}",
                 f"{precision} is not held to the fp32 bound; {detail}"),
            at_least("step:top1", agreement, TOP1_MIN,
                     f"{precision}: {same} of {total} teacher-forced argmaxes equal the reference's "
                     f"({runs.runs} runs x {steps_per_run} steps x {runs.rows} rows)")]


def sequence_checks(runs: _Runs, settings: ParitySettings, precision: str = "fp32") -> list[Check]:
    """fp32: the token grids must be identical. Lower precisions: the share of identical tokens is
    reported (INFO): one flipped token changes everything after it, so it is no per-step measure."""
    rows = []
    for mode, what in (("greedy", "top_k=1"), ("sampling", "temperature 1, no top-k/top-p")):
        bad, total = runs.mismatches[mode], runs.tokens[mode]
        seeds = f"{settings.seeds} seed{'s' if settings.seeds > 1 else ''}"
        detail = (f"{bad} of {total} tokens differ; {seeds} x {settings.classes_per_seed} classes, "
                  f"{what}, {runs.describe}")
        if mode in runs.first_diff:
            detail += f"; {runs.first_diff[mode]}"
        if precision == "fp32":
            rows.append(Check(f"sequence:{mode}", float(bad), "== 0 tokens", bad == 0, detail))
        else:
            share = 1.0 - bad / total if total else math.nan
            rows.append(info(f"sequence:{mode}", share, "fp32 only: 1 (identical)",
                             f"share of identical tokens at {precision}; {detail}"))
    return rows


def image_check(reference, backend: Backend, grids: list[np.ndarray]) -> Check:
    values, max_diff = [], 0
    for grid in grids:
        want = reference.decode_vq(grid[None])
        got = backend.decode_vq(grid[None])
        if got.shape != want.shape:
            return Check("image:psnr", math.nan, f">= {MIN_PSNR_DB:g} dB", False,
                         f"backend image {got.shape}, reference {want.shape}", "dB")
        values.append(psnr_uint8(want, got))
        max_diff = max(max_diff, int(np.abs(want.astype(np.int16) - got).max()))
    size = grids[0].shape[-1] if grids else 0
    return at_least("image:psnr", min(values), MIN_PSNR_DB,
                    f"worst of {len(values)} reference grids ({size}x{size} tokens), uint8; "
                    f"max pixel difference {max_diff}", "dB")


