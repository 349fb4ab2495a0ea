"""Memory bandwidth, measured in the same run as the timings it is compared with.

A datasheet number says what the memory could do on an idle, well-cooled machine; the roofline floor
is only meaningful against what this machine delivers right now, to this process. So the bench reads
a buffer far larger than the last-level cache (1 GiB by default) and keeps the best of N passes: the
best pass is the one least disturbed by neighbours, which is the right bound for a floor.

- Host: numpy ``max`` over a float32 buffer (a pure streaming read: SIMD, no overflow, no writes),
  optionally split over threads (numpy releases the GIL in reductions), matching the thread count the
  backends run with.
- CUDA: a device-to-device ``copy_`` with torch, timed with CUDA events; reported as (read + written)
  bytes / time, the convention of CUDA's bandwidthTest, i.e. what HBM sustains for a stream.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DEFAULT_BYTES = 1 << 30


@dataclass(frozen=True)
class Bandwidth:
    """One measurement: ``gbps`` = 1e9 bytes/s of the best pass."""

    gbps: float
    bytes: int
    best_s: float
    passes: int
    method: str
    threads: int = 1
    note: str = ""

    @property
    def bytes_per_s(self) -> float:
        return self.gbps * 1e9

    def to_dict(self) -> dict:
        return asdict(self)


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache (Linux sysfs), to warn when a buffer would not stream from DRAM."""
    best = None
    for size_file in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = size_file.read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            value = int(text.rstrip("KMG")) * scale
        except (OSError, ValueError):
            continue
        best = value if best is None else max(best, value)
    return best


def host_read_bandwidth(nbytes: int = DEFAULT_BYTES, passes: int = 5, threads: int = 1) -> Bandwidth:
    """Best-of-``passes`` streaming read of ``nbytes`` with numpy, over ``threads`` threads."""
    n = max(int(nbytes) // 4, threads)
    buf = np.ones(n, dtype=np.float32)  # np.ones touches every page: no first-touch faults while timing
    chunks = np.array_split(buf, max(int(threads), 1))
    best = float("inf")
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        for _ in range(max(int(passes), 1)):
            start = time.perf_counter()
            if len(chunks) == 1:
                buf.max()
            else:
                list(pool.map(np.max, chunks))
            best = min(best, time.perf_counter() - start)
    read = buf.nbytes
    llc = last_level_cache_bytes()
    note = ""
    if llc is not None and read < 4 * llc:
        note = f"buffer {read >> 20} MiB is under 4x the {llc >> 20} MiB last-level cache: partly a cache figure"
    return Bandwidth(read / best / 1e9, read, best, max(int(passes), 1), "numpy float32 max (streaming read)",
                     len(chunks), note)


def cuda_copy_bandwidth(nbytes: int = DEFAULT_BYTES, passes: int = 10, device: str = "cuda") -> Bandwidth:
    """Best-of-``passes`` device-to-device copy of ``nbytes`` with torch; counts read + written bytes.

    Timed with ``torch.cuda.Event(enable_timing=True)`` / ``elapsed_time`` (milliseconds). CI has no GPU;
    run on one H200 it gave 4.1-4.2 TB/s for 1 GiB, well past its 60 MiB L2 (docs/benchmarks.md, "GPU").
    """
    import torch

    n = max(int(nbytes), 1)
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: context, allocator, clocks
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(max(int(passes), 1)):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    moved = 2 * n
    name = torch.cuda.get_device_name(device)
    return Bandwidth(moved / best / 1e9, moved, best, max(int(passes), 1),
                     "torch device-to-device copy_ (read + write bytes)", 1, name)
