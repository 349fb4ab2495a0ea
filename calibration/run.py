"""`dartrt calibrate`: traces → INT8 (FP8, INT4, FP16) variants → quality report, as one resumable run.

Each stage writes its files and its manifest entry before the next starts, so a run that stops
half-way keeps what it finished (``reuse_traces`` skips re-recording). The report is measured on the
CPU with onnxruntime, one thread, on the same seeds for every variant (INT4 with the graph optimizations
that keep its numerics exact, `quantize.REPORT_SESSION_OPTIONS`); a variant the CPU EP cannot load gets
`report.trace_agreement` by onnx.reference on a few traced calls instead, on small models.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write_json
from dartrt.runtime.manifest import Manifest

from .quantize import REPORT_SESSION_OPTIONS, QuantizeConfig, quantize_package
from .report import (
    AGREEMENT_TARGET,
    FP16_AGREEMENT_TARGET,
    image_quality,
    quality_report,
    step_latency,
    trace_agreement,
)
from .store import REPORT_FILE, update_calibration_entry
from .traceset import load_traces_manifest
from .variant_backend import open_variant

DEMO_MODEL = "DAR-demo"
MAX_AUTO_KEEP = 3  # sublayer kinds; beyond that most of the weight bytes are high precision anyway
# onnx.reference fallback (graphs the CPU EP cannot run): numpy per node, so small decoders only.
REFERENCE_MAX_BYTES = 64 << 20
REFERENCE_CALLS = 8


@dataclass
class CalibrateOptions:
    samples: int = 64
    method: str = "max"
    formats: tuple[str, ...] = ("qdq",)
    high_precision: str = "fp32"
    keep: tuple[str, ...] = ()
    source: str | None = None
    images: int = 10
    eval_n: int = 0
    sensitivity: bool = False
    auto_keep: bool = True
    reuse_traces: bool = False
    seed: int = 0
    latency: bool = True
    # The logits head stays high precision by default (CFG amplifies its error); quantizing it is the
    # last ~15 % of CPU INT8 speed (GPT-B int8-wo 2.03x -> 2.46x per image, demo top-1 0.972 -> 0.966).
    quantize_head: bool = False
    configs: list[QuantizeConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images < 1:
            raise DartrtError(f"--images must be >= 1, got {self.images}")
        if self.eval_n < 0:
            raise DartrtError(f"--eval-n must be >= 0, got {self.eval_n}")
        self.configs = [QuantizeConfig(format=f, method=self.method, high_precision=self.high_precision,
                                       keep=tuple(self.keep), keep_head=not self.quantize_head)
                        for f in dict.fromkeys(self.formats)]


def _traces(pkg: Path, opts: CalibrateOptions, log) -> dict:
    if opts.reuse_traces:
        try:
            meta = load_traces_manifest(pkg)
            log(f"  traces: reusing {meta['graphs']['decode']['samples']} decode samples")
            return (Manifest.read(pkg).data.get("calibration") or {}).get("traces") or {}
        except DartrtError:
            log("  traces: none to reuse, recording")
    import torch

    from .recording import checkpoint_for_package, record_traces

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = record_traces(pkg, checkpoint_for_package(pkg, opts.source), n_decode=opts.samples,
                                seed=opts.seed, log=log)
    finally:
        torch.set_num_threads(threads)
    return summary.to_dict()


def _demo_classifier(pkg: Path) -> Path | None:
    """The bundled classifier judges only the demo's 10 shape classes."""
    from dartrt.dar.checkpoint import BUNDLED

    if Manifest.read(pkg).data["model"].get("name") != DEMO_MODEL or not (BUNDLED / "classifier.json").is_file():
        return None
    return BUNDLED


def calibrate(pkg: str | Path, opts: CalibrateOptions, log=print) -> dict:
    """Run every stage; returns the report written to ``calibration/report.json``."""
    pkg = Path(pkg)
    start = time.perf_counter()
    manifest = Manifest.read(pkg).data
    report: dict = {"package": str(pkg), "model": manifest["model"].get("name"), "seed": opts.seed,
                    "images": opts.images, "targets": {"top1_guided": AGREEMENT_TARGET,
                                                       "fp16_top1_guided": FP16_AGREEMENT_TARGET,
                                                       "accuracy_points": 2.0},
                    "traces": _traces(pkg, opts, log), "variants": {}}
    variants = []
    for cfg in opts.configs:
        variants.append(quantize_package(pkg, cfg, log=log))
    ref = open_variant(pkg)
    if opts.latency:
        report["fp32"] = {"ms_per_step": {"images_1": round(step_latency(ref, 1), 3),
                                          "images_8": round(step_latency(ref, 8), 3)}}
    for variant in variants:
        entry = _describe(variant)
        session = REPORT_SESSION_OPTIONS.get(variant.config.format, {})
        try:
            test = open_variant(pkg, variant.name, **session)
        except DartrtError as exc:  # e.g. an fp16 graph whose ops the CPU EP lacks: built for TensorRT
            entry["quality"] = None
            entry["note"] = f"not runnable on the onnxruntime CPU EP: {exc}"
            log(f"  {variant.name}: {entry['note']}")
            entry["trace_check"] = _reference_check(pkg, variant, log)
            report["variants"][variant.name] = entry
            continue
        log(f"  {variant.name}: measuring against FP32 on {opts.images} images")
        target = FP16_AGREEMENT_TARGET if variant.config.format == "fp16" else AGREEMENT_TARGET
        entry["quality"] = quality_report(ref, test, images=opts.images, seed=opts.seed,
                                          latency=opts.latency and not session, target=target)
        if session:
            entry["measured_with"] = (f"onnxruntime CPU EP, session {session}: exact {variant.config.format} numerics "
                                      "(the default level fuses INT4 DQ+MatMul into MatMulNBits, int8 activations)")
            if opts.latency:  # latency as the CPU EP deploys it: default optimizations
                fused = open_variant(pkg, variant.name)
                entry["quality"]["ms_per_step"] = {"images_1": round(step_latency(fused, 1), 3),
                                                   "images_8": round(step_latency(fused, 8), 3),
                                                   "session": "default optimizations"}
        report["variants"][variant.name] = entry
    main = next((v for v in variants if v.config.format == "qdq"), variants[0] if variants else None)
    quality = (report["variants"].get(main.name) or {}).get("quality") if main is not None else None
    if (opts.auto_keep and main is not None and main.config.format == "qdq" and quality
            and quality["teacher_forced"]["top1_guided"] < AGREEMENT_TARGET):
        main, report["auto_keep"] = _auto_keep(pkg, main, ref, quality, opts, log)
        report["variants"][main.name] = {**_describe(main), "quality": report["auto_keep"]["final_quality"]}
    if opts.sensitivity and main is not None:
        from .sensitivity import sensitivity, tradeoff

        base = dataclasses.replace(main.config, keep=tuple(opts.keep))  # independent of --auto-keep
        log(f"  sensitivity of {main.name} by layer (one layer group INT8 at a time):")
        costs = sensitivity(pkg, base, images=min(opts.images, 4), seed=opts.seed, log=log)
        report["sensitivity"] = {"by": "group", "groups": [c.to_dict() for c in costs],
                                 "tradeoff": tradeoff(pkg, base, costs, images=min(opts.images, 4),
                                                      seed=opts.seed, log=log)}
    classifier = _demo_classifier(pkg) if opts.eval_n else None
    if classifier is not None and main is not None:
        log(f"  image quality (demo classifier), {opts.eval_n} images per class, FP32 vs {main.name}")
        test = open_variant(pkg, main.name, **REPORT_SESSION_OPTIONS.get(main.config.format, {}))
        report["image_quality"] = {"variant": main.name, **image_quality(
            ref, test, classifier, n_per_class=opts.eval_n, seed=opts.seed)}
    elif opts.eval_n:
        report["image_quality"] = {"skipped": "only for the bundled demo model with its classifier"}
    report["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(pkg / REPORT_FILE, report)
    update_calibration_entry(pkg, "report", {"file": REPORT_FILE, "summary": summary(report)})
    return report


def _reference_check(pkg: Path, variant, log) -> dict:
    """Step-level numbers for a variant the CPU EP cannot load: `trace_agreement` by onnx.reference
    on a few recorded decode calls, when the decode graph is small enough for numpy node by node."""
    file = variant.graphs["decode"].file if "decode" in variant.graphs else None
    if file is None:
        return {"skipped": "the variant has no decode graph"}
    size = (pkg / file).stat().st_size
    if size > REFERENCE_MAX_BYTES:
        return {"skipped": f"decode graph of {size >> 20} MiB: onnx.reference is for small presets "
                           f"(<= {REFERENCE_MAX_BYTES >> 20} MiB)"}
    log(f"  {variant.name}: onnx.reference on {REFERENCE_CALLS} recorded decode calls instead")
    try:
        return trace_agreement(pkg, file, samples=REFERENCE_CALLS, runner="reference")
    except Exception as exc:  # noqa: BLE001 - the reference evaluator lacks some ops: say which, move on
        return {"skipped": f"onnx.reference cannot run it either: {str(exc).splitlines()[0][:200]}"}


def _describe(variant) -> dict:
    cfg = variant.config
    return {"format": cfg.format, "method": cfg.method_used,
            "high_precision_dtype": cfg.rest_dtype, "keep": list(cfg.keep),
            "int8_gemms": {g: len(q.quantized) for g, q in variant.graphs.items()},  # name kept: any low precision
            "kept_high_precision": {g: q.excluded for g, q in variant.graphs.items()},
            "details": {g: q.details for g, q in variant.graphs.items() if q.details}}


def _auto_keep(pkg: Path, main, ref, quality: dict, opts: CalibrateOptions, log):
    """The target was missed: rank sublayer kinds (wqkv, wo, w1, w2, w3, tok_mlp) by their own INT8
    cost, then keep the costliest in high precision one kind at a time, re-quantizing and re-measuring
    the whole variant, until the top-1 target is met (or MAX_AUTO_KEEP kinds are kept)."""
    from .sensitivity import group_regex, sensitivity

    log(f"  {main.name} misses top-1 {AGREEMENT_TARGET:.2f}: ranking sublayer kinds by INT8 cost")
    costs = sensitivity(pkg, main.config, by="kind", images=min(opts.images, 4), seed=opts.seed, log=log)
    steps = [{"kept": [], "int8_weight_share": 1.0, **_headline(quality)}]
    keep, kept, share, variant = list(main.config.keep), [], 1.0, main
    for cost in costs[:MAX_AUTO_KEEP]:
        keep.append(group_regex(cost.group, "kind"))
        kept.append(cost.group)
        share -= cost.weight_share
        variant = quantize_package(pkg, dataclasses.replace(main.config, keep=tuple(keep)), log=log)
        quality = quality_report(ref, open_variant(pkg, variant.name), images=opts.images, seed=opts.seed,
                                 latency=opts.latency)
        steps.append({"kept": list(kept), "keep": list(keep), "int8_weight_share": round(share, 3),
                      **_headline(quality)})
        log(f"  keep {kept}: INT8 share {share:.2f}, top-1 {steps[-1]['top1_guided']:.4f}, "
            f"KL {steps[-1]['kl_guided']:.3g}")
        if quality["teacher_forced"]["top1_guided"] >= AGREEMENT_TARGET:
            break
    return variant, {"by": "kind", "costs": [c.to_dict() for c in costs], "steps": steps, "final_quality": quality}


def _headline(quality: dict) -> dict:
    tf = quality["teacher_forced"]
    return {"top1_guided": tf["top1_guided"], "kl_guided": tf["kl_guided"], "top1_cond": tf["top1_cond"],
            "sampled_identical": quality["sampled"]["identical_tokens"]}


def summary(report: dict) -> dict:
    """The headline numbers per variant (what the manifest keeps)."""
    out = {}
    for name, v in report["variants"].items():
        q = v.get("quality")
        if q:
            tf = q["teacher_forced"]
            out[name] = {"format": v["format"], "top1_guided": tf["top1_guided"], "kl_guided": tf["kl_guided"],
                         "greedy_identical": q["greedy"]["identical_tokens"],
                         "sampled_identical": q["sampled"]["identical_tokens"]}
    return out


def format_table(report: dict) -> str:
    """The CLI's report table: one row per variant (FP32 first, latency only)."""
    head = (f"{'variant':<14}{'format':<12}{'calib':<9}{'low GEMMs':>11}{'top-1':>8}{'KL':>10}{'top-1 c/n':>13}"
            f"{'greedy=':>9}{'sampled=':>10}{'ms/step 1|8 img':>18}")
    lines = [head, "-" * len(head)]
    fp32 = (report.get("fp32") or {}).get("ms_per_step")
    if fp32:
        lines.append(f"{'fp32':<14}{'-':<12}{'-':<9}{0:>11}{1:>8.4f}{0:>10.3g}{'1.000/1.000':>13}{1:>9.3f}{1:>10.3f}"
                     f"{fp32['images_1']:>9.2f}|{fp32['images_8']:<8.2f}")
    for name, v in report["variants"].items():
        q = v.get("quality")
        gemms = v["int8_gemms"].get("decode", 0)
        if not q:
            check = v.get("trace_check") or {}
            how = "  (not run on CPU)"
            if "calls" in check:
                how = (f"  (not run on the CPU EP; onnx.reference, {check['calls']} traced calls: top-1/row "
                       f"{check['top1_rows']:.4f}, KL {check['kl_rows']:.3g})")
            lines.append(f"{name:<14}{v['format']:<12}{v['method'] or '-':<9}{gemms:>11}{how}")
            continue
        tf = q["teacher_forced"]
        ms = q.get("ms_per_step") or {}
        cn = f"{tf['top1_cond']:.3f}/{tf['top1_null']:.3f}" if tf["top1_null"] is not None else f"{tf['top1_cond']:.3f}"
        lat = f"{ms.get('images_1', float('nan')):>9.2f}|{ms.get('images_8', float('nan')):<8.2f}"
        lines.append(f"{name:<14}{v['format']:<12}{v['method'] or '-':<9}{gemms:>11}{tf['top1_guided']:>8.4f}"
                     f"{tf['kl_guided']:>10.3g}{cn:>13}{q['greedy']['identical_tokens']:>9.3f}"
                     f"{q['sampled']['identical_tokens']:>10.3f}{lat}")
    iq = report.get("image_quality")
    if iq and "fp32" in iq:
        for cfg, row in iq["fp32"]["by_cfg"].items():
            other = iq["int8"]["by_cfg"][cfg]
            lines.append(f"demo cfg {cfg}: class accuracy {row['class_accuracy']:.3f} (fp32) vs "
                         f"{other['class_accuracy']:.3f} ({iq['variant']}), Fréchet distance "
                         f"{row['frechet_distance']:.3f} vs {other['frechet_distance']:.3f}")
    auto = report.get("auto_keep")
    if auto:
        for step in auto["steps"]:
            kept = ", ".join(step["kept"]) or "nothing"
            lines.append(f"auto-keep {kept:<18} INT8 share {step['int8_weight_share']:.2f}"
                         f"  top-1 {step['top1_guided']:.4f}  KL {step['kl_guided']:.3g}")
    sens = report.get("sensitivity")
    if sens:
        worst = ", ".join(f"{c['group']} (KL {c['kl_guided']:.3g})" for c in sens["groups"][:3])
        lines.append(f"costliest groups: {worst}")
    return "\n".join(lines)
