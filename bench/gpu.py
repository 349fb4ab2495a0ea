"""The GPU section of `dartrt bench`: the torch reference on a CUDA device, eager and replayed from a
CUDA graph, one decode step per dtype and batch size, next to the HBM floor.

Why it stands apart from the main comparison: a GPU user may have neither onnxruntime-gpu nor
TensorRT yet (``dartrt bench --gpu-only``) and still wants to know where the reference stands against
the hardware. Eager torch pays a kernel launch per op, a CUDA graph one launch per step, and the
floor is the step's bytes over the HBM bandwidth measured in the same run.

Timed per dtype and batch size (rows doubled with CFG), on a cache really filled up to the step:
- eager, graph replay and (``compile_backend``, `dartrt bench --gpu-compile`) the torch.compile'd
  step replayed from a CUDA graph, gpt-fast's recipe and the reference at its fastest: interleaved,
  each call synchronised, the latency a Python loop that samples on the host pays per step;
- each graph's device time: a burst of replays between two CUDA events with no host sync between
  them, i.e. the GPU's own time per step, the figure a TensorRT engine under a CUDA graph meets.
Each contender's logits are checked against eager's (``max_abs_vs_eager``); a compile that fails is
reported in the entry (``compile_error``) and the other contenders still run.

The floors price the package's bytes (`bench.roofline`) at the dtype's size: in bf16/fp16 an fp32
package's weights and cache halve (`Roofline.at_itemsize`). When a step's bytes fit in the GPU's L2
cache, repeated steps need not reach HBM at all; the report says so, since the HBM floor is then no
bound (the bundled demo model is such a case).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from dartrt.runtime.errors import DartrtError

from .bandwidth import Bandwidth, cuda_copy_bandwidth
from .roofline import Roofline, floor_seconds
from .timing import Stats, time_interleaved

DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEVICE_BURST = 20  # replays per CUDA-event sample
Log = Callable[[str], None]


def device_seconds_per_call(launch: Callable[[], None], calls: int, repeats: int) -> Stats:
    """Samples of (GPU time of ``calls`` back-to-back launches) / ``calls``, timed with CUDA events."""
    import torch

    samples = []
    for _ in range(max(int(repeats), 1)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            launch()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / calls)  # elapsed_time is in milliseconds
    return Stats.of(samples, calls)


def l2_bytes(device: str) -> int:
    """The GPU's L2 cache size (0 on the CPU, where the tests run this section)."""
    import torch

    if not device.startswith("cuda"):
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))


def check_dtypes(roofline: Roofline, dtypes) -> None:
    """Refuse what the section cannot price, before any timing runs (run_bench calls it up front)."""
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not dtypes:
        raise DartrtError(f"GPU dtypes must be among {', '.join(DTYPES)}, got {', '.join(unknown) or 'none'}")
    if roofline.kv_itemsize != 4 and any(DTYPES[d] != roofline.kv_itemsize for d in dtypes):
        raise DartrtError("the GPU section prices other dtypes from an fp32 package only; bench the fp32 package "
                          "or pass --gpu-dtype matching its precision")


def _ratio(a: float, b: float) -> float:
    return a / b if 0 < b < float("inf") else float("nan")


def accelerator_section(ckpt, roofline: Roofline, info, batch_sizes, cfg: bool, repeats: int, warmup: int,
                        write_index: int, *, dtypes: tuple[str, ...] = ("float32",), compile_backend: str | None = None,
                        device: str = "cuda", capture=None, bandwidth: Bandwidth | None = None, burst_s: float = 2e-3,
                        log: Log = lambda _: None) -> dict:
    """torch eager vs torch + CUDA graph (and, with ``compile_backend``, the torch.compile'd step + CUDA
    graph), one decode step per dtype and batch size, next to the HBM floor.

    ``device``/``capture``/``bandwidth`` exist so the logic can run on the CPU with `eager_capture`;
    on a GPU the defaults capture a real CUDA graph and measure HBM with a device copy.
    """
    import torch

    from dartrt.dar.torch_backend import TorchBackend

    from .cuda_graph import cuda_capture

    check_dtypes(roofline, dtypes)
    capture = capture or cuda_capture
    bw = bandwidth or cuda_copy_bandwidth(device=device)
    l2 = l2_bytes(device)
    labels = [f"torch-{device}", f"torch-{device}-graph"] + ([f"torch-{device}-compiled-graph"] if compile_backend
                                                            else [])
    out = {"device": device, "name": bw.note or device, "bandwidth": bw.to_dict(), "l2_bytes": l2,
           "backends": labels, "dtypes": list(dtypes), "compile_backend": compile_backend, "batches": []}
    for dtype in dtypes:
        backend = TorchBackend(copy.deepcopy(ckpt), dtype=getattr(torch, dtype), device=device)
        size = DTYPES[dtype]
        priced = roofline if size == roofline.kv_itemsize else roofline.at_itemsize(size)
        for batch in batch_sizes:
            log(f"{device}: {dtype}, batch {batch}: decode step, " + ", ".join(labels))
            entry = _one_step(backend, info, batch, cfg, write_index, labels, capture, compile_backend, repeats,
                              warmup, burst_s)
            step_bytes = priced.decode_step(entry["rows"], write_index + 1)
            floor = floor_seconds(step_bytes.total, bw.bytes_per_s)
            t = entry["timings"]
            entry.update({"dtype": dtype, "step_bytes": step_bytes.to_dict(), "step_floor_s": floor,
                          "fits_in_l2": bool(l2 and step_bytes.total <= l2),
                          "vs_floor": {k: _ratio(v["median_s"], floor) for k, v in t["step"].items()},
                          "device_vs_floor": {k: _ratio(v["median_s"], floor) for k, v in t["device"].items()}})
            out["batches"].append(entry)
        del backend
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def _one_step(backend, info, batch: int, cfg: bool, write_index: int, labels: list[str], capture,
              compile_backend: str | None, repeats: int, warmup: int, burst_s: float) -> dict:
    """One dtype and batch size: fill the cache, build the contenders, check them against eager, time them
    (the caller prices the floor from the entry's rows)."""
    import time

    from .cuda_graph import StaticDecodeStep
    from .inputs import Inputs, fill_cache

    device = str(backend.device)
    inputs = Inputs(info, batch, cfg)
    rows = len(inputs.rows)
    fill_cache(backend, inputs, write_index)

    def new_step(compiled: str | None) -> StaticDecodeStep:
        step = StaticDecodeStep(backend.model, backend.caches, backend.modulation, rows,
                                inputs.tables.positions.shape[-1], device, compile_backend=compiled)
        step.set_inputs(*inputs.step_args(write_index))
        return step

    eager = new_step(None)
    want = eager.eager().float().clone()  # every contender rewrites the same cache slot with the same values
    eager.capture(capture)
    steps, cases = {labels[1]: eager}, {labels[0]: eager.eager, labels[1]: eager.replay}
    entry: dict = {"batch": batch, "rows": rows, "write_index": write_index, "compile_s": None, "compile_error": None}
    if compile_backend:
        started = time.perf_counter()
        try:
            compiled = new_step(compile_backend)
            compiled.capture(capture)  # the capture's warm-up calls compile it
        except Exception as exc:  # a graph break or backend failure: reported, the other contenders still run
            entry["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        else:
            steps[labels[2]], cases[labels[2]] = compiled, compiled.replay
            entry["compile_s"] = time.perf_counter() - started
    check = {label: float((s.replay().float() - want).abs().max()) for label, s in steps.items()}
    timings = time_interleaved(cases, repeats, warmup, burst_s=burst_s)
    on_gpu = device.startswith("cuda")
    device_times = {label: device_seconds_per_call(s.launch, DEVICE_BURST, repeats)
                    for label, s in steps.items()} if on_gpu else {}
    eager_s = timings[labels[0]].median_s
    entry.update({
        "timings": {"step": {k: v.to_dict() for k, v in timings.items()},
                    "device": {k: v.to_dict() for k, v in device_times.items()}},
        "speedup_vs_eager": {k: eager_s / v.median_s for k, v in timings.items()},
        "max_abs_vs_eager": check,
    })
    return entry
