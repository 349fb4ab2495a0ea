"""Interleaved timing: round-robin over the contenders so that drift hits all of them alike.

Timing A for a minute and then B for a minute measures the machine as much as the code: clocks ramp,
a neighbour starts a job, the page cache warms. Running A, B, A, B, ... spreads any such drift evenly
over both, so their ratio stays honest even when the absolute numbers move. The spread (p10/p90) is
reported next to the median so a noisy run shows itself instead of hiding in one number.

A turn may be a short burst of back-to-back calls of one contender (``inner``): interleaving single
sub-millisecond calls would let each contender evict the other's working set from the caches before
every call, a penalty the real generation loop (hundreds of steps of one backend in a row) never pays.
A sample is then the burst's time per call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

Clock = Callable[[], float]


@dataclass(frozen=True)
class Stats:
    """Summary of one contender's samples, in seconds. Median and p10/p90: robust to a stray outlier."""

    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    max_s: float
    n: int
    calls_per_sample: int = 1

    @classmethod
    def of(cls, samples: Sequence[float], calls_per_sample: int = 1) -> "Stats":
        if not samples:
            raise ValueError("no timing samples")
        a = np.asarray(samples, dtype=np.float64)
        p10, med, p90 = np.percentile(a, [10, 50, 90])
        return cls(float(med), float(p10), float(p90), float(a.min()), float(a.max()), int(a.size),
                   int(calls_per_sample))

    def scaled(self, factor: float) -> "Stats":
        """The same distribution divided by ``factor`` (e.g. per step of a whole image)."""
        return Stats(self.median_s / factor, self.p10_s / factor, self.p90_s / factor, self.min_s / factor,
                     self.max_s / factor, self.n, self.calls_per_sample)

    def to_dict(self) -> dict:
        return asdict(self)


def round_robin(names: Sequence[str], rounds: int) -> Iterator[str]:
    """A, B, A, B, ...: ``rounds`` passes over ``names`` in their given order."""
    for _ in range(rounds):
        yield from names


def calibrate(fn: Callable[[], object], target_s: float, max_calls: int, clock: Clock = time.perf_counter) -> int:
    """Calls per burst so that one burst lasts about ``target_s`` (one call, timed, decides)."""
    start = clock()
    fn()
    elapsed = max(clock() - start, 1e-9)
    return int(min(max_calls, max(1, math.ceil(target_s / elapsed))))


def interleaved(cases: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                clock: Clock = time.perf_counter, inner: Mapping[str, int] | None = None) -> dict[str, list[float]]:
    """Run every case ``warmup`` times, then ``repeats`` turns, round-robin; return per-call samples.

    A turn of case ``k`` is ``inner[k]`` back-to-back calls (default 1), timed together. Warm-up is
    interleaved too, so lazy allocations and first-touch page faults of every contender happen before
    any of them is measured.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(cases)
    calls = {name: max(int((inner or {}).get(name, 1)), 1) for name in names}
    for name in round_robin(names, max(warmup, 0)):
        cases[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in round_robin(names, repeats):
        fn, k = cases[name], calls[name]
        start = clock()
        for _ in range(k):
            fn()
        samples[name].append((clock() - start) / k)
    return samples


def time_interleaved(cases: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                     clock: Clock = time.perf_counter, burst_s: float = 0.0, max_burst: int = 64) -> dict[str, Stats]:
    """`interleaved`, summarised per case; ``burst_s`` > 0 sizes each case's bursts by `calibrate`
    (after the warm-up), so short calls run in bursts of about that many seconds."""
    names = list(cases)
    for name in round_robin(names, max(warmup, 0)):
        cases[name]()
    inner = {n: calibrate(cases[n], burst_s, max_burst, clock) if burst_s > 0 else 1 for n in names}
    samples = interleaved(cases, repeats, 0, clock, inner)
    return {name: Stats.of(s, inner[name]) for name, s in samples.items()}
