"""Rung 5: the decode graph under Polygraphy, an independent harness (see `dartrt.verify`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dartrt.runtime.contract import WRITE_INDEX
from dartrt.runtime.metrics import Tolerance

from .checks import Check, skipped


def polygraphy_check(decode_path: Path, feeds: list[dict], expected: list[dict], providers: Sequence,
                     tolerance: Tolerance) -> Check:
    """Polygraphy's OnnxrtRunner on the real captured step inputs, compared with torch's outputs by
    Polygraphy's own comparator, each output against ``tolerance``'s bound for it (passed as a
    per-output absolute tolerance, rtol 0: the rule's relative part is over the output's range, which
    Polygraphy's elementwise rtol does not express; the tightest bound over the captured steps is used).

    The runner's session comes from dartrt's own loader (`dartrt.runtime.sessions.SessionFromOnnx`, a
    callable as Polygraphy's loaders are), with the backend's providers and their options (TF32 off on
    CUDA): the harness is Polygraphy's, the session settings the runtime's."""
    name, bound = "polygraphy:decode", tolerance.describe()
    try:
        from polygraphy.backend.onnxrt import OnnxrtRunner
        from polygraphy.comparator import Comparator, IterationResult
        from polygraphy.logger import G_LOGGER
    except ImportError as exc:
        return skipped(name, bound, f"polygraphy is not installed ({exc})")
    try:
        from polygraphy.comparator import SimpleCompareFunc
    except ImportError:  # polygraphy < 0.50 has only the factory
        from polygraphy.comparator import CompareFunc

        SimpleCompareFunc = CompareFunc.simple
    if not feeds:
        return skipped(name, bound, "no decode steps were captured")
    import onnxruntime

    from dartrt.runtime.sessions import REFERENCE, SessionFromOnnx

    # Polygraphy feeds past and present as separate buffers, so TensorScatter copies the cache and ORT
    # warns about it on every step; that copy is expected here. The session takes its log level from
    # the default logger when it is created: errors only for this one, then back to ORT's default.
    onnxruntime.set_default_logger_severity(3)
    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
            loader = SessionFromOnnx(Path(decode_path), REFERENCE, tuple(providers))
            runner = OnnxrtRunner(loader, name="onnxrt")
            results = Comparator.run([runner], data_loader=feeds)
    finally:
        onnxruntime.set_default_logger_severity(2)
    names = list(expected[0])
    bounds = {key: min(tolerance.bound(want[key]) for want in expected) for key in names}
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        results.append(("torch", [IterationResult(outputs=o, runner_name="torch") for o in expected]))
        accuracy = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=bounds, rtol=0.0, check_error_stat="max"))
    deviations = [tolerance.judge(ref, np.asarray(got[key]))
                  for got, want in zip(results[0][1], expected) for key, ref in want.items()]
    worst = max(deviations, key=lambda d: d.ratio)
    steps = ", ".join(str(int(f[WRITE_INDEX][0])) for f in feeds)
    detail = (f"OnnxrtRunner(SessionFromOnnx) vs torch on {len(feeds)} captured decode steps (t = {steps}), "
              f"{len(expected[0])} outputs each; Comparator.compare_accuracy "
              f"{'passed' if accuracy else 'FAILED'}")
    return Check(name, worst.max_abs, f"<= {worst.bound:.3g} ({bound})",
                 bool(accuracy) and all(d.ok for d in deviations), detail)


