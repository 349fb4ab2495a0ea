"""`dartrt bench` on a D-AR package: a generation's time split into the AR part and the decoder part, each
against its own roofline.

- **AR part** (the GPT's N token steps, `sample_tokens`): memory-bound at the batch sizes a generator runs at,
  so its floor is the bytes the prefill/decode graphs read (`bench.roofline`) over the memory bandwidth
  measured in the same run (`bench.bandwidth`), as for every package.
- **Decoder part** (the conditions graph over the tokens, G velocity calls, the host's Euler/AB2 updates):
  the velocity network runs on 64–1024 image tokens per call and is compute-bound, so its floor is its FLOPs
  (`velocity_flops`, counted from the architecture in the manifest, term by term) over the matrix-multiply
  rate onnxruntime attains on this machine in the same run (`gemm_rate`: an fp32 MatMul graph, the session
  settings of the runtime). The measured rate (velocity FLOPs / time) is reported next to it.

Timed on onnxruntime alone (the torch reference's D-AR decode is not timed here), interleaved round-robin
(`bench.timing`): the whole generation (tokens streamed into the decoder, as `runtime.generate` runs it), the
AR part alone, the decoder alone on the same tokens, and one velocity call.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from dartrt.runtime.d_ar import DARBackend, decode_result, open_d_ar_package, run_d_ar_request
from dartrt.runtime.d_ar_decoder import image_noise
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.scheduler import build_request, sample_tokens

from .bandwidth import DEFAULT_BYTES, host_read_bandwidth
from .report import fmt_time, write_json_atomic
from .roofline import Roofline, floor_seconds
from .timing import Stats, time_interleaved

SCHEMA = "dartrt-bench-d-ar/1"


def velocity_flops(tokenizer: dict, rows: int = 1) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of one velocity call for ``rows`` images, by part, from the tokenizer config
    (`dartrt.dar.d_ar.config.TokenizerConfig` as the manifest records it). Matrix products and attention only:
    norms, activations, RoPE and the sinusoid are a few FLOPs per element and are left out.

    Per image, T = (H/p)² image tokens of width d, P = tokens_per_step conditions of width c, L blocks, MLP
    ratio r, in multiply-adds: conv_in/out 2·T·3p²·d; cond_mlp P·c·d; per block: time embedding 2d² (once),
    cond_embed 2P·d², cross-attention q and out T·2d², its k, v P·2d², scores and values 2·T·P·d; AdaLN
    T·6d² (per token: the modulation depends on each token's cross-attention); self-attention q, k, v, out
    T·4d², scores and values 2·T²·d; MLP 2r·T·d². The attention products are listed apart
    (``attention_scores``): torch's FLOP counter does not count them on the CPU; the rest it counts exactly
    as here (tests compare)."""
    h = w = int(tokenizer["image_size"])
    p, d, c = int(tokenizer["patch_size"]), int(tokenizer["dim"]), int(tokenizer["cond_dim"])
    t = (h // p) * (w // p)
    per = int(tokenizer["tokens_per_step"])
    r, depth, ch = int(tokenizer["mlp_ratio"]), int(tokenizer["depth"]), int(tokenizer["channels"])
    macs = {
        "patch_in_out": 2 * t * ch * p * p * d,
        "cond_mlp": per * c * d,
        "time_embed": depth * 2 * d * d,
        "cond_embed": depth * 2 * per * d * d,
        "cross_attention": depth * (2 * t * d * d + 2 * per * d * d),
        "adaln": depth * 6 * t * d * d,
        "self_attention": depth * 4 * t * d * d,
        "mlp": depth * 2 * r * t * d * d,
        "attention_scores": depth * (2 * t * per * d + 2 * t * t * d),  # QK^T and AV, cross and self
    }
    out = {k: 2 * v * int(rows) for k, v in macs.items()}
    out["total"] = sum(out.values())
    return out


def gemm_rate(threads: int, size: int = 1024, passes: int = 5) -> dict:
    """The fp32 matrix-multiply rate onnxruntime reaches here: a [size, size] @ [size, size] MatMul graph in a
    runtime-profile session with ``threads`` threads, best of ``passes`` (the attainable peak the velocity
    network's floor is priced at)."""
    import onnx
    from onnx import TensorProto, helper

    from dartrt.runtime.sessions import RUNTIME, SessionFromOnnx

    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    with tempfile.TemporaryDirectory(prefix="dartrt-gemm-") as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(model, str(path))
        session = SessionFromOnnx(path, RUNTIME.but(threads=threads))()
        session.run(None, {"a": a, "b": b})
        best = float("inf")
        for _ in range(passes):
            start = time.perf_counter()
            session.run(None, {"a": a, "b": b})
            best = min(best, time.perf_counter() - start)
    flops = 2 * size**3
    return {"flops_per_s": flops / best, "gflops": round(flops / best / 1e9, 2), "size": size, "threads": threads,
            "how": f"onnxruntime MatMul [{size}x{size}] @ [{size}x{size}] fp32, best of {passes}"}


def _stats(s: Stats) -> dict:
    return {"median_s": s.median_s, "p10_s": s.p10_s, "p90_s": s.p90_s, "n": s.n}


def bench_d_ar_batch(engine: DARBackend, roofline: Roofline, tokenizer: dict, batch: int, cfg_scale: float | None,
                     repeats: int, warmup: int, bandwidth: float, flops_rate: float, log) -> dict:
    """One batch size: whole generation, AR part, decoder part, one velocity call; each with its floor."""
    info, spec = engine.info, engine.spec
    classes = [i % info.num_classes for i in range(batch)]
    cfg = 1.0 if cfg_scale is None else cfg_scale
    request = build_request(engine, classes, cfg=cfg, seed=0, batch_size=batch)
    tokens = sample_tokens(engine, request)
    x0 = image_noise(spec, 0, range(batch))
    s_mid = spec.time_grid[spec.steps // 2]
    begin, end = spec.step_tokens[spec.steps // 2]
    cond = np.asarray(np.random.default_rng(1).standard_normal((batch, end - begin, spec.cond_dim)), np.float32)
    cases = {
        "generation": lambda: run_d_ar_request(engine, request, output="float"),
        "ar": lambda: sample_tokens(engine, request),
        "decoder": lambda: decode_result(engine, tokens, noise=x0, output="float", batch_size=batch),
        "velocity_call": lambda: engine.graphs.velocity(x0, s_mid, cond),
    }
    log(f"batch {batch}: timing {', '.join(cases)} (interleaved, {repeats} repeats)")
    timed = time_interleaved(cases, repeats, warmup)
    rows = 2 * batch if request.cfg.enabled else batch
    ar_floor = floor_seconds(roofline.image_bytes(rows), bandwidth)
    flops = velocity_flops(tokenizer, batch)["total"]
    velocity_floor = flops / flops_rate if flops_rate > 0 else float("inf")
    decoder_floor = spec.steps * velocity_floor
    gen, ar, dec, vel = (timed[k].median_s for k in ("generation", "ar", "decoder", "velocity_call"))
    return {
        "batch": batch, "rows": rows,
        "timings": {k: _stats(v) for k, v in timed.items()},
        "ar": {"seconds": ar, "floor_s": ar_floor, "x_floor": ar / ar_floor, "bytes": roofline.image_bytes(rows),
               "bound": "memory: weights + KV cache read per step over the measured bandwidth"},
        "decoder": {"seconds": dec, "floor_s": decoder_floor, "x_floor": dec / decoder_floor,
                    "velocity_calls": spec.steps, "velocity_share": spec.steps * vel / dec,
                    "bound": "compute: velocity FLOPs over the measured MatMul rate"},
        "velocity_call": {"seconds": vel, "flops": flops, "floor_s": velocity_floor, "x_floor": vel / velocity_floor,
                          "gflops_measured": flops / vel / 1e9},
        "generation": {"seconds": gen, "ar_share": ar / gen, "decoder_share": dec / gen,
                       "overlap_note": "the stream runs the decoder inside the token loop; generation ≈ AR + decoder"},
    }


def run_d_ar_bench(pkg_dir: str | Path, batch_sizes=(1, 8), repeats: int = 5, cfg: bool = True, *, warmup: int = 1,
                   threads: int | None = None, device: str = "cpu", json_path: str | Path | None = None,
                   bandwidth_bytes: int = DEFAULT_BYTES, echo=print, log=None) -> dict:
    """Bench a D-AR package on onnxruntime (see the module doc); returns the report (schema below)."""
    from dartrt.runtime.sessions import usable_cpus

    log = log or (lambda _: None)
    threads = int(threads or usable_cpus())
    started, t0, load_before = _dt.datetime.now(_dt.timezone.utc), time.perf_counter(), os.getloadavg()
    manifest = Manifest.load(pkg_dir)
    engine = open_d_ar_package(pkg_dir, {"cpu": "onnxruntime-cpu", "cuda": "onnxruntime-cuda"}[device],
                               manifest=manifest, intra_op_threads=threads)
    tokenizer = manifest.data["d_ar"]["tokenizer"]
    roofline = Roofline.from_manifest(manifest)
    info = manifest.info
    cfg_scale = (info.default_cfg if info.default_cfg != 1.0 else 4.0) if cfg else None
    log("memory bandwidth and MatMul rate")
    bandwidth = host_read_bandwidth(bandwidth_bytes, threads=threads)
    rate = gemm_rate(threads)
    batches = [bench_d_ar_batch(engine, roofline, tokenizer, b, cfg_scale, repeats, warmup, bandwidth.bytes_per_s,
                                rate["flops_per_s"], log) for b in batch_sizes]
    load_after = os.getloadavg()
    report = {
        "schema": SCHEMA, "package": str(Path(pkg_dir).resolve()), "model": info.name, "family": "d-ar",
        "backend": engine.name, "started": started.isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - t0,
        "machine": {"usable_cpus": usable_cpus(), "threads": threads, "load_avg_before": list(load_before),
                    "load_avg_after": list(load_after), "loaded": load_before[0] > 0.25 * usable_cpus()},
        "settings": {"batch_sizes": list(batch_sizes), "repeats": repeats, "warmup": warmup, "cfg_scale": cfg_scale,
                     "device": device, "torch": False},
        "bandwidth": bandwidth.to_dict(), "matmul_rate": rate,
        "velocity_flops_per_image": velocity_flops(tokenizer),
        "batches": batches,
    }
    if json_path is not None:
        write_json_atomic(Path(json_path), report)
    if echo is not None:
        echo(format_d_ar(report))
    return report


def format_d_ar(report: dict) -> str:
    """The report as a table: per batch, AR and decoder time against their floors, and the velocity rate."""
    flops = report["velocity_flops_per_image"]["total"]
    lines = [f"D-AR package {report['model']} on {report['backend']} ({report['machine']['threads']} threads"
             f"{', LOADED host: not for publication' if report['machine']['loaded'] else ''})",
             f"bandwidth {report['bandwidth']['gbps']:.1f} GB/s; onnxruntime MatMul "
             f"{report['matmul_rate']['gflops']:.1f} GFLOP/s; velocity network "
             f"{flops / 1e9:.3f} GFLOP per call and image",
             f"{'batch':>5} {'part':<14} {'time':>10} {'floor':>10} {'x floor':>8}  note"]
    for b in report["batches"]:
        rows = (("AR tokens", b["ar"], "memory-bound"), ("decoder", b["decoder"],
                f"{b['decoder']['velocity_calls']} velocity calls = {b['decoder']['velocity_share']:.0%}"),
                ("velocity call", b["velocity_call"], f"{b['velocity_call']['gflops_measured']:.1f} GFLOP/s"))
        for name, part, note in rows:
            lines.append(f"{b['batch']:>5} {name:<14} {fmt_time(part['seconds']):>10} {fmt_time(part['floor_s']):>10} "
                         f"{part['x_floor']:>7.1f}x  {note}")
        g = b["generation"]
        lines.append(f"{b['batch']:>5} {'generation':<14} {fmt_time(g['seconds']):>10} {'':>10} {'':>8}  "
                     f"AR {g['ar_share']:.0%} + decoder {g['decoder_share']:.0%}")
    return "\n".join(lines)
