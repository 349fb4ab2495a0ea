"""Graph passes between export and the TensorRT build: check → simplify → (fp16) → op-support report.

`prepare(pkg_dir, precision)` chains them and records the results in the package manifest;
`build_engine` (graphs.trt_build) turns a prepared graph into a TensorRT engine. Heavy dependencies
(onnxslim, ModelOpt, TensorRT) are imported by the pass that needs them, not here.
"""

from .prepare import PrepareReport, prepare
from .trt_support import SupportRow, report, summarize

__all__ = ["PrepareReport", "SupportRow", "prepare", "report", "summarize"]
