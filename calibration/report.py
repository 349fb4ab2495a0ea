"""How much INT8 costs, measured on the CPU with onnxruntime running the quantized graphs.

Three levels, each a different question (docs/design.md, "The verification ladder"; docs/precisions.md,
"How a form is judged"):

1. **Step level, teacher-forced.** FP32 generates token sequences (model-default sampling and CFG,
   seeded); then FP32 and INT8 are both fed exactly those tokens, so every step is compared on the
   same history. Per step and per row (cond rows *and* null rows: the runtime samples from their CFG
   combination, where errors of the two halves are amplified by the guidance weight) we measure top-1
   agreement and KL(p_fp32 ‖ p_int8); the same on the CFG-combined logits the sampler really sees.
   Without teacher forcing one early different token changes the whole rest of the sequence, and the
   comparison would measure divergence, not quantization error.
2. **Sequence level.** The share of identical tokens in seeded generations, greedy and sampled (same
   Gumbel noise on both backends), and the first step where they differ. Sampled generation compounds
   small logit changes, so this is the strictest and least stable number.
3. **Image level** (bundled demo model only): class accuracy and Fréchet distance of generated images
   by `dar.demo.evaluate.evaluate_backend`, FP32 vs INT8, same seeds.

Targets (reported, not asserted): top-1 agreement on the guided logits >= 95 % (FP16: >= 99 %); demo
class accuracy within 2 points of FP32.

A graph onnxruntime's CPU EP cannot load (an FP8 graph with an fp16 rest, say) still gets a step-level
number from `trace_agreement`: its logits on recorded calls, computed by ``onnx.reference``'s
``ReferenceEvaluator`` (numpy, the ONNX spec's own semantics, no kernels needed), against the torch
reference logits stored with the traces. Slow, so only on small models and a few calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dartrt.runtime.backend import Backend
from dartrt.runtime.cfg import combine
from dartrt.runtime.contract import LOGITS, StepTables, cfg_double, cfg_rows
from dartrt.runtime.metrics import FP16_TOP1_MIN, TOP1_MIN, kl_divergence, top1_agreement
from dartrt.runtime.scheduler import Request, build_request, sample_tokens

AGREEMENT_TARGET = TOP1_MIN
FP16_AGREEMENT_TARGET = FP16_TOP1_MIN
ACCURACY_POINTS_TARGET = 2.0


def teacher_forced_logits(backend: Backend, request: Request, tokens: np.ndarray) -> np.ndarray:
    """Logits [T, R, V] of every step when ``tokens`` [n, T] (scan order) are fed, for one batch of
    all the request's images (R = 2n rows with CFG: cond rows, then null rows)."""
    info = backend.info
    tables = StepTables.of(request.order, info.grid_size, info.rope)
    use_cfg = request.cfg.enabled
    rows = cfg_rows(request.class_ids, info.num_classes, use_cfg)
    out = [backend.prefill(rows, *tables.at(0, len(rows)))]
    for t in range(1, info.seq_len):
        out.append(backend.step(cfg_double(tokens[:, t - 1:t], use_cfg), *tables.at(t, len(rows)), t))
    return np.stack(out)


@dataclass
class StepMetrics:
    """Teacher-forced agreement/KL, overall and per eighth of the sequence."""

    top1_guided: float
    kl_guided: float
    top1_cond: float
    top1_null: float
    kl_rows: float
    kl_rows_p99: float
    worst_step_top1_guided: float
    by_eighth: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (sig(v) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def sig(x: float, digits: int = 4) -> float | None:
    """Round to significant digits (KL spans 1e-7..1e-1); NaN becomes None so the JSON stays valid."""
    if x is None or not np.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def compare_logits(ref: np.ndarray, test: np.ndarray, request: Request) -> StepMetrics:
    """ref/test [T, R, V] from `teacher_forced_logits` on the same request and tokens."""
    steps, rows, _ = ref.shape
    weights = [request.cfg.weight(t, steps) for t in range(steps)]
    if request.cfg.enabled:
        g_ref = np.stack([combine(ref[t], weights[t]) for t in range(steps)])
        g_test = np.stack([combine(test[t], weights[t]) for t in range(steps)])
        half = rows // 2
    else:
        g_ref, g_test, half = ref, test, rows
    agree_g = top1_agreement(g_ref, g_test)  # [T, n]
    kl_g = kl_divergence(g_ref, g_test)
    agree_rows = top1_agreement(ref, test)  # [T, R]
    kl_rows = kl_divergence(ref, test)
    bins = np.array_split(np.arange(steps), 8)
    by_eighth = [{"steps": [int(b[0]), int(b[-1])], "top1_guided": sig(float(agree_g[b].mean())),
                  "kl_guided": sig(float(kl_g[b].mean()))} for b in bins if len(b)]
    return StepMetrics(
        top1_guided=float(agree_g.mean()), kl_guided=float(kl_g.mean()),
        top1_cond=float(agree_rows[:, :half].mean()),
        top1_null=float(agree_rows[:, half:].mean()) if half < rows else float("nan"),
        kl_rows=float(kl_rows.mean()), kl_rows_p99=float(np.quantile(kl_rows, 0.99)),
        worst_step_top1_guided=float(agree_g.mean(axis=1).min()), by_eighth=by_eighth)


def reference_tokens(backend: Backend, class_ids: list[int], seed: int, cfg: float | None = None) -> tuple:
    """FP32's own sampled sequences (model defaults), to teacher-force both backends with."""
    request = build_request(backend, class_ids, cfg=cfg, seed=seed, batch_size=len(class_ids))
    return request, sample_tokens(backend, request)


def step_metrics(ref: Backend, test: Backend, class_ids: list[int], seed: int = 0,
                 cfg: float | None = None) -> StepMetrics:
    request, tokens = reference_tokens(ref, class_ids, seed, cfg)
    return compare_logits(teacher_forced_logits(ref, request, tokens),
                          teacher_forced_logits(test, request, tokens), request)


def token_identity(ref: Backend, test: Backend, class_ids: list[int], seed: int = 0, greedy: bool = False) -> dict:
    """Share of identical tokens in seeded generations, and where the first difference appears."""
    kw = {"top_k": 1} if greedy else {}
    a = sample_tokens(ref, build_request(ref, class_ids, seed=seed, batch_size=len(class_ids), **kw))
    b = sample_tokens(test, build_request(test, class_ids, seed=seed, batch_size=len(class_ids), **kw))
    same = a == b
    first = [int(np.argmin(row)) if not row.all() else row.size for row in same]
    return {"identical_tokens": round(float(same.mean()), 4), "identical_images": int(same.all(axis=1).sum()),
            "images": len(class_ids), "first_difference_median": float(np.median(first))}


def step_latency(backend: Backend, images: int = 1, steps: int = 32, write_index: int | None = None) -> float:
    """Milliseconds per decode step at ``images`` images with CFG (2·images rows), mid-sequence."""
    info = backend.info
    rows = 2 * images
    tables = StepTables.native(info)
    t = write_index or info.seq_len // 2
    backend.prefill(np.zeros(rows, dtype=np.int64), *tables.at(0, rows))
    ids = np.zeros((rows, 1), dtype=np.int64)
    backend.step(ids, *tables.at(t, rows), t)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        backend.step(ids, *tables.at(t, rows), t)
    return 1000 * (time.perf_counter() - start) / steps


def image_quality(ref: Backend, test: Backend, classifier_dir: str | Path, n_per_class: int, seed: int = 0) -> dict:
    """Demo only: class accuracy / Fréchet distance of FP32 and INT8 on the same seeds, and the gap."""
    from dartrt.dar.demo.evaluate import evaluate_backend

    out = {"fp32": evaluate_backend(ref, classifier_dir, n_per_class=n_per_class, seed=seed),
           "int8": evaluate_backend(test, classifier_dir, n_per_class=n_per_class, seed=seed)}
    out["accuracy_points_drop"] = {
        cfg: round(100 * (row["class_accuracy"] - out["int8"]["by_cfg"][cfg]["class_accuracy"]), 2)
        for cfg, row in out["fp32"]["by_cfg"].items()}
    # The two runs' sampled trajectories part within a few dozen steps, so the image sets are close to
    # independent draws: the drop is only resolved to ±(this standard error); say so next to it.
    n = n_per_class * len(out["fp32"]["by_cfg"][next(iter(out["fp32"]["by_cfg"]))]["per_class_accuracy"])
    out["accuracy_drop_se_points"] = {
        cfg: round(100 * float(np.sqrt(sum(p * (1 - p) / n for p in (
            row["class_accuracy"], out["int8"]["by_cfg"][cfg]["class_accuracy"])))), 2)
        for cfg, row in out["fp32"]["by_cfg"].items()}
    out["accuracy_target_met"] = all(v <= ACCURACY_POINTS_TARGET for v in out["accuracy_points_drop"].values())
    return out


def default_classes(num_classes: int, images: int) -> list[int]:
    """``images`` images spread over the classes (every class once when images >= classes)."""
    return [(j * num_classes) // images if images < num_classes else j % num_classes for j in range(images)]


def quality_report(ref: Backend, test: Backend, images: int = 10, seed: int = 0, latency: bool = True,
                   target: float = AGREEMENT_TARGET) -> dict:
    """Levels 1 and 2 (and CPU step latency) for one test backend against the FP32 reference."""
    classes = default_classes(ref.info.num_classes, images)
    start = time.perf_counter()
    steps = step_metrics(ref, test, classes, seed)
    report = {"backend": test.name, "reference": ref.name, "images": images, "seed": seed,
              "teacher_forced": steps.to_dict(),
              "target_top1_guided": target, "top1_target_met": steps.top1_guided >= target,
              "greedy": token_identity(ref, test, classes, seed, greedy=True),
              "sampled": token_identity(ref, test, classes, seed, greedy=False)}
    if latency:
        report["ms_per_step"] = {"images_1": round(step_latency(test, 1), 3),
                                 "images_8": round(step_latency(test, 8), 3)}
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def trace_agreement(pkg: str | Path, graph_file: str | Path, graph: str = "decode", samples: int = 8,
                    runner: str = "reference", optimization: str = "all") -> dict:
    """Top-1 and KL, per row, of ``graph_file``'s logits on ``samples`` recorded calls (spread over the
    sequence) against the torch reference logits recorded with them; no generation, no CFG combine.

    ``runner='reference'`` computes with ``onnx.reference.ReferenceEvaluator`` (for graphs the CPU EP
    cannot run, and to check that the EP's kernels compute what the ONNX spec says); ``'ort'`` with a
    one-thread CPU session at ``optimization`` ('all' or 'basic'). Inputs are cast to the graph's
    declared dtypes (fp16 KV caches), as the runtime would feed them."""
    import onnx

    from .traceset import load_traces, subsample

    traces = load_traces(pkg, graph)
    path = Path(pkg) / graph_file
    model = onnx.load(str(path), load_external_data=False)
    dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    if runner == "reference":
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(str(path))

        def run(feed):
            return evaluator.run([LOGITS], feed)[0]
    elif runner == "ort":
        from dartrt.runtime.sessions import REFERENCE, open_session

        session = open_session(path, REFERENCE, optimization=optimization)

        def run(feed):
            return session.run([LOGITS], feed)[0]
    else:
        raise ValueError(f"unknown runner {runner!r}")
    top1, kl, worst = [], [], 0.0
    order = subsample(traces.steps, samples)
    for i in order:
        feed = {k: v.astype(dtypes[k]) for k, v in traces.sample(int(i)).items() if k in dtypes}
        logits = np.asarray(run(feed), dtype=np.float32)[:, -1]
        ref = traces.arrays["_ref_logits"][int(i)]
        top1.append(top1_agreement(ref, logits))
        kl.append(kl_divergence(ref, logits))
        worst = max(worst, float(np.abs(logits - ref).max()))
    name = "onnx.reference.ReferenceEvaluator" if runner == "reference" else f"onnxruntime-cpu[{optimization}]"
    return {"runner": name, "graph": graph, "calls": len(order), "rows": int(np.concatenate(top1).size),
            "top1_rows": sig(float(np.concatenate(top1).mean())), "kl_rows": sig(float(np.concatenate(kl).mean())),
            "max_abs_logits": sig(worst)}
