"""`dartrt verify`: the verification ladder of a package's backend against the PyTorch reference that produced it.

Each rung answers a different question, so each has its own figure and bound (docs/design.md,
"The verification ladder"):

1. graph: every ONNX file passes ``onnx.checker`` and strict shape inference, and its I/O matches
   the manifest (more graph rows, such as a TensorRT op-support report, come in via ``extra_checks``);
2. step: teacher-forced logits at every one of the G*G steps, CFG rows included. The reference and the
   backend run in lockstep on identical inputs, and the tokens are sampled from the reference's own
   logits, so the caches hold a realistic sequence rather than random ids;
3. sequence: with the same seed each backend generates on its own (greedy, and plain sampling);
   the token grids must be identical, because a single flipped token changes everything after it;
4. image: the backend's VQ decode of the reference's grids against torch's decode of the same grids
   (uint8 PSNR; identical images give inf);
5. polygraphy: the decode graph under Polygraphy's own onnxruntime runner, fed the real step inputs
   captured during rung 2, against the outputs torch computed for them. It is an independent harness:
   no dartrt binding, cache aliasing or scheduler between the file and the comparison.

The bounds above are fp32's. A lower precision (``verify --precision fp16`` / an INT8 calibration
variant, or a TensorRT fp16/int8 engine) cannot meet them, so it is judged by one stated tolerance
instead: teacher-forced top-1 agreement with the reference, every step and row, >= TOP1_MIN (the target
`dartrt calibrate` reports INT8 against). The fp32 figures are still measured and shown as INFO rows
(max |Δlogit|; the share of identical tokens, which docs/design.md reports, not bounds), the
image rung keeps its bound (the VQ decoder stays fp32 in every precision), and the Polygraphy rung,
whose only bound is fp32's, is skipped.
"""

from .checks import FP32_STEP, MIN_PSNR_DB, Check, ParityReport, ParitySettings, format_table
from .ladder import run_ladder, verify_package
from .rungs import graph_checks

__all__ = ["FP32_STEP", "MIN_PSNR_DB", "Check", "ParityReport", "ParitySettings", "format_table", "graph_checks",
           "run_ladder", "verify_package"]
