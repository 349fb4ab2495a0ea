"""What a quantization recipe is: its format, calibration method, what stays in high precision, and the
records it leaves (the formats themselves are described in `dartrt.calibration.quantize`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx

from dartrt.runtime.contract import DECODER_GRAPHS, PREFILL
from dartrt.runtime.errors import DartrtError

from .graphinfo import gemm_nodes, head_nodes, modulation_nodes, scope_matches

FORMATS = ("qdq", "qdq-ort", "dynamic", "weight-only", "fp8", "int4-awq", "fp16")
MODELOPT_FORMATS = ("qdq", "fp8", "int4-awq", "fp16")
VARIANTS = {"qdq": "int8", "qdq-ort": "int8-ort", "dynamic": "int8-dynamic", "weight-only": "int8-wo",
            "fp8": "fp8", "int4-awq": "int4-awq", "fp16": "fp16"}
METHODS = ("entropy", "max")
HIGH_PRECISIONS = ("fp32", "fp16")
FP16_REST = ("qdq", "fp8")  # formats ModelOpt can write with the non-quantized rest in fp16
GRAPHS = DECODER_GRAPHS
WO_BLOCK = 128
INT4_METHOD = "awq_clip"
INT4_BLOCKS = (128, 64, 32, 16)  # ModelOpt's default first; smaller only where K needs it
# OrtBackend options the quality report opens a variant with (see dartrt.calibration.quantize, int4-awq):
# at the default level ORT fuses INT4 DQ+MatMul into MatMulNBits with int8 activations.
REPORT_SESSION_OPTIONS: dict[str, dict] = {"int4-awq": {"optimization": "basic"}}
LOW_LABEL = {"fp8": "FP8", "int4-awq": "INT4", "fp16": "FP16"}  # what the quantized GEMMs are, for logs
FP16_FEEDS = 16  # traced calls AutoCast runs to find values beyond fp16's safe range



@dataclass(frozen=True)
class QuantizeConfig:
    """One INT8 recipe. ``keep``: extra module-scope regexes kept in high precision (e.g. ``layers\\.5\\.``);
    ``only``: quantize only GEMMs matching these (the sensitivity sweep); ``samples``: cap on the
    calibration samples used (None = all recorded)."""

    format: str = "qdq"
    method: str = "max"
    high_precision: str = "fp32"
    keep: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    keep_head: bool = True
    samples: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DartrtError(f"unknown --format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.method not in METHODS:
            raise DartrtError(f"unknown --method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.high_precision not in HIGH_PRECISIONS:
            raise DartrtError(f"high precision must be one of {', '.join(HIGH_PRECISIONS)}")
        if self.high_precision == "fp16" and self.format not in (*FP16_REST, "fp16"):
            raise DartrtError(f"--high-precision fp16 is for the TensorRT Q/DQ formats ({', '.join(FP16_REST)}), "
                              f"not {self.format}")
        if self.samples is not None and self.samples < 1:
            raise DartrtError(f"--samples must be >= 1, got {self.samples}")

    @property
    def variant(self) -> str:
        base = VARIANTS[self.format]
        return f"{base}-fp16" if self.format in FP16_REST and self.high_precision == "fp16" else base

    @property
    def calibrated(self) -> bool:
        """Whether the format reads the traces (activation ranges, AWQ clipping, AutoCast's feeds)."""
        return self.format in ("qdq", "qdq-ort", "fp8", "int4-awq", "fp16")

    @property
    def method_used(self) -> str | None:
        """The calibration method the format really applies (recorded in the manifest)."""
        if self.format in ("qdq", "qdq-ort", "fp8"):
            return self.method
        return INT4_METHOD if self.format == "int4-awq" else None

    @property
    def rest_dtype(self) -> str:
        """Dtype of what the format leaves unquantized (fp16 graphs: everything but the FP32 islands)."""
        return "fp16" if self.format == "fp16" else self.high_precision


@dataclass
class QuantizedGraph:
    """One written graph and what the recipe did to it."""

    graph: str
    file: str  # package-relative
    quantized: list[str]
    excluded: list[str]
    excluded_op_types: list[str]
    weight_bytes: dict[str, int]
    samples: int
    seconds: float
    details: dict = field(default_factory=dict)  # format specifics: layout read off the graph, block size, ...


@dataclass
class Variant:
    name: str
    config: QuantizeConfig
    graphs: dict[str, QuantizedGraph] = field(default_factory=dict)

    @property
    def graph_files(self) -> dict[str, str]:
        return {g: q.file for g, q in self.graphs.items()}

    def to_dict(self) -> dict:
        return {"format": self.config.format, "method": self.config.method_used,
                "high_precision_dtype": self.config.rest_dtype, "keep": list(self.config.keep),
                "only": list(self.config.only), "keep_head": self.config.keep_head,
                "tool": tool_version(self.config.format),
                "graphs": {g: asdict(q) for g, q in self.graphs.items()}}


def tool_version(fmt: str) -> str:
    if fmt in MODELOPT_FORMATS:
        from importlib.metadata import version

        return f"nvidia-modelopt {version('nvidia-modelopt')}"
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def plan_exclusions(model: onnx.ModelProto, graph: str, cfg: QuantizeConfig) -> tuple[list[str], list[str]]:
    """(GEMM nodes to quantize, GEMM nodes kept in high precision) under the recipe."""
    names = [g.name for g in gemm_nodes(model)]
    keep = set(scope_matches(model, cfg.keep)) if cfg.keep else set()
    if cfg.keep_head:
        keep |= set(head_nodes(model))
    if graph == PREFILL:
        keep |= set(modulation_nodes(model))
    if cfg.only:
        chosen = set(scope_matches(model, cfg.only))
        keep |= {n for n in names if n not in chosen}
    return [n for n in names if n not in keep], [n for n in names if n in keep]


def int4_block_size(model: onnx.ModelProto, names: list[str]) -> tuple[int, list[str]]:
    """(block size, GEMMs it cannot block): the first of `INT4_BLOCKS` that divides the K of every
    GEMM in ``names`` with K >= 16, and the GEMMs whose K that block does not divide (kept fp32)."""
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    k = {g.name: int(dims[g.weight][0]) for g in gemm_nodes(model)
         if g.name in names and g.op_type == "MatMul" and len(dims.get(g.weight, [])) == 2}
    wide = [v for v in k.values() if v >= INT4_BLOCKS[-1]]
    block = next((b for b in INT4_BLOCKS if all(v % b == 0 for v in wide)), INT4_BLOCKS[-1])
    return block, [n for n in names if n not in k or k[n] % block]


def fp16_pins(model: onnx.ModelProto, cfg: QuantizeConfig) -> list[str]:
    """GEMMs an fp16 variant keeps in FP32 on top of `graphs.fp16`'s own islands (which already hold
    the logits head): the ``keep`` scopes, and with ``only`` every GEMM not chosen."""
    pinned = set(scope_matches(model, cfg.keep)) if cfg.keep else set()
    if cfg.only:
        chosen = set(scope_matches(model, cfg.only))
        pinned |= {g.name for g in gemm_nodes(model) if g.name not in chosen}
    return [g.name for g in gemm_nodes(model) if g.name in pinned]


