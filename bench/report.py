"""The bench report as a table for people and as JSON for machines (written atomically)."""

from __future__ import annotations

import math
from pathlib import Path

from dartrt.runtime.fileio import atomic_write_json

ROWS = (  # (timing key, label, divide by tokens per image)
    ("prefill", "prefill", False),
    ("prefill_graph", "prefill (graph only)", False),
    ("step", "decode step", False),
    ("step_graph", "decode step (graph only)", False),
    ("image", "whole image batch", False),
    ("image", "  per token", True),
    ("vq_decode", "VQ decode", False),
)
LABEL_W, CELL_W = 26, 32


def fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_x(value: float) -> str:
    return f"{value:.1f}x" if math.isfinite(value) else "n/a"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def fmt_stats(stats: dict, scale: float = 1.0) -> str:
    """median [p10–p90]"""
    return (f"{fmt_time(stats['median_s'] / scale)} [{fmt_time(stats['p10_s'] / scale)}–"
            f"{fmt_time(stats['p90_s'] / scale)}]")


def _row(label: str, cells: list[str], last: str = "") -> str:
    return f"{label:<{LABEL_W}}" + "".join(f"{c:<{CELL_W}}" for c in cells) + last


def _batch_table(b: dict, labels: list[str]) -> list[str]:
    cfg = f"{b['rows']} rows with CFG" if b["cfg"] else f"{b['rows']} rows, no CFG"
    lines = [f"batch {b['batch']} ({cfg}), {b['tokens_per_image']} tokens per image, "
             f"step timed at write index {b['write_index']}"]
    speed = b.get("speedup")
    lines.append(_row("", labels, "torch/ort" if speed else ""))
    for key, label, per_token in ROWS:
        scale = b["tokens_per_image"] if per_token else 1.0
        cells = [fmt_stats(b["timings"][key][lab], scale) for lab in labels]
        lines.append(_row(label, cells, f"{speed[key]:.2f}x" if speed else ""))
    roof = b["roofline"]
    step = roof["step"]
    lines.append(_row("floor per step", [f"{fmt_time(roof['step_floor_s'])} ({fmt_bytes(step['total'])} "
                                         f"@ {roof['bandwidth_gbps']:.1f} GB/s)"]))
    d = b["derived"]
    lines.append(_row("step (graph) / floor", [fmt_x(d[lab]["step_graph_vs_floor"]) for lab in labels]))
    lines.append(_row("image / floor", [fmt_x(d[lab]["image_vs_floor"]) for lab in labels]))
    lines.append(_row("outside the graph", [outside_split(d[lab]) for lab in labels]))
    lines.append(f"  bytes per step: weights {fmt_bytes(step['weights'])}, lookups {fmt_bytes(step['lookups'])}, "
                 f"modulation {fmt_bytes(step['modulation'])}, KV {fmt_bytes(step['kv'])} "
                 f"(the masked attention reads all {fmt_bytes(roof['step_kv_full_cache'])})")
    return lines


PRECISION_COLS = (("per image", 14), ("vs ORT fp32", 13), ("vs torch", 10), ("weights/step", 14),
                  ("image/floor", 13), ("top-1 vs fp32 rows/guided", 27), ("tokens = fp32", 0))


def _precision_table(b: dict, labels: list[str]) -> list[str]:
    """One line per onnxruntime precision: per-image time, how many times faster than ORT FP32 and
    torch (same run), its own weight bytes and floor, and its agreement with FP32 (teacher-forced)."""
    base, variants = labels[0], list(b["precisions"])
    ref = next((lab for lab in labels if lab.startswith("torch-")), None)
    torch_x = b.get("speedup", {}).get("image")
    width = max(LABEL_W, *(len(lab) + 2 for lab in variants))
    lines = [f"by precision, whole image (speed-up > 1: faster; top-1 over {b['rows']} rows x "
             f"{_steps(b)} teacher-forced calls on the bench's filler tokens)",
             " " * width + _cols([name for name, _ in PRECISION_COLS])]

    def line(label: str, vs_fp32: float, vs_torch: float | None, parity: dict | None) -> str:
        fl, d = b["floors"][label], b["derived"][label]
        agree = (f"{parity['top1_rows']:.3f} / " + (f"{parity['top1_guided']:.3f}" if parity["top1_guided"] is not None
                                                     else "n/a")) if parity else "(reference)"
        tokens = f"{parity['image_tokens_match_share']:.0%}" if parity else ""
        cells = [fmt_time(d["per_image_s"]), fmt_x2(vs_fp32), fmt_x2(vs_torch) if ref else "-",
                 fmt_bytes(fl["step_weights"]), fmt_x(d["image_vs_floor"]), agree, tokens]
        return f"{label:<{width}}" + _cols(cells)

    lines.append(line(base, 1.0, torch_x, None))
    for lab in variants:
        v = b["precisions"][lab]
        lines.append(line(lab, v["speedup_vs_fp32"]["image"], (v["speedup_vs_torch"] or {}).get("image"),
                          v["parity_vs_fp32"]))
    return lines


def _steps(b: dict) -> int:
    first = next(iter(b["precisions"].values()))
    return int(first["parity_vs_fp32"]["teacher_forced_steps"])


def _cols(cells: list[str]) -> str:
    return "".join(f"{c:<{w}}" if w else c for c, (_, w) in zip(cells, PRECISION_COLS))


def fmt_x2(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None and math.isfinite(value) else "n/a"


def _accelerator_table(acc: dict) -> list[str]:
    bw = acc["bandwidth"]
    l2 = f", L2 {fmt_bytes(acc['l2_bytes'])}" if acc.get("l2_bytes") else ""
    labels = acc["backends"]
    lines = [f"{acc['device']} ({acc['name']}): {' vs '.join(labels)}, one decode step; HBM {bw['gbps']:.0f} GB/s "
             f"(device copy, best of {bw['passes']}){l2}",
             "each cell: median [p10–p90] per call, synchronised, and x the floor (bytes of the step / HBM bandwidth); "
             "device: GPU time per replay, back-to-back replays between CUDA events"]
    width = LABEL_W + 2
    for b in acc["batches"]:
        where = ("" if not acc.get("l2_bytes") else
                 ", fits in L2: the HBM floor is no bound" if b.get("fits_in_l2") else ", HBM-bound")
        lines += ["", f"{b['dtype']}, batch {b['batch']} ({b['rows']} rows): floor {fmt_time(b['step_floor_s'])} "
                      f"({fmt_bytes(b['step_bytes']['total'])}{where})"]
        for lab in labels:
            stats = b["timings"]["step"].get(lab)
            if stats is None:
                lines.append(f"  {lab:<{width}}not run: {b.get('compile_error') or 'n/a'}")
                continue
            dev = b["timings"]["device"].get(lab)
            cells = [f"{fmt_stats(stats)} {fmt_x(b['vs_floor'][lab])}",
                     f"device {fmt_time(dev['median_s'])} {fmt_x(b['device_vs_floor'][lab])}" if dev else "",
                     f"{b['speedup_vs_eager'][lab]:.2f}x eager's speed" if lab != labels[0] else "",
                     f"max-abs vs eager {b['max_abs_vs_eager'][lab]:.1e}" if lab in b["max_abs_vs_eager"] else ""]
            lines.append(f"  {lab:<{width}}" + "".join(f"{c:<{w}}" for c, w in zip(cells, (38, 26, 22, 0))).rstrip())
        if b.get("compile_s"):
            lines.append(f"  (compiled in {b['compile_s']:.1f} s)")
    return lines


def format_table(report: dict) -> str:
    if report.get("bandwidth") is None:  # --gpu-only: the GPU section alone
        m = report["machine"]
        return "\n".join([f"dartrt bench --gpu-only: {report['model']} ({report['precision']}) against "
                          f"{report['reference']['source']}; {report['settings']['repeats']} repeats interleaved, "
                          "median [p10–p90]",
                          f"load average {m['load_avg_before'][0]:.2f} before, on {m['usable_cpus']} CPUs", "",
                          *_accelerator_table(report["accelerator"])])
    m, s, bw = report["machine"], report["settings"], report["bandwidth"]
    labels = report["backends"]
    before, after = bw["before"], bw["after"]
    lines = [
        f"dartrt bench: {report['model']} ({report['precision']}), {' vs '.join(labels)}; {s['threads']} threads, "
        f"{s['repeats']} repeats interleaved after {s['warmup']} warm-up (short calls in ~{s['burst_s'] * 1e3:g} ms "
        "bursts); median [p10–p90]",
        f"memory bandwidth {before['gbps']:.1f} GB/s ({before['method']}, {before['bytes'] >> 20} MiB, best of "
        f"{before['passes']}, {before['threads']} thread(s)); after the timings {after['gbps']:.1f} GB/s",
        f"load average {m['load_avg_before'][0]:.2f} before, {m['load_avg_after'][0]:.2f} after, "
        f"on {m['usable_cpus']} CPUs" + (": LOADED MACHINE, do not publish these figures" if m["loaded"] else ""),
    ]
    if before.get("note"):
        lines.append(f"note: {before['note']}")
    ref = report.get("reference")
    if ref:
        same = "same model" if ref["same_model"] else "NOT THE SAME MODEL: the comparison is meaningless"
        lines.append(f"reference: {ref['source']}; logits max-abs vs onnxruntime {ref['max_abs_logits']:.1e} ({same})")
    for b in report["batches"]:
        lines += ["", *_batch_table(b, labels)]
        if b.get("precisions"):
            lines += ["", *_precision_table(b, labels)]
    if report.get("accelerator"):
        lines += ["", *_accelerator_table(report["accelerator"])]
    return "\n".join(lines)


def strict_json(value):
    """NaN/inf (an unknown bandwidth, an empty spread) become null: strict JSON parsers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json_atomic(path: Path, data: dict) -> None:
    """Strict JSON (NaN/inf as null), written atomically: a reader never sees half a report."""
    atomic_write_json(path, strict_json(data), allow_nan=False)


def outside_split(derived: dict) -> str:
    """The share of a whole image spent outside the graph calls, split into binding and sampling; a share
    below 0 or above 100 % is timing noise (each term is a difference of medians), so the line says so
    instead of printing an impossible figure."""
    shares = [derived[k] for k in ("outside_graph_share", "binding_share", "sampling_share")]
    if not all(0.0 <= x <= 1.0 for x in shares):
        return "too noisy to split"
    return f"{shares[0]:.0%} (bind {shares[1]:.0%}, sample {shares[2]:.0%})"
