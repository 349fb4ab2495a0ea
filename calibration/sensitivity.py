"""Which GEMMs cost the most accuracy in INT8, and what keeping them in high precision buys back.

One layer group at a time is quantized (everything else FP32) and compared teacher-forced against
FP32 on the same tokens (`report.compare_logits`). Quantizing one group alone isolates its own error;
the groups whose error is largest are the ones to keep in high precision when the full INT8 graph
misses its target. `tradeoff` then re-quantizes everything but the worst 1, 2, … groups and reports
accuracy against the share of GEMM weight bytes still INT8 (the step-time lever on a memory-bound
decoder). Only the decode graph is swept: it is what runs G*G-1 times per image.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from dartrt.runtime.contract import DECODE
from dartrt.runtime.manifest import Manifest

from .graphinfo import GemmNode, exact, gemm_nodes, head_nodes
from .quantize import QuantizeConfig, quantize_graph
from .report import compare_logits, default_classes, reference_tokens, sig, teacher_forced_logits
from .traceset import load_traces
from .variant_backend import open_variant


@dataclass
class GroupCost:
    group: str
    gemms: int
    weight_share: float  # of the quantizable GEMM weights
    top1_guided: float
    kl_guided: float

    def to_dict(self) -> dict:
        return {"group": self.group, "gemms": self.gemms, "weight_share": sig(self.weight_share),
                "top1_guided": sig(self.top1_guided), "kl_guided": sig(self.kl_guided)}


def decode_groups(model: onnx.ModelProto, by: str = "group") -> dict[str, list[GemmNode]]:
    """Quantizable decode GEMMs (head excluded) grouped by layer (``by='group'``) or by sublayer kind
    across layers (``by='kind'``: wqkv, wo, w1, w2, w3, tok_mlp)."""
    head = set(head_nodes(model))
    groups: dict[str, list[GemmNode]] = {}
    for g in gemm_nodes(model):
        if g.name not in head:
            groups.setdefault(g.group if by == "group" else g.kind, []).append(g)
    return groups


def group_regex(group: str, by: str = "group") -> str:
    """A module-scope regex for a group, for ``QuantizeConfig.keep`` (readable in the manifest)."""
    if by == "kind" and group not in ("tok_mlp", "output", "other"):
        return rf"\.(attention|feed_forward)\.{re.escape(group)}$"
    return rf"^model\.{re.escape(group)}\."


class _Probe:
    """FP32 teacher-forced logits computed once; each candidate graph is compared against them."""

    def __init__(self, pkg: Path, images: int, seed: int) -> None:
        self.pkg = pkg
        self.ref = open_variant(pkg)
        classes = default_classes(self.ref.info.num_classes, images)
        self.request, self.tokens = reference_tokens(self.ref, classes, seed)
        self.ref_logits = teacher_forced_logits(self.ref, self.request, self.tokens)

    def measure(self, decode_file: Path):
        test = open_variant(self.pkg, graph_files={"decode": str(decode_file)})
        return compare_logits(self.ref_logits, teacher_forced_logits(test, self.request, self.tokens), self.request)


def _quantize_and_measure(probe: _Probe, src: Path, cfg: QuantizeConfig, traces):
    with tempfile.TemporaryDirectory(prefix="dartrt-sens-") as work:
        out = Path(work) / "decode.onnx"
        quantize_graph(src, out, "decode", cfg, traces)
        return probe.measure(out)


def sensitivity(pkg: str | Path, cfg: QuantizeConfig, by: str = "group", images: int = 4, seed: int = 0,
                log=print) -> list[GroupCost]:
    """Quantize one group at a time; groups sorted by cost (highest KL first)."""
    pkg = Path(pkg)
    src = Manifest.read(pkg).graph(DECODE).path
    model = onnx.load(str(src), load_external_data=False)
    groups = decode_groups(model, by)
    total = sum(g.weight_elems for nodes in groups.values() for g in nodes) or 1
    traces = load_traces(pkg, "decode") if cfg.calibrated else None
    probe = _Probe(pkg, images, seed)
    costs = []
    for name, nodes in groups.items():
        only = tuple(exact(n.name for n in nodes))
        m = _quantize_and_measure(probe, src, dataclasses.replace(cfg, only=only, keep=()), traces)
        cost = GroupCost(name, len(nodes), sum(n.weight_elems for n in nodes) / total, m.top1_guided, m.kl_guided)
        log(f"    only {name:>10}: top-1 {cost.top1_guided:.4f}, KL {cost.kl_guided:.3g}")
        costs.append(cost)
    return sorted(costs, key=lambda c: (-c.kl_guided, c.top1_guided))


def tradeoff(pkg: str | Path, cfg: QuantizeConfig, costs: list[GroupCost], by: str = "group", max_kept: int = 3,
             images: int = 4, seed: int = 0, log=print) -> list[dict]:
    """Everything INT8 except the ``k`` costliest groups, k = 0..max_kept: accuracy vs INT8 share."""
    pkg = Path(pkg)
    src = Manifest.read(pkg).graph(DECODE).path
    traces = load_traces(pkg, "decode") if cfg.calibrated else None
    probe = _Probe(pkg, images, seed)
    model = onnx.load(str(src), load_external_data=False)
    groups = decode_groups(model, by)
    rows = []
    for k in range(0, min(max_kept, len(costs) - 1) + 1):  # at least one group stays INT8
        kept = [c.group for c in costs[:k]]
        keep = tuple(exact(n.name for g in kept for n in groups.get(g, [])))
        m = _quantize_and_measure(probe, src, dataclasses.replace(cfg, keep=cfg.keep + keep), traces)
        share = 1.0 - sum(c.weight_share for c in costs[:k])
        rows.append({"kept_fp": kept, "int8_weight_share": sig(share), "top1_guided": sig(m.top1_guided),
                     "kl_guided": sig(m.kl_guided)})
        log(f"    keep {kept or 'nothing'}: INT8 share {share:.2f}, top-1 {m.top1_guided:.4f}, KL {m.kl_guided:.3g}")
    return rows
