"""`dartrt bench --adaptive`: what choosing the order costs, on onnxruntime, next to its floors.

Timed in one run, interleaved (`bench.timing`), per batch size: the fixed order (`sample_tokens`, the
model's own order), the adaptive order scoring every free cell, pruned to N candidates, and K cells per
step; per image, with the steps each takes. A fixed step is a matrix-vector product per weight (rows
tokens), bounded by the bytes it reads; an adaptive step feeds rows x C candidate queries (C = the free
cells, 255 down to 1 on a 16x16 grid), the work of a prefill, so it turns compute-bound. Each is set
against both floors, measured in the same run:

- compute: FLOPs / the fp32 MatMul rate onnxruntime reaches on this machine (`bench.d_ar.gemm_rate`);
  FLOPs = 2 x the graph's weight parameters x the queries (its Linear layers) + 4 x layers x heads x
  head_dim x keys x queries (QK^T and AV over every key the masked Attention runs over: T_max + C);
- bandwidth: the bytes read (weights once, the cache, the AdaLN rows) / the measured read bandwidth
  (`bench.roofline`, `bench.bandwidth`).

One candidates call is also timed alone at the middle of an image (C = N/2) next to a decode step there.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dartrt.runtime.adaptive import AdaptiveSettings, sample_adaptive
from dartrt.runtime.candidates import candidate_inputs
from dartrt.runtime.contract import CANDIDATES, StepTables, cfg_double, cfg_rows
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.orders import make_order
from dartrt.runtime.scheduler import build_request, sample_tokens

from .bandwidth import DEFAULT_BYTES, host_read_bandwidth
from .d_ar import gemm_rate
from .report import fmt_bytes, fmt_time, write_json_atomic
from .roofline import GraphReads, Roofline, floor_seconds, graph_reads
from .timing import time_interleaved

SCHEMA = "dartrt-bench-adaptive/1"
Log = Callable[[str], None]


def candidate_call_cost(roofline: Roofline, cand: GraphReads, rows: int, count: int, write_index: int) -> dict:
    """FLOPs and bytes of one candidates call: ``rows`` rows of ``count`` candidates at ``write_index``."""
    queries = rows * count
    params = cand.weight_bytes / 4  # fp32 weights read by the graph's nodes (the Linear layers and heads)
    keys = roofline.max_len + count  # the masked Attention runs over the whole cache plus the new keys
    attention = 4 * roofline.n_layer * roofline.heads * roofline.head_dim * keys * queries
    flops = 2 * params * queries + attention
    nbytes = cand.weight_bytes + cand.lookup_bytes(rows, count) + roofline.kv_bytes(rows, write_index) \
        + queries * roofline.mod_width * roofline.mod_itemsize
    return {"queries": queries, "flops": flops, "bytes": nbytes}


def decode_call_cost(roofline: Roofline, rows: int, write_index: int) -> dict:
    params = roofline.decode.weight_bytes / 4
    attention = 4 * roofline.n_layer * roofline.heads * roofline.head_dim * roofline.max_len * rows
    return {"queries": rows, "flops": 2 * params * rows + attention,
            "bytes": roofline.decode_step(rows, write_index + 1).total}


def image_costs(roofline: Roofline, cand: GraphReads, rows: int, settings: AdaptiveSettings | None) -> dict:
    """Summed FLOPs and bytes of the calls one image batch makes (the commits, a few kB each, left out)."""
    n = roofline.seq_len
    flops, nbytes, filled = 0.0, 0.0, 1
    if settings is None:
        for t in range(1, n):
            c = decode_call_cost(roofline, rows, t)
            flops, nbytes = flops + c["flops"], nbytes + c["bytes"]
        return {"flops": flops, "bytes": nbytes}
    while filled < n:
        free = n - filled
        count = free if settings.candidates is None else min(settings.candidates, free)
        c = candidate_call_cost(roofline, cand, rows, count, filled)
        flops, nbytes = flops + c["flops"], nbytes + c["bytes"]
        k = min(settings.cells_at(filled, n), count)
        if k > 1 and filled + k < n:  # the chain's decode call of k - 1 tokens
            d = decode_call_cost(roofline, rows * (k - 1), filled + k - 1)
            flops, nbytes = flops + d["flops"], nbytes + d["bytes"]
        filled += k
    return {"flops": flops, "bytes": nbytes}


def _variants(candidates: tuple[int, ...], cells: tuple[int, ...]) -> dict[str, AdaptiveSettings | None]:
    out: dict[str, AdaptiveSettings | None] = {"fixed": None, "adaptive": AdaptiveSettings()}
    for n in candidates:
        out[f"adaptive, {n} candidates"] = AdaptiveSettings(candidates=n)
    for k in cells:
        out[f"adaptive, {k} cells/step"] = AdaptiveSettings(cells_per_step=k)
        for n in candidates:
            out[f"adaptive, {n} candidates, {k} cells/step"] = AdaptiveSettings(candidates=n, cells_per_step=k)
    return out


def bench_adaptive_batch(backend, roofline: Roofline, cand: GraphReads, batch: int, cfg_scale: float | None,
                         variants: dict, repeats: int, warmup: int, bandwidth: float, flops_rate: float,
                         log: Log) -> dict:
    info = backend.info
    cfg = cfg_scale is not None
    classes = [i % info.num_classes for i in range(batch)]
    request = build_request(backend, classes, cfg=cfg_scale if cfg else 1.0, cfg_schedule=None if cfg else "constant",
                            batch_size=batch, seed=0)
    rows = 2 * batch if cfg else batch
    steps: dict[str, int] = {}

    def run(label: str, settings: AdaptiveSettings | None) -> None:
        if settings is None:
            sample_tokens(backend, request)
            steps[label] = info.seq_len
        else:
            steps[label] = sample_adaptive(backend, request, settings).steps

    log(f"batch {batch}: whole images ({', '.join(variants)})")
    timed = time_interleaved({k: (lambda k=k, s=s: run(k, s)) for k, s in variants.items()}, repeats, warmup)
    sides = {}
    for label, settings in variants.items():
        cost = image_costs(roofline, cand, rows, settings)
        compute, memory = cost["flops"] / flops_rate, floor_seconds(cost["bytes"], bandwidth)
        sides[label] = {"per_image_s": timed[label].median_s / batch, "image_batch": timed[label].to_dict(),
                        "steps": steps[label], "flops": cost["flops"], "bytes": cost["bytes"],
                        "compute_floor_s": compute, "bandwidth_floor_s": memory,
                        "bound": "compute" if compute > memory else "bandwidth",
                        "vs_floor": timed[label].median_s / max(compute, memory)}
    log(f"batch {batch}: one candidates call and one decode step at the middle of an image")
    mid, g = info.seq_len // 2, info.grid_size
    order = make_order(info.order, g)
    flat = order[:, 0] * g + order[:, 1]
    cells = np.broadcast_to(np.sort(flat[mid:]), (batch, info.seq_len - mid))
    pos, dirs = candidate_inputs(np.full(batch, flat[mid - 1]), cells, g)
    tables = StepTables.native(info)
    tokens = np.zeros((rows, 1), dtype=np.int64)
    backend.prefill(cfg_rows(np.asarray(classes), info.num_classes, cfg), *tables.at(0, rows))
    backend.step(np.zeros((rows, mid - 1), dtype=np.int64), *tables.at(1, rows, mid - 1), 1)
    calls = time_interleaved({
        "candidates": lambda: backend.score_candidates(tokens, cfg_double(pos, cfg), cfg_double(dirs, cfg), mid),
        "decode": lambda: backend.step(tokens, *tables.at(mid, rows), mid)}, repeats, warmup, burst_s=2e-3)
    one = {}
    for name, cost in (("candidates", candidate_call_cost(roofline, cand, rows, info.seq_len - mid, mid)),
                       ("decode", decode_call_cost(roofline, rows, mid))):
        compute, memory = cost["flops"] / flops_rate, floor_seconds(cost["bytes"], bandwidth)
        one[name] = {**cost, "time": calls[name].to_dict(), "compute_floor_s": compute, "bandwidth_floor_s": memory,
                     "bound": "compute" if compute > memory else "bandwidth",
                     "vs_floor": calls[name].median_s / max(compute, memory)}
    return {"batch": batch, "rows": rows, "cfg_scale": cfg_scale, "sides": sides, "mid_image_calls": one,
            "candidates_at_mid": info.seq_len - mid}


def run_adaptive_bench(pkg_dir: str | Path, batch_sizes=(1, 8), repeats: int = 3, cfg: bool = True, *,
                       warmup: int = 1, threads: int | None = None, candidates: tuple[int, ...] = (),
                       cells: tuple[int, ...] = (), json_path: str | Path | None = None,
                       bandwidth_bytes: int = DEFAULT_BYTES, echo: Log | None = print,
                       log: Log | None = None) -> dict:
    """The adaptive section of `dartrt bench` (see the module doc); onnxruntime on the CPU."""
    from dartrt.runtime.ort_backend import OrtBackend
    from dartrt.runtime.sessions import usable_cpus

    log = log or (lambda _: None)
    threads = int(threads or usable_cpus())
    manifest = Manifest.load(pkg_dir)
    info = manifest.info
    if CANDIDATES not in manifest.data["graphs"]:
        raise DartrtError(f"{pkg_dir} has no adaptive-order graphs to bench; re-export it with them: dartrt export "
                          f"SOURCE -o {pkg_dir} --force --adaptive")
    n = info.seq_len
    candidates = tuple(candidates) or (max(n // 16, 1),)
    for value, what in [(c, "candidates") for c in candidates] + [(k, "cells per step") for k in cells]:
        if isinstance(value, bool) or int(value) != value or not 1 <= value <= n:
            raise DartrtError(f"{what} must be integers in [1, {n}], got {value!r}")
    started, t0, load_before = _dt.datetime.now(_dt.timezone.utc), time.perf_counter(), os.getloadavg()
    backend = OrtBackend(manifest, device="cpu", intra_op_threads=threads)
    roofline = Roofline.from_manifest(manifest)
    cand = graph_reads(manifest.graph(CANDIDATES).path)
    cfg_scale = (info.default_cfg if info.default_cfg != 1.0 else 4.0) if cfg else None
    log("memory bandwidth and MatMul rate")
    bandwidth = host_read_bandwidth(bandwidth_bytes, threads=threads)
    rate = gemm_rate(threads)
    variants = _variants(tuple(int(c) for c in candidates), tuple(int(k) for k in cells))
    batches = [bench_adaptive_batch(backend, roofline, cand, b, cfg_scale, variants, repeats, warmup,
                                    bandwidth.bytes_per_s, rate["flops_per_s"], log) for b in batch_sizes]
    from .suite import _machine

    machine = _machine(threads)
    machine.update({"load_avg_before": list(load_before), "loaded": load_before[0] > 0.25 * machine["usable_cpus"]})
    report = {"schema": SCHEMA, "package": str(Path(pkg_dir).resolve()), "model": info.name,
              "started": started.isoformat(timespec="seconds"), "seconds": time.perf_counter() - t0,
              "machine": machine, "settings": {"batch_sizes": list(batch_sizes), "repeats": repeats, "warmup": warmup,
                                               "cfg_scale": cfg_scale, "threads": threads},
              "bandwidth": bandwidth.to_dict(), "gemm": rate, "batches": batches}
    if json_path is not None:
        write_json_atomic(Path(json_path), report)
    if echo is not None:
        echo(format_adaptive(report))
    return report


def format_adaptive(report: dict) -> str:
    m = report["machine"]
    lines = [f"adaptive order: {report['model']} on onnxruntime-cpu, {m['threads']} threads "
             f"({m['processor']}){'; LOADED, do not publish' if m.get('loaded') else ''}",
             f"floors: compute at {report['gemm']['gflops']:.1f} GFLOP/s (MatMul), bandwidth at "
             f"{report['bandwidth']['gbps']:.1f} GB/s"]
    for b in report["batches"]:
        lines += ["", f"batch {b['batch']} ({b['rows']} rows)",
                  f"{'':<44}{'per image':>12}{'steps':>7}{'x fixed':>9}{'GFLOP':>9}{'bytes':>10}{'bound':>11}"
                  f"{'x floor':>9}"]
        base = b["sides"]["fixed"]["per_image_s"]
        for label, s in b["sides"].items():
            lines.append(f"{label:<44}{fmt_time(s['per_image_s']):>12}{s['steps']:>7}{s['per_image_s'] / base:>8.1f}x"
                         f"{s['flops'] / 1e9:>9.2f}{fmt_bytes(s['bytes']):>10}{s['bound']:>11}{s['vs_floor']:>8.1f}x")
        for name, c in b["mid_image_calls"].items():
            what = f"one {name} call at mid-image"
            what += f" (C = {b['candidates_at_mid']})" if name == "candidates" else ""
            lines.append(f"{what:<44}{fmt_time(c['time']['median_s']):>12}{'':>7}{'':>9}{c['flops'] / 1e9:>9.3f}"
                         f"{fmt_bytes(c['bytes']):>10}{c['bound']:>11}{c['vs_floor']:>8.1f}x")
    return "\n".join(lines)
