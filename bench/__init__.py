"""`dartrt bench`: the latency suite (torch reference vs onnxruntime, interleaved, next to the roofline).

Why a package of its own: the runtime stays numpy-only and never imports torch, while the bench must
time the torch reference and the runtime in the same process, on the same model, in the same minute.
`run_bench` is imported lazily so that `bench.roofline` and `bench.timing` stay cheap to import.
"""

from __future__ import annotations

__all__ = ["run_bench"]


def __getattr__(name: str):
    if name == "run_bench":
        from .suite import run_bench

        return run_bench
    raise AttributeError(name)
