"""Run two graphs on the same step inputs in onnxruntime (CPU) and measure how far they drift apart.

Every rewriting pass (simplify, FP16) is judged this way on real step inputs, so a pass that changes
the numbers beyond its stated bound is caught where it happens, not three steps later in TensorRT.
Logits get the decoder-specific figures too: KL divergence of the softmax and top-1 agreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dartrt.runtime.contract import LOGITS
from dartrt.runtime.metrics import FP32_STEP, Deviation, Tolerance, kl_divergence, top1_agreement
from dartrt.runtime.sessions import REFERENCE, open_session, run_named

from .feeds import Feed, cast_feed, graph_inputs


@dataclass
class Drift:
    """Worst differences between a candidate graph and its reference over a set of feeds."""

    max_abs: dict[str, float] = field(default_factory=dict)
    logits_kl: float = 0.0
    top1_agreement: float = 1.0
    feeds: int = 0
    tolerance: Tolerance = FP32_STEP
    closest: dict[str, Deviation] = field(default_factory=dict)  # per output: the feed closest to its bound

    @property
    def worst(self) -> float:
        return max(self.max_abs.values(), default=0.0)

    @property
    def within(self) -> bool:
        """Every output of every feed within ``tolerance`` (a changed shape never is)."""
        return all(d.ok for d in self.closest.values())

    def to_dict(self) -> dict:
        return {"max_abs": {k: float(f"{v:.4g}") for k, v in self.max_abs.items()}, "worst_max_abs": float(
            f"{self.worst:.4g}"), "logits_kl": float(f"{self.logits_kl:.4g}"),
            "top1_agreement": round(self.top1_agreement, 6), "feeds": self.feeds}


def compare_graphs(reference: str | Path, candidate: str | Path, feeds: list[Feed],
                   tolerance: Tolerance = FP32_STEP) -> Drift:
    """Max-abs difference per output (cast to float64), judged by ``tolerance``, and for ``logits`` KL and
    top-1 agreement."""
    ref_s, cand_s = open_session(reference, REFERENCE), open_session(candidate, REFERENCE)
    ref_specs, cand_specs = graph_inputs(reference), graph_inputs(candidate)
    drift = Drift(tolerance=tolerance)
    kls, agree, total = [], 0, 0
    for feed in feeds:
        ref_out = run_named(ref_s, cast_feed(feed, ref_specs))
        cand_out = run_named(cand_s, cast_feed(feed, cand_specs))
        for name, want in ref_out.items():
            got = cand_out[name]
            dev = tolerance.judge(want, got) if got.shape == want.shape else Deviation(math.inf, tolerance.atol)
            drift.max_abs[name] = max(drift.max_abs.get(name, 0.0), dev.max_abs)
            if name not in drift.closest or dev.ratio > drift.closest[name].ratio:
                drift.closest[name] = dev
        if LOGITS in ref_out and ref_out[LOGITS].shape == cand_out[LOGITS].shape:
            want, got = ref_out[LOGITS], cand_out[LOGITS]
            kls.append(float(kl_divergence(want, got).mean()))
            agree += int(top1_agreement(want, got).sum())
            total += want[..., 0].size
    drift.feeds = len(feeds)
    drift.logits_kl = max(kls, default=0.0)
    drift.top1_agreement = agree / total if total else 1.0
    return drift
