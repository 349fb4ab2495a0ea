"""Scratch copies of graphs for the quantizers, and keeping their chatter quiet.

The quantizers write intermediates next to their input, and the package folder must only ever receive
finished files, so every quantizer works on a staged copy in a scratch folder.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from pathlib import Path

import onnx


@contextlib.contextmanager
def quiet():
    """ModelOpt and ORT's calibrators print progress bars and per-call warnings (e.g. TensorScatter's
    'in-place optimization not activated', expected: the calibrator does not alias caches)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    loggers = [logging.getLogger(n) for n in ("", "onnxruntime", "onnxruntime.quantization", "modelopt")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
            ort.set_default_logger_severity(2)


def stage(src: Path, work: Path) -> Path:
    """Copy a graph and its external data into a scratch folder: the quantizers write intermediates
    next to their input, and the package folder must only ever receive finished files."""
    for f in src.parent.iterdir():
        if f.name == src.name or f.name.startswith(src.name + "."):
            shutil.copyfile(f, work / f.name)
    return work / src.name


def has_external_data(model_path: Path) -> bool:
    proto = onnx.load(str(model_path), load_external_data=False)
    return any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer)


PROTOBUF_LIMIT = 2**31 - 1


def write_external(src: Path) -> bool:
    """Whether a quantized copy of ``src`` must use external data. The exporter moves weights out of the
    graph above 1 GiB (DAR-B's fp32 graphs), but a lower-precision copy of a graph under the 2 GB
    protobuf limit always fits inline, and inline is what `dartrt.calibration.quantize` accepts; only
    sources at or above the limit (graph file plus its data files) still need external data, which is
    refused for now."""
    if not has_external_data(src):
        return False
    total = sum(f.stat().st_size for f in src.parent.iterdir()
                if f.name == src.name or f.name.startswith(src.name + "."))
    return total >= PROTOBUF_LIMIT


