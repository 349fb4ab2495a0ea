"""`run_bench`: the torch reference and onnxruntime, timed in one run, interleaved, on one model.

What is timed, per batch size (rows doubled with CFG):
- prefill, and one decode step at a mid-sequence write index with a cache really filled by the
  model up to there; each twice: through the `Backend` call and as the graph alone;
- the whole image (`sample_tokens`: every step, CFG combine, sampling), and the VQ decode.
The decode graphs attend over all T_max slots under a mask, so a step costs the same at every write
index: the mid-sequence step stands for all of them.

"Outside the graph" = (whole-image time - graph time of its calls) / whole-image time, where the
graph time is prefill-graph + (N-1) × step-graph, N the tokens per image. It splits into binding (the
`Backend` call minus its graph: host copies, IOBinding) and the rest (sampling, CFG combine, the
scheduler loop).

Each figure sits next to the bandwidth floor (`bench.roofline`) with the bandwidth measured in the same
run (`bench.bandwidth`), before and after the timings. Other precisions of the package (``precisions``:
the INT8 calibration variants, FP16) run as further onnxruntime sides in the same round-robin, each
priced by its own graphs' bytes and compared with ORT FP32 (`bench.precisions`). On a machine with
CUDA, the torch reference is also timed on the GPU, eager and replayed from a CUDA graph
(`bench.cuda_graph`), next to the HBM floor.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.scheduler import build_request, sample_tokens

from .bandwidth import DEFAULT_BYTES, Bandwidth, cuda_copy_bandwidth, host_read_bandwidth
from .gpu import accelerator_section, check_dtypes
from .inputs import Inputs, fill_cache
from .precisions import FP32, FillTrace, open_precision, resolve_precisions, top1_agreement
from .report import format_table, write_json_atomic
from .roofline import Roofline, floor_seconds
from .sides import OrtGraphCalls, Side, TorchGraphCalls
from .timing import Stats, time_interleaved

SCHEMA = "dartrt-bench/1"
DEVICES = ("cpu", "cuda")
SAME_MODEL_ATOL = 1e-3
BURST_S = 2e-3  # short calls run in back-to-back bursts of about this long (see bench.timing)
LOADED_PER_CPU = 0.25  # load average per usable CPU above which figures are not publishable
Log = Callable[[str], None]


def _reference(manifest: Manifest, source: str | None):
    """The torch model the package was exported from (`dartrt.dar.reference`)."""
    from dartrt.dar.reference import reference_checkpoint

    return reference_checkpoint(manifest, source, hint="pass --source CHECKPOINT or --no-torch")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Give torch the same intra-op thread count as onnxruntime, and restore it afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- helpers ------------------------------------------------------------------------------------------
def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _stats(timings: dict[str, Stats]) -> dict[str, dict]:
    return {k: v.to_dict() for k, v in timings.items()}


def _split(timings: dict[str, Stats], sides: list[Side]) -> tuple[dict[str, Stats], dict[str, Stats]]:
    """{label/api, label/graph} → ({label: api}, {label: graph})."""
    return ({s.label: timings[f"{s.label}/api"] for s in sides}, {s.label: timings[f"{s.label}/graph"] for s in sides})


def _floors(roofline: Roofline, rows: int, write_index: int, bandwidth: float) -> dict:
    """One side's bytes and floors: the weights are its own graphs' (INT8 variants read ~1/4)."""
    step = roofline.decode_step(rows, write_index + 1)
    image = roofline.image_bytes(rows)
    return {"step_weights": step.weights, "step_total": step.total,
            "step_floor_s": floor_seconds(step.total, bandwidth),
            "image_bytes": image, "image_floor_s": floor_seconds(image, bandwidth)}


def _speedups(timings: dict[str, dict[str, Stats]], over: str, label: str) -> dict[str, float]:
    """How many times faster ``label`` is than ``over``, per timing key (> 1: ``label`` is faster)."""
    return {k: v[over].median_s / v[label].median_s for k, v in timings.items()}


# ---- one batch size -----------------------------------------------------------------------------------
def bench_batch(sides: list[Side], roofline: Roofline, info, batch: int, cfg_scale: float | None,
                repeats: int, warmup: int, write_index: int, bandwidth: float, log: Log,
                rooflines: dict[str, Roofline] | None = None) -> dict:
    """Every measurement of one batch size, interleaved across ``sides``; see the module docstring.

    ``sides[0]`` is onnxruntime FP32, the baseline of every ratio; a torch side is the reference; the
    other onnxruntime sides are variants, each priced by its own roofline (``rooflines[label]``)."""
    cfg = cfg_scale is not None
    inputs = Inputs(info, batch, cfg)
    rows, n_tok = len(inputs.rows), info.seq_len
    timings: dict[str, dict[str, Stats]] = {}
    parity: dict[str, float] = {}
    base = sides[0].label
    ref = next((s.label for s in sides if s.engine == "torch"), None)
    variants = [s for s in sides if s.engine != "torch" and s.precision != FP32]
    rooflines = {s.label: (rooflines or {}).get(s.label, roofline) for s in sides}

    log(f"batch {batch}: prefill")
    first = {s.label: s.backend.prefill(*inputs.prefill_args()) for s in sides}
    cases: dict[str, Callable[[], object]] = {}
    for s in sides:
        cases[f"{s.label}/api"] = lambda s=s: s.backend.prefill(*inputs.prefill_args())
        cases[f"{s.label}/graph"] = s.graph.prefill(*inputs.prefill_args())
    timings["prefill"], timings["prefill_graph"] = _split(time_interleaved(cases, repeats, warmup, burst_s=BURST_S),
                                                          sides)

    log(f"batch {batch}: decode step at write index {write_index}")
    traces = {s.label: FillTrace() for s in sides}
    at_w = {s.label: fill_cache(s.backend, inputs, write_index, traces[s.label], cfg_scale) for s in sides}
    cases = {}
    for s in sides:
        cases[f"{s.label}/api"] = lambda s=s: s.backend.step(*inputs.step_args(write_index))
        cases[f"{s.label}/graph"] = s.graph.step(*inputs.step_args(write_index))
    timings["step"], timings["step_graph"] = _split(time_interleaved(cases, repeats, warmup, burst_s=BURST_S), sides)
    if ref is not None:
        parity = {"prefill_max_abs": _max_abs(first[base], first[ref]), "step_max_abs": _max_abs(at_w[base], at_w[ref])}

    log(f"batch {batch}: whole image ({n_tok} tokens)")
    request = build_request(sides[0].backend, [int(c) for c in inputs.classes], cfg=cfg_scale if cfg else 1.0,
                            cfg_schedule=None if cfg else "constant", batch_size=batch, seed=0)
    tokens: dict[str, np.ndarray] = {}

    def image(s: Side) -> None:
        tokens[s.label] = sample_tokens(s.backend, request)

    timings["image"] = time_interleaved({s.label: (lambda s=s: image(s)) for s in sides}, repeats, warmup)
    if ref is not None:
        parity["image_tokens_match_share"] = float(np.mean(tokens[base] == tokens[ref]))

    log(f"batch {batch}: VQ decode")
    timings["vq_decode"] = time_interleaved({s.label: (lambda s=s: s.backend.decode_vq(inputs.grids))
                                             for s in sides}, repeats, warmup, burst_s=BURST_S)

    step_bytes = roofline.decode_step(rows, write_index + 1)
    image_bytes = roofline.image_bytes(rows)
    step_floor, image_floor = floor_seconds(step_bytes.total, bandwidth), floor_seconds(image_bytes, bandwidth)
    floors = {s.label: _floors(rooflines[s.label], rows, write_index, bandwidth) for s in sides}
    derived = {}
    for s in sides:
        t = {k: v[s.label].median_s for k, v in timings.items()}
        own_step, own_image = floors[s.label]["step_floor_s"], floors[s.label]["image_floor_s"]
        graph_time = t["prefill_graph"] + (n_tok - 1) * t["step_graph"]
        binding = (t["prefill"] - t["prefill_graph"]) + (n_tok - 1) * (t["step"] - t["step_graph"])
        outside = 1.0 - graph_time / t["image"]
        derived[s.label] = {
            "image_per_step_s": t["image"] / n_tok,
            "per_image_s": t["image"] / batch,
            "step_graph_vs_floor": _ratio(t["step_graph"], own_step),
            "step_vs_floor": _ratio(t["step"], own_step),
            "image_vs_floor": _ratio(t["image"], own_image),
            "outside_graph_share": outside,
            "binding_share": binding / t["image"],
            "sampling_share": outside - binding / t["image"],
        }
    result = {
        "batch": batch, "rows": rows, "cfg": cfg, "cfg_scale": cfg_scale, "tokens_per_image": n_tok,
        "write_index": write_index,
        "roofline": {"bandwidth_gbps": bandwidth / 1e9, "step": step_bytes.to_dict(),
                     "step_kv_full_cache": roofline.full_cache_kv(rows), "step_floor_s": step_floor,
                     "prefill": roofline.prefill_step(rows).to_dict(), "image_bytes": image_bytes,
                     "image_floor_s": image_floor},
        "timings": {k: _stats(v) for k, v in timings.items()},
        "derived": derived,
        "parity": parity,
        "floors": floors,
        "precisions": {s.label: {
            "precision": s.precision,
            "speedup_vs_fp32": _speedups(timings, base, s.label),
            "speedup_vs_torch": _speedups(timings, ref, s.label) if ref else None,
            "parity_vs_fp32": {"prefill_max_abs": _max_abs(first[base], first[s.label]),
                               "step_max_abs": _max_abs(at_w[base], at_w[s.label]),
                               **top1_agreement(traces[base], traces[s.label]),
                               "image_tokens_match_share": float(np.mean(tokens[base] == tokens[s.label]))},
        } for s in variants},
    }
    if ref is not None:
        result["speedup"] = _speedups(timings, ref, base)  # torch time / ORT FP32 time
    return result


# ---- the run ------------------------------------------------------------------------------------------
def _check_args(batch_sizes, repeats: int, warmup: int, device: str, threads: int | None) -> tuple[int, ...]:
    sizes = tuple(batch_sizes)
    if not sizes:
        raise DartrtError("give at least one batch size")
    for b in sizes:
        if isinstance(b, bool) or int(b) != b or b < 1:
            raise DartrtError(f"batch sizes must be integers >= 1, got {b!r}")
    if isinstance(repeats, bool) or int(repeats) != repeats or repeats < 1:
        raise DartrtError(f"repeats must be an integer >= 1, got {repeats!r}")
    if int(warmup) != warmup or warmup < 0:
        raise DartrtError(f"warmup must be an integer >= 0, got {warmup!r}")
    if device not in DEVICES:
        raise DartrtError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    if threads is not None and (int(threads) != threads or threads < 1):
        raise DartrtError(f"threads must be an integer >= 1, got {threads!r}")
    return tuple(int(b) for b in sizes)


def _machine(threads: int) -> dict:
    from dartrt.runtime.sessions import usable_cpus

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    with contextlib.suppress(ImportError):
        import torch

        versions["torch"] = torch.__version__
        if torch.cuda.is_available():
            versions["cuda"] = torch.version.cuda
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "usable_cpus": usable_cpus(), "threads": threads, "versions": versions}


def _measure_bandwidth(device: str, nbytes: int, threads: int) -> Bandwidth:
    """The host's read bandwidth, or the GPU's copy bandwidth (which needs torch: without it the
    floors are unknown and reported as null rather than priced with the wrong memory)."""
    if device == "cuda":
        try:
            return cuda_copy_bandwidth(nbytes)
        except ImportError:
            return Bandwidth(0.0, 0, float("inf"), 0, "not measured", 1, "device bandwidth needs torch")
    return host_read_bandwidth(nbytes, threads=threads)


def _ratio(a: float, b: float) -> float:
    """a / b, NaN when b is unknown (0 or inf) so that no made-up multiple is reported."""
    return a / b if 0 < b < float("inf") else float("nan")


def run_bench(pkg_dir: str | Path, batch_sizes=(1, 8), repeats: int = 5, cfg: bool = True,
              source: str | None = None, device: str = "cpu", json_path: str | Path | None = None, *,
              warmup: int = 1, threads: int | None = None, use_torch: bool = True,
              accelerator: bool | None = None, bandwidth_bytes: int = DEFAULT_BYTES,
              precisions: tuple[str, ...] = (), gpu_only: bool = False, gpu_dtypes: tuple[str, ...] = ("float32",),
              gpu_compile: bool = False, echo: Log | None = print, log: Log | None = None,
              adaptive: bool = False, candidates: tuple[int, ...] = (), cells: tuple[int, ...] = ()) -> dict:
    """Bench the package at ``pkg_dir``; returns the report (schema ``dartrt-bench/1``).

    ``device``: where the main comparison runs (onnxruntime's EP and torch). ``accelerator``: the
    torch eager vs CUDA-graph section (`bench.gpu`, in each of ``gpu_dtypes``; ``gpu_compile`` adds the
    torch.compile'd step); None = when torch sees a CUDA GPU. ``gpu_only``: that section alone, no
    onnxruntime (a GPU machine without onnxruntime-gpu or TensorRT). ``precisions``: calibration
    variants (``int8-dynamic``, ...; ``all`` = every one that runs on ``device``) timed as further
    onnxruntime sides next to FP32 (see `bench.precisions`). ``json_path`` is written atomically;
    ``echo`` gets the table, ``log`` the progress lines. ``adaptive``: the adaptive-order section instead
    (`bench.adaptive`: fixed vs adaptive vs ``candidates``-pruned vs ``cells`` per step, per image, against
    the compute and bandwidth floors).
    """
    from dartrt.runtime.ort_backend import OrtBackend
    from dartrt.runtime.sessions import usable_cpus

    sizes = _check_args(batch_sizes, repeats, warmup, device, threads)
    log = log or (lambda _: None)
    threads = int(threads or usable_cpus())
    started, t0, load_before = _dt.datetime.now(_dt.timezone.utc), time.perf_counter(), os.getloadavg()
    manifest = Manifest.load(pkg_dir)
    if manifest.data.get("family") == "d-ar":  # AR part and decoder part, each on its own roofline (bench.d_ar)
        from .d_ar import run_d_ar_bench

        if precisions or gpu_only:
            raise DartrtError("--precision and the GPU section are not implemented for D-AR packages yet")
        return run_d_ar_bench(pkg_dir, sizes, repeats, cfg, warmup=warmup, threads=threads, device=device,
                              json_path=json_path, bandwidth_bytes=bandwidth_bytes, echo=echo, log=log)
    if adaptive:  # the adaptive order's cost (bench.adaptive): onnxruntime on the CPU
        from .adaptive import run_adaptive_bench

        if precisions or gpu_only or device != "cpu":
            raise DartrtError("--adaptive benches onnxruntime fp32 on the CPU; drop --precision, --gpu-only, --device")
        return run_adaptive_bench(pkg_dir, sizes, repeats, cfg, warmup=warmup, threads=threads, candidates=candidates,
                                  cells=cells, json_path=json_path, bandwidth_bytes=bandwidth_bytes, echo=echo, log=log)
    info = manifest.info
    roofline = Roofline.from_manifest(manifest)
    if info.seq_len < 3:
        raise DartrtError(f"{pkg_dir}: a {info.seq_len}-token model has no mid-sequence decode step to time")
    write_index = info.seq_len // 2
    cfg_scale = (info.default_cfg if info.default_cfg != 1.0 else 4.0) if cfg else None
    run_gpu = gpu_only or (use_torch and (accelerator if accelerator is not None else _cuda_available()))
    if run_gpu:
        check_dtypes(roofline, gpu_dtypes)

    def gpu_section(ckpt) -> dict:
        return accelerator_section(ckpt, roofline, info, sizes, cfg, repeats, warmup, write_index,
                                       dtypes=tuple(gpu_dtypes), compile_backend="inductor" if gpu_compile else None,
                                       log=log)

    if gpu_only:  # the GPU section alone: onnxruntime is never opened
        _check_gpu_only(use_torch, precisions)
        ckpt = _reference(manifest, source)
        with torch_threads(threads):
            accel = gpu_section(ckpt)
        report = _report(manifest, sizes, repeats, warmup, cfg, cfg_scale, "cuda", threads, True, write_index,
                         started, t0, load_before)
        report.update({"bandwidth": None, "backends": [], "variants": {}, "reference": {"source": ckpt.source},
                       "batches": [], "accelerator": accel})
        return _emit(report, json_path, echo)
    chosen = resolve_precisions(manifest.data, precisions, device, pkg_dir)

    ort = OrtBackend(manifest, device=device, intra_op_threads=threads)
    sides = [Side(f"onnxruntime-{ort.device}", ort, OrtGraphCalls(ort))]
    reference, ckpt = None, None
    if use_torch:
        try:
            import torch
        except ImportError:
            raise DartrtError("torch is not installed; pass --no-torch to bench onnxruntime alone") from None
        from dartrt.dar.torch_backend import TorchBackend

        if device == "cuda" and not torch.cuda.is_available():
            raise DartrtError("device cuda: torch sees no CUDA GPU")
        ckpt = _reference(manifest, source)
        reference_backend = TorchBackend(copy.deepcopy(ckpt), device=device)
        sides.append(Side(f"torch-{device}", reference_backend, TorchGraphCalls(reference_backend), engine="torch"))
        reference = {"source": ckpt.source}
    rooflines = {}
    for p in chosen[1:]:
        variant, view = open_precision(pkg_dir, manifest, p, device, threads)
        label = f"onnxruntime-{variant.device}[{p.name}]"
        sides.append(Side(label, variant, OrtGraphCalls(variant), precision=p.name))
        rooflines[label] = Roofline.from_manifest(view)
    threads_ctx = torch_threads(threads) if use_torch else contextlib.nullcontext()
    with threads_ctx:
        log("memory bandwidth")
        bw_before = _measure_bandwidth(device, bandwidth_bytes, threads)
        batches = [bench_batch(sides, roofline, info, b, cfg_scale, repeats, warmup, write_index,
                               bw_before.bytes_per_s, log, rooflines) for b in sizes]
        bw_after = _measure_bandwidth(device, bandwidth_bytes, threads)
        accel = None
        if run_gpu:
            accel = gpu_section(ckpt)
    if reference is not None:
        worst = max((v for b in batches for k, v in b["parity"].items() if k.endswith("max_abs")), default=0.0)
        reference.update({"max_abs_logits": worst, "same_model": worst <= SAME_MODEL_ATOL})
    report = _report(manifest, sizes, repeats, warmup, cfg, cfg_scale, device, threads, use_torch, write_index,
                     started, t0, load_before)
    report["settings"]["precisions"] = [p.name for p in chosen]
    report.update({
        "bandwidth": {"before": bw_before.to_dict(), "after": bw_after.to_dict(),
                      "used_gbps": bw_before.gbps, "used_for": "the floors below (measured before the timings)"},
        "backends": [s.label for s in sides],
        "variants": {s.label: {"precision": p.name, "source": p.source, "detail": p.detail, "graphs": p.graph_files}
                     for s, p in zip([s for s in sides if s.precision != FP32], chosen[1:])},
        "reference": reference,
        "batches": batches,
        "accelerator": accel,
    })
    return _emit(report, json_path, echo)


def _check_gpu_only(use_torch: bool, precisions) -> None:
    if not use_torch:
        raise DartrtError("--gpu-only times the torch reference on the GPU; it cannot go with --no-torch")
    if precisions:
        raise DartrtError("--precision times onnxruntime variants; it cannot go with --gpu-only")
    if not _cuda_available():
        raise DartrtError("--gpu-only needs a CUDA GPU that torch sees (torch.cuda.is_available() is False)")


def _report(manifest: Manifest, sizes, repeats, warmup, cfg, cfg_scale, device, threads, use_torch, write_index,
            started, t0, load_before) -> dict:
    """The report's frame: what was benched, where, with which settings, and how loaded the host was."""
    load_after = os.getloadavg()
    machine = _machine(threads)
    # Judged on the load before the run: afterwards the 1-minute average includes the bench itself.
    machine.update({"load_avg_before": list(load_before), "load_avg_after": list(load_after),
                    "loaded": load_before[0] > LOADED_PER_CPU * machine["usable_cpus"]})
    return {
        "schema": SCHEMA,
        "package": str(manifest.root.resolve()), "model": manifest.info.name,
        "precision": manifest.precision,
        "started": started.isoformat(timespec="seconds"), "seconds": time.perf_counter() - t0,
        "machine": machine,
        "settings": {"batch_sizes": list(sizes), "repeats": repeats, "warmup": warmup, "cfg": cfg,
                     "cfg_scale": cfg_scale, "device": device, "threads": threads, "write_index": write_index,
                     "interleaved": "round-robin over backends, warm-up included", "burst_s": BURST_S,
                     "torch": use_torch, "precisions": []},
    }


def _emit(report: dict, json_path, echo: Log | None) -> dict:
    if json_path is not None:
        write_json_atomic(Path(json_path), report)
    if echo is not None:
        echo(format_table(report))
    return report


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
