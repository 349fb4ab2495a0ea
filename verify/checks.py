"""The rows of a verification report: what was measured, the bound it must meet, the verdict.

Every rung of the ladder produces `Check` rows; the report and the CLI table are made of them. The
bounds are fp32's (docs/design.md, "The verification ladder"); lower precisions are judged by top-1 agreement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.metrics import FP32_STEP, TOP1_MIN, Tolerance

MIN_PSNR_DB = 60.0  # uint8 images; 60 dB is an RMS error of 0.26 grey levels
__all__ = ["FP32_STEP", "MIN_PSNR_DB", "TOP1_MIN"]


# ---- rows -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One row of the ladder: what was measured (``figure``), the rule it must meet, and the verdict.

    ``figure`` is a plain float (inf for identical images, NaN when nothing was measured) so tests can
    compare it with the bound; ``bound`` is the human-readable rule printed next to it. An ``info`` row
    is measured and shown but judged by nothing (a bound that does not apply at this precision)."""

    name: str
    figure: float
    bound: str
    passed: bool
    detail: str = ""
    unit: str = ""
    skipped: bool = False
    info: bool = False

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped else "INFO" if self.info else ("PASS" if self.passed else "FAIL")

    @property
    def shown(self) -> str:
        return format_figure(self.figure) + (f" {self.unit}" if self.unit else "")

    def to_json(self) -> dict:
        data = asdict(self)
        data["figure"] = _json_number(self.figure)
        data["verdict"] = self.verdict
        return data


def at_most(name: str, figure: float, limit: float, detail: str = "", unit: str = "") -> Check:
    """figure <= limit (a NaN figure fails: an unmeasured number proves nothing)."""
    return Check(name, float(figure), f"<= {format_figure(limit)}{' ' + unit if unit else ''}",
                 bool(figure <= limit), detail, unit)


def at_least(name: str, figure: float, limit: float, detail: str = "", unit: str = "") -> Check:
    return Check(name, float(figure), f">= {format_figure(limit)}{' ' + unit if unit else ''}",
                 bool(figure >= limit), detail, unit)


def skipped(name: str, bound: str, reason: str) -> Check:
    return Check(name, math.nan, bound, True, f"skipped: {reason}", skipped=True)


def info(name: str, figure: float, bound: str, detail: str = "", unit: str = "") -> Check:
    """A figure reported without a verdict (it cannot fail the report)."""
    return Check(name, float(figure), bound, True, detail, unit, info=True)


def format_figure(x: float) -> str:
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if float(x).is_integer() and abs(x) < 1e9:
        return str(int(x))
    return f"{x:.2e}" if abs(x) < 0.01 or abs(x) >= 1e5 else f"{x:.2f}"


def _json_number(x: float):
    """JSON has no inf/NaN: inf is written as the string "inf", NaN (not measured) as null."""
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def format_table(checks: Sequence[Check]) -> str:
    """One row per check: check, figure, bound, PASS/FAIL, then the detail."""
    header = ("check", "figure", "bound", "result", "detail")
    rows = [header] + [(c.name, c.shown, c.bound, c.verdict, c.detail) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(line.rstrip() for line in lines)


@dataclass(frozen=True)
class ParitySettings:
    """How much of the ladder to run. The defaults cover a tiny model in seconds; for a GPT-B-sized
    model on a CPU every torch run of 256 steps costs about 20 s, so scale ``seeds`` with care.

    ``threads`` (None: the libraries' defaults) applies to torch and to the backend's onnxruntime
    sessions alike, so their timings and float summation orders are taken under the same conditions.
    ``order`` overrides the model's scan order (None: the order it was trained with). ``tolerance`` is
    the fp32 rule for step logits and captured outputs (`dartrt.runtime.metrics.Tolerance`)."""

    seeds: int = 2
    classes_per_seed: int = 2
    images: int = 2
    polygraphy_steps: int = 3
    threads: int | None = None
    order: str | None = None
    tolerance: Tolerance = FP32_STEP

    def __post_init__(self) -> None:
        for name in ("seeds", "classes_per_seed", "images"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise DartrtError(f"{name} must be an integer >= 1, got {value}")


@dataclass
class ParityReport:
    package: Path
    backend: str
    device: str
    source: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    precision: str = "fp32"

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> dict:
        return {"package": str(self.package), "backend": self.backend, "device": self.device,
                "precision": self.precision, "source": self.source, "passed": self.passed,
                "seconds": round(self.seconds, 2),
                "checks": [c.to_json() for c in self.checks]}


GraphHook = Callable[[Manifest], Iterable[Check]]


GraphHook = Callable[[Manifest], Iterable[Check]]
