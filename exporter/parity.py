"""The verification ladder: a package's backend against the PyTorch reference that produced it.

Each rung answers a different question, so each has its own figure and bound (architecture.md,
"Verification ladder"):

1. graph: every ONNX file passes ``onnx.checker`` and strict shape inference, and its I/O matches
   the manifest (more graph rows, such as a TensorRT op-support report, come in via ``extra_checks``);
2. step: teacher-forced logits at every one of the G*G steps, CFG rows included. The reference and the
   backend run in lockstep on identical inputs, and the tokens are sampled from the reference's own
   logits, so the caches hold a realistic sequence rather than random ids;
3. sequence: with the same seed each backend generates on its own (greedy, and plain sampling);
   the token grids must be identical, because a single flipped token changes everything after it;
4. image: the backend's VQ decode of the reference's grids against torch's decode of the same grids
   (uint8 PSNR; identical images give inf);
5. polygraphy: the decode graph under Polygraphy's own onnxruntime runner, fed the real step inputs
   captured during rung 2, against the outputs torch computed for them. It is an independent harness:
   no dartrt binding, cache aliasing or scheduler between the file and the comparison.

The bounds above are fp32's. A lower precision (``verify --precision fp16`` / an INT8 calibration
variant, or a TensorRT fp16/int8 engine) cannot meet them, so it is judged by one stated tolerance
instead: teacher-forced top-1 agreement with the reference, every step and row, >= TOP1_MIN (the target
`dartrt calibrate` reports INT8 against). The fp32 figures are still measured and shown as INFO rows
(max |Δlogit|; the share of identical tokens, which architecture.md asks to report, not bound), the
image rung keeps its bound (the VQ decoder stays fp32 in every precision), and the Polygraphy rung,
whose only bound is fp32's, is skipped.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from dartrt.calibration.report import AGREEMENT_TARGET as TOP1_MIN
from dartrt.runtime.backend import Backend
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.scheduler import Request, build_request, sample_tokens, tokens_to_grids

STEP_ATOL = 1e-4  # fp32 logits, max-abs (architecture.md; Optimum's decoder tests use the same)
MIN_PSNR_DB = 60.0  # uint8 images; 60 dB is an RMS error of 0.26 grey levels
SUPPORTED_PRECISIONS = ("fp32",)
PRESET_SOURCE = re.compile(r"preset (?P<name>\S+) \(random weights\)")


# ---- rows -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One row of the ladder: what was measured (``figure``), the rule it must meet, and the verdict.

    ``figure`` is a plain float (inf for identical images, NaN when nothing was measured) so tests can
    compare it with the bound; ``bound`` is the human-readable rule printed next to it. An ``info`` row
    is measured and shown but judged by nothing (a bound that does not apply at this precision)."""

    name: str
    figure: float
    bound: str
    passed: bool
    detail: str = ""
    unit: str = ""
    skipped: bool = False
    info: bool = False

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else "INFO" if self.info else ("PASS" if self.passed else "FAIL")

    @property
    def shown(self) -> str:
        return format_figure(self.figure) + (f" {self.unit}" if self.unit else "")

    def to_json(self) -> dict:
        data = asdict(self)
        data["figure"] = _json_number(self.figure)
        data["verdict"] = self.verdict
        return data


def at_most(name: str, figure: float, limit: float, detail: str = "", unit: str = "") -> Check:
    """figure <= limit (a NaN figure fails: an unmeasured number proves nothing)."""
    return Check(name, float(figure), f"<= {format_figure(limit)}{' ' + unit if unit else ''}",
                 bool(figure <= limit), detail, unit)


def at_least(name: str, figure: float, limit: float, detail: str = "", unit: str = "") -> Check:
    return Check(name, float(figure), f">= {format_figure(limit)}{' ' + unit if unit else ''}",
                 bool(figure >= limit), detail, unit)


def skipped(name: str, bound: str, reason: str) -> Check:
    return Check(name, math.nan, bound, True, f"skipped: {reason}", skipped=True)


def info(name: str, figure: float, bound: str, detail: str = "", unit: str = "") -> Check:
    """A figure reported without a verdict (it cannot fail the report)."""
    return Check(name, float(figure), bound, True, detail, unit, info=True)


def format_figure(x: float) -> str:
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if float(x).is_integer() and abs(x) < 1e9:
        return str(int(x))
    return f"{x:.2e}" if abs(x) < 0.01 or abs(x) >= 1e5 else f"{x:.2f}"


def _json_number(x: float):
    """JSON has no inf/NaN: inf is written as the string "inf", NaN (not measured) as null."""
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def format_table(checks: Sequence[Check]) -> str:
    """One row per check: check, figure, bound, PASS/FAIL, then the detail."""
    header = ("check", "figure", "bound", "result", "detail")
    rows = [header] + [(c.name, c.shown, c.bound, c.verdict, c.detail) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(line.rstrip() for line in lines)


# ---- settings and report ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParitySettings:
    """How much of the ladder to run. The defaults cover a tiny model in seconds; for a GPT-B-sized
    model on a CPU every torch run of 256 steps costs about 20 s, so scale ``seeds`` with care.

    ``threads`` (None: the libraries' defaults) applies to torch and to the backend's onnxruntime
    sessions alike, so their timings and float summation orders are taken under the same conditions.
    ``order`` overrides the model's scan order (None: the order it was trained with)."""

    seeds: int = 2
    classes_per_seed: int = 2
    images: int = 2
    polygraphy_steps: int = 3
    threads: int | None = None
    order: str | None = None

    def __post_init__(self) -> None:
        for name in ("seeds", "classes_per_seed", "images"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise DartrtError(f"{name} must be an integer >= 1, got {value}")


@dataclass
class ParityReport:
    package: Path
    backend: str
    device: str
    source: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    precision: str = "fp32"

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> dict:
        return {"package": str(self.package), "backend": self.backend, "device": self.device,
                "precision": self.precision, "source": self.source, "passed": self.passed,
                "seconds": round(self.seconds, 2),
                "checks": [c.to_json() for c in self.checks]}


GraphHook = Callable[[Manifest], Iterable[Check]]


# ---- the reference ------------------------------------------------------------------------------------
def reference_checkpoint(manifest: Manifest, source: str | None = None):
    """The torch model that produced the package.

    ``source`` (a checkpoint folder or a preset) wins; otherwise the manifest's ``source``: a random
    preset is rebuilt with seed 0 (what `random_checkpoint` and `dartrt export PRESET` use), a folder is
    loaded if it exists here. Either way its config must equal the package's, so a wrong --source is
    refused by name instead of failing every numeric check."""
    from dartrt.dar.checkpoint import BUNDLED, load_checkpoint, random_checkpoint, resolve_source
    from dartrt.dar.config import PRESETS

    recorded = str(manifest.data.get("source") or "")
    if source is not None:
        ckpt = resolve_source(source)
    elif (match := PRESET_SOURCE.fullmatch(recorded)) and match["name"] in PRESETS:
        ckpt = random_checkpoint(match["name"], seed=0)
    elif recorded and Path(recorded).is_dir():
        ckpt = load_checkpoint(recorded)
    elif recorded and Path(recorded).resolve() == BUNDLED:
        ckpt = resolve_source(None)  # says how to get the bundled model back
    else:
        what = f"its source {recorded!r} is not available here" if recorded else "its manifest names no source"
        raise DartrtError(f"cannot rebuild the reference for {manifest.root}: {what}; pass --source with the "
                          "checkpoint folder or preset it was exported from")
    want = json.loads(json.dumps(manifest.data["model"]))
    have = json.loads(json.dumps(ckpt.config.to_dict()))
    if have != want:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise DartrtError(f"source {ckpt.source} does not match the package (model config differs in "
                          f"{', '.join(diff[:4])}); pass the --source the package was exported from")
    if int(manifest.data.get("image_size", ckpt.image_size)) != ckpt.image_size:
        raise DartrtError(f"source {ckpt.source} makes {ckpt.image_size}px images, the package "
                          f"{manifest.data['image_size']}px; pass the matching --source")
    return ckpt


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

    def __init__(self, reference, backend: Backend, capture: Iterable[int] = (), adaln: bool = False) -> None:
        self.ref, self.other = reference, backend
        self.info = backend.info
        self.capture = set(capture)
        self.adaln = adaln
        self.errors: list[float] = []  # one per call: prefill, then each step
        self.peak = 0.0  # max |logit| of the reference
        self.top1 = [0, 0]  # rows whose argmax equals the reference's, rows compared
        self.feeds: list[dict[str, np.ndarray]] = []
        self.expected: list[dict[str, np.ndarray]] = []

    def _record(self, want: np.ndarray, got: np.ndarray) -> np.ndarray:
        if got.shape != want.shape:
            raise DartrtError(f"{self.other.name} returned logits {got.shape}, the reference {want.shape}")
        diff = np.abs(got.astype(np.float64) - want)
        self.errors.append(math.inf if np.isnan(diff).any() else float(diff.max()))
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
            self.expected.append({"logits": want[:, None].copy(), **self._caches("present")})
        return self._record(want, self.other.step(token_ids, positions, direction, write_index))

    def decode_vq(self, grids):
        return self.ref.decode_vq(grids)

    def _caches(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{i}.{kind}": t.detach().cpu().numpy().copy()
                for i, kv in enumerate(self.ref.caches) for kind, t in zip(("key", "value"), kv)}

    def _feed(self, token_ids, positions, direction, write_index) -> dict[str, np.ndarray]:
        """The decode graph's inputs exactly as the step will see them (caches before the write)."""
        rows = token_ids.shape[0]
        feed = {"input_ids": np.ascontiguousarray(token_ids, dtype=np.int64),
                "positions": np.ascontiguousarray(positions, dtype=np.int64),
                "direction": np.ascontiguousarray(direction, dtype=np.int64),
                "write_index": np.full(rows, int(write_index), dtype=np.int64)}
        if self.adaln:
            feed["adaln_modulation"] = self.ref.modulation.detach().cpu().float().numpy().copy()
        feed.update(self._caches("past_key_values"))
        return feed


# ---- rungs 2-4 ------------------------------------------------------------------------------------------------
@dataclass
class _Runs:
    """What the generation runs produced, for the rows that summarise them."""

    step_errors: list[float] = field(default_factory=list)
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
            lock = Lockstep(reference, backend, capture if out.runs == 0 else (), adaln)
            want = sample_tokens(lock, request)
            got = sample_tokens(backend, request)
            out.runs += 1
            out.step_errors += lock.errors
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


def step_check(runs: _Runs, steps_per_run: int, precision: str = "fp32") -> list[Check]:
    """fp32: max |Δlogit| <= STEP_ATOL. Lower precisions: that figure as INFO, and teacher-forced top-1
    agreement (every step, every row incl. CFG null rows) >= TOP1_MIN as the bound."""
    err = max(runs.step_errors) if runs.step_errors else math.nan
    worst = int(np.argmax(runs.step_errors)) % steps_per_run if runs.step_errors else -1
    rel = err / runs.peak if runs.peak else math.nan
    detail = (f"{runs.runs} runs x {steps_per_run} steps (all G*G), {runs.rows} rows incl. CFG null rows; "
              f"worst at step {worst}; max|logit| {runs.peak:.3g}, relative {rel:.2e}")
    if precision == "fp32":
        return [at_most("step:logits", err, STEP_ATOL, detail)]
    same, total = runs.top1
    agreement = same / total if total else math.nan
    return [info("step:logits", err, f"fp32 only: <= {format_figure(STEP_ATOL)}",
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


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images in dB; inf when they are identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


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


# ---- rung 5: the decode graph under Polygraphy ------------------------------------------------------
def polygraphy_check(decode_path: Path, feeds: list[dict], expected: list[dict], providers: Sequence) -> Check:
    """Polygraphy's OnnxrtRunner on the real captured step inputs, compared with torch's outputs by
    Polygraphy's own comparator (max absolute error against STEP_ATOL; rtol 0 so only atol counts)."""
    name, bound = "polygraphy:decode", f"<= {format_figure(STEP_ATOL)}"
    try:
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
        from polygraphy.comparator import Comparator, IterationResult
        from polygraphy.logger import G_LOGGER
    except ImportError as exc:
        return skipped(name, bound, f"polygraphy is not installed ({exc})")
    try:
        from polygraphy.comparator import SimpleCompareFunc
    except ImportError:  # polygraphy < 0.50 has only the factory
        from polygraphy.comparator import CompareFunc

        SimpleCompareFunc = CompareFunc.simple
    if not feeds:
        return skipped(name, bound, "no decode steps were captured")
    import onnxruntime

    # Polygraphy feeds past and present as separate buffers, so TensorScatter copies the cache and ORT
    # warns about it on every step; that copy is expected here. The session takes its log level from
    # the default logger when it is created: errors only for this one, then back to ORT's default.
    onnxruntime.set_default_logger_severity(3)
    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
            runner = OnnxrtRunner(SessionFromOnnx(str(decode_path), providers=list(providers)), name="onnxrt")
            results = Comparator.run([runner], data_loader=feeds)
    finally:
        onnxruntime.set_default_logger_severity(2)
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        results.append(("torch", [IterationResult(outputs=o, runner_name="torch") for o in expected]))
        accuracy = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=STEP_ATOL, rtol=0.0, check_error_stat="max"))
    worst = 0.0
    for got, want in zip(results[0][1], expected):
        for key, ref in want.items():
            worst = max(worst, float(np.abs(np.asarray(got[key], dtype=np.float64) - ref).max()))
    steps = ", ".join(str(int(f["write_index"][0])) for f in feeds)
    detail = (f"OnnxrtRunner(SessionFromOnnx) vs torch on {len(feeds)} captured decode steps (t = {steps}), "
              f"{len(expected[0])} outputs each; Comparator.compare_accuracy "
              f"{'passed' if accuracy else 'FAILED'}")
    return Check(name, worst, bound, bool(accuracy) and worst <= STEP_ATOL, detail)


# ---- the whole ladder --------------------------------------------------------------------------------------
def run_ladder(manifest: Manifest, reference, backend: Backend, settings: ParitySettings = ParitySettings(),
               extra_checks: Sequence[GraphHook] = (), log: Callable[[str], None] | None = None,
               precision: str = "fp32") -> list[Check]:
    """Every rung for an opened backend and its torch reference (a dar.backend.TorchBackend).

    ``precision``: what the backend runs (its graphs are ``manifest``'s, so pass the precision's view);
    anything but fp32 is judged by the lower-precision rules of the module docstring."""
    say = log or (lambda _msg: None)
    if manifest.precision not in SUPPORTED_PRECISIONS:
        raise DartrtError(f"verify's bounds are for {', '.join(SUPPORTED_PRECISIONS)} packages; this one is "
                          f"{manifest.precision} and has no stated tolerances yet")
    say("graph checks")
    checks = graph_checks(manifest)
    for hook in extra_checks:
        checks += list(hook(manifest))
    say(f"generation runs: {settings.seeds} seeds x greedy/sampling, torch and {backend.name} in lockstep")
    runs = _generation_runs(reference, backend, settings, adaln=bool(manifest.data["model"].get("adaln")))
    checks += step_check(runs, backend.info.seq_len, precision)
    checks += sequence_checks(runs, settings, precision)
    say("image decode")
    checks.append(image_check(reference, backend, runs.grids[:settings.images]))
    if precision != "fp32":
        checks.append(skipped("polygraphy:decode", f"<= {format_figure(STEP_ATOL)}",
                              f"its only bound is fp32's; {precision} is judged by step:top1"))
        return checks
    say("polygraphy")
    providers = list(getattr(backend, "provider_specs", None) or ["CPUExecutionProvider"])
    checks.append(polygraphy_check(manifest.graph("decode").path, runs.feeds, runs.expected, providers))
    return checks


def verify_package(pkg_dir: str | Path, backend: str = "onnxruntime", source: str | None = None,
                   settings: ParitySettings = ParitySettings(), extra_checks: Sequence[GraphHook] = (),
                   log: Callable[[str], None] | None = None, precision: str | None = None) -> ParityReport:
    """Open the package (hashes checked) at ``precision`` (None: fp32 on onnxruntime, the best engine on
    tensorrt; see `runtime.variants`), rebuild its reference, and run the ladder. On onnxruntime the
    graph rows check the precision's own files."""
    import torch
    from dartrt.dar.backend import TorchBackend
    from dartrt.runtime.package import open_package_backend
    from dartrt.runtime.variants import precision_manifest, resolve_precision

    start = time.perf_counter()
    manifest = Manifest.load(pkg_dir)
    ckpt = reference_checkpoint(manifest, source)
    options = {} if settings.threads is None else {"intra_op_threads": settings.threads}
    engine = open_package_backend(pkg_dir, backend, precision=precision, verify_hashes=False,
                                  **options)  # just hashed by load
    running = str(getattr(engine, "precision", None) or "fp32")
    if backend != "tensorrt" and running != "fp32":
        manifest = precision_manifest(manifest, resolve_precision(manifest.data, running, pkg_dir))
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        reference = TorchBackend(ckpt)
        checks = run_ladder(manifest, reference, engine, settings, extra_checks, log, running)
    finally:
        torch.set_num_threads(threads)
    device = getattr(engine, "device", "?")
    report = ParityReport(Path(pkg_dir), f"{engine.name}", device, ckpt.source, checks, precision=running)
    report.seconds = time.perf_counter() - start
    return report
