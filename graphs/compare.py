"""Run two graphs on the same step inputs in onnxruntime (CPU) and measure how far they drift apart.

Every rewriting pass (simplify, FP16) is judged this way on real step inputs, so a pass that changes
the numbers beyond its stated bound is caught where it happens, not three steps later in TensorRT.
Logits get the decoder-specific figures too: KL divergence of the softmax and top-1 agreement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .feeds import Feed, cast_feed, graph_inputs


@dataclass
class Drift:
    """Worst differences between a candidate graph and its reference over a set of feeds."""

    max_abs: dict[str, float] = field(default_factory=dict)
    logits_kl: float = 0.0
    top1_agreement: float = 1.0
    feeds: int = 0

    @property
    def worst(self) -> float:
        return max(self.max_abs.values(), default=0.0)

    def to_dict(self) -> dict:
        return {"max_abs": {k: float(f"{v:.4g}") for k, v in self.max_abs.items()}, "worst_max_abs": float(
            f"{self.worst:.4g}"), "logits_kl": float(f"{self.logits_kl:.4g}"),
            "top1_agreement": round(self.top1_agreement, 6), "feeds": self.feeds}


def cpu_session(path: str | Path):
    """A single-threaded CPU session: the build machine shares its cores, and CPU numbers are
    the reproducible reference."""
    import onnxruntime as ort
    from dartrt.runtime.ort_backend import exact_int8_gemms

    opts = exact_int8_gemms(ort.SessionOptions())  # graphs may be INT8 variants
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(candidate)), in nats."""
    p, q = log_softmax(ref_logits), log_softmax(logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def compare_graphs(reference: str | Path, candidate: str | Path, feeds: list[Feed]) -> Drift:
    """Max-abs difference per output (cast to float64) and, for ``logits``, KL and top-1 agreement."""
    ref_s, cand_s = cpu_session(reference), cpu_session(candidate)
    ref_specs, cand_specs = graph_inputs(reference), graph_inputs(candidate)
    drift = Drift()
    kls, agree, total = [], 0, 0
    for feed in feeds:
        ref_out = dict(zip([o.name for o in ref_s.get_outputs()], ref_s.run(None, cast_feed(feed, ref_specs))))
        cand_out = dict(zip([o.name for o in cand_s.get_outputs()], cand_s.run(None, cast_feed(feed, cand_specs))))
        for name, want in ref_out.items():
            got = cand_out[name]
            if got.shape != want.shape:
                drift.max_abs[name] = float("inf")
                continue
            err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if got.size else 0.0
            drift.max_abs[name] = max(drift.max_abs.get(name, 0.0), err)
        if "logits" in ref_out and ref_out["logits"].shape == cand_out["logits"].shape:
            want, got = ref_out["logits"], cand_out["logits"]
            kls.append(kl_divergence(want, got))
            agree += int((want.argmax(-1) == got.argmax(-1)).sum())
            total += want[..., 0].size
    drift.feeds = len(feeds)
    drift.logits_kl = max(kls, default=0.0)
    drift.top1_agreement = agree / total if total else 1.0
    return drift
