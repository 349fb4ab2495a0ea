"""`dartrt bench-serve`: the service's throughput and latency against a loop of `runtime.generate` calls.

One run measures both on the same machine, interleaved: a chunk of the sequential loop (one process,
one image per call), then the service at the first concurrency, another loop chunk, the next
concurrency, ..., and a last loop chunk; the first chunk runs before Ray starts. Every chunk is
reported, so a machine whose load changed during the run shows as spread between the chunks instead of
as a false speed-up.

The loop runs in two forms in every chunk: onnxruntime with the runtime's default threads (every usable
core) and with one thread, because on a small model and a shared machine one thread is often faster at
one image (the second thread mostly waits). Service rows are compared with the faster form's mean over
all chunks, the stricter baseline.

The service runs closed loop: C clients, each sending its next request when its answer arrives. Every
request is one image of a distinct (class, seed) at the model's defaults; p50/p99 are over the requests
of one level (with a few dozen requests p99 is close to the maximum).
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from dartrt.runtime.errors import DartrtError

from .load import run_load


@dataclass(frozen=True)
class Level:
    """One measured row: the sequential loop (concurrency 0) or the service at one concurrency."""

    mode: str
    concurrency: int
    requests: int
    ok: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch_images: float | None = None
    statuses: dict = field(default_factory=dict)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else math.nan


def request_bodies(count: int, num_classes: int, first_seed: int) -> list[dict]:
    """``count`` one-image requests of distinct seeds, the classes in turn; model-default settings."""
    return [{"class_ids": [i % num_classes], "seed": first_seed + i} for i in range(count)]


def sequential_loop(engine, bodies: Sequence[dict], label: str = "default threads") -> Level:
    """`runtime.generate` on an opened backend, one request after the other (one warm-up call first)."""
    from dartrt.runtime import generate

    generate(engine, bodies[0]["class_ids"], seed=bodies[0]["seed"])
    latencies = []
    start = time.perf_counter()
    for body in bodies:
        t0 = time.perf_counter()
        generate(engine, body["class_ids"], seed=body["seed"])
        latencies.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - start
    return Level(f"sequential runtime.generate, {label}", 1, len(bodies), len(bodies), seconds, len(bodies) / seconds,
                 1e3 * _percentile(latencies, 50), 1e3 * _percentile(latencies, 99))


def service_level(url: str, bodies: Sequence[dict], concurrency: int, timeout_s: float) -> Level:
    """The service under ``concurrency`` closed-loop clients posting ``bodies``."""
    shots = run_load(url, bodies, concurrency, timeout_s=timeout_s, deadline_s=timeout_s * 4)
    ok = [s for s in shots if s.status == 200]
    statuses: dict[str, int] = {}
    for s in shots:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    sent = [s for s in shots if s.start > 0]
    seconds = max(s.start + s.seconds for s in sent) - min(s.start for s in sent) if sent else math.nan
    batches = [json.loads(s.body)["batch"]["images"] for s in ok]
    return Level("dartrt serve", concurrency, len(bodies), len(ok), seconds, len(ok) / seconds if sent else 0.0,
                 1e3 * _percentile([s.seconds for s in ok], 50), 1e3 * _percentile([s.seconds for s in ok], 99),
                 float(np.mean(batches)) if batches else None, statuses)


@dataclass
class BenchReport:
    """Everything a bench-serve run measured, and where."""

    package: str
    settings: dict
    machine: dict
    baselines: list[list[Level]]  # per chunk, one Level per loop form; chunk 0 ran before Ray started
    levels: list[Level]

    def form_means(self) -> dict[str, float]:
        """Mean images/s of each loop form over every chunk."""
        forms: dict[str, list[float]] = {}
        for chunk in self.baselines:
            for lv in chunk:
                forms.setdefault(lv.mode, []).append(lv.images_per_s)
        return {mode: float(np.mean(v)) for mode, v in forms.items()}

    @property
    def baseline_mode(self) -> str:
        means = self.form_means()
        return max(means, key=means.get)

    @property
    def baseline_images_per_s(self) -> float:
        return self.form_means()[self.baseline_mode]

    def ratio(self, level: Level) -> float:
        return level.images_per_s / self.baseline_images_per_s

    def to_json(self) -> dict:
        data = asdict(self)
        data["baseline_images_per_s"] = self.baseline_images_per_s
        data["baseline_mode"] = self.baseline_mode
        data["baseline_form_means"] = self.form_means()
        data["ratios"] = {str(lv.concurrency): self.ratio(lv) for lv in self.levels}
        return data

    def markdown(self) -> str:
        rows = ["| run | concurrency | requests (ok) | images/s | p50 ms | p99 ms | images per forward | "
                "vs sequential |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for i, chunk in enumerate(self.baselines):
            label = "before Ray started" if i == 0 else f"chunk {i}, service idle"
            for lv in chunk:
                rows.append(f"| {lv.mode} ({label}) | 1 | {lv.requests} | {lv.images_per_s:.2f} | {lv.p50_ms:.0f} | "
                            f"{lv.p99_ms:.0f} | 1 | {self.ratio(lv):.2f}x |")
        for lv in self.levels:
            batch = f"{lv.mean_batch_images:.1f}" if lv.mean_batch_images is not None else "-"
            rows.append(f"| {lv.mode} | {lv.concurrency} | {lv.requests} ({lv.ok}) | {lv.images_per_s:.2f} | "
                        f"{lv.p50_ms:.0f} | {lv.p99_ms:.0f} | {batch} | **{self.ratio(lv):.2f}x** |")
        means = ", ".join(f"{mode}: {v:.2f}" for mode, v in self.form_means().items())
        rows.append(f"\nBaseline: {self.baseline_mode}, {self.baseline_images_per_s:.2f} images/s (means over all "
                    f"chunks: {means}).")
        return "\n".join(rows)


def machine() -> dict:
    """CPU model, cores this process may use, and the versions that matter for the numbers."""
    import onnxruntime

    from dartrt.runtime.sessions import usable_cpus

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    try:
        import ray

        versions["ray"] = ray.__version__
    except ImportError:
        pass
    return {"cpu": cpu, "usable_cpus": usable_cpus(), **versions}


def run_bench_serve(config, *, levels: Sequence[int] = (1, 4, 16), rounds: int = 4, baseline_requests: int = 8,
                    timeout_s: float = 300.0, warmup: int = 1, echo: Callable[[str], None] = print,
                    log: Callable[[str], None] = print, temp_dir: str | None = None) -> BenchReport:
    """Loop chunks interleaved with the service at each concurrency; ``rounds`` x C requests per level."""
    from dartrt.runtime.package import open_package_backend

    from . import cluster

    if rounds < 1 or baseline_requests < 1 or not levels or min(levels) < 1:
        raise DartrtError("bench-serve needs rounds >= 1, baseline requests >= 1 and concurrencies >= 1")
    config = cluster.preflight(config)
    from dartrt.runtime.sessions import usable_cpus

    engines = {"default threads": open_package_backend(config.package, config.backend, precision=config.precision)}
    if usable_cpus() > 1 and config.backend != "tensorrt":
        engines["1 thread"] = open_package_backend(config.package, config.backend, precision=config.precision,
                                                   intra_op_threads=1)
    num_classes = engines["default threads"].info.num_classes

    def loop_chunk(k: int) -> list[Level]:
        log(f"sequential loop, chunk {k}: {baseline_requests} requests per form ({', '.join(engines)})")
        bodies = request_bodies(baseline_requests, num_classes, 1_000 * k)
        return [sequential_loop(engine, bodies, label) for label, engine in engines.items()]

    baselines = [loop_chunk(0)]
    service = cluster.start(config, temp_dir=temp_dir)
    try:
        warm = request_bodies(warmup * max(levels), num_classes, 10_000)
        run_load(service.url, warm, max(levels), timeout_s=timeout_s, deadline_s=4 * timeout_s)
        measured = []
        for k, c in enumerate(levels, start=1):
            baselines.append(loop_chunk(k))
            log(f"service at concurrency {c}: {rounds * c} requests")
            measured.append(service_level(service.url, request_bodies(rounds * c, num_classes, 100_000 * c), c,
                                          timeout_s))
        baselines.append(loop_chunk(len(levels) + 1))
        settings = {"replicas": config.replicas, "max_batch": config.max_batch, "batch_wait_ms": config.batch_wait_ms,
                    "threads_per_replica": service.threads, "precision": config.precision or "fp32",
                    "backend": config.backend, "rounds": rounds, "baseline_requests": baseline_requests,
                    "baseline_forms": list(engines)}
    finally:
        cluster.stop(service)
    report = BenchReport(config.package, settings, machine(), baselines, measured)
    echo(report.markdown())
    return report
