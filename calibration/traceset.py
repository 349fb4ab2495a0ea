"""A stored calibration set: the decoder graphs' real inputs, saved compactly and replayed exactly.

Layout of ``calibration/traces/<graph>.npz`` (one sample = one call of the graph for one image with
CFG, i.e. R = 2 rows: the cond row, then its null-class row, as the runtime orders them):

- step inputs stacked per sample: ``input_ids [N,R,S]``, ``positions [N,R,S,4]``, ``direction [N,R,S]``,
  ``write_index [N,R]``;
- ``adaln_modulation`` once per *image* ``[U,R,9,M]`` plus ``_modulation_index [N]``: the table is fixed
  for a whole image, so storing it per sample would repeat ~0.5 MB (demo) per sample;
- every ``past_key_values.{i}.key|value`` *packed*: sample k's filled slots ``[R,H,fill_k,D]`` are
  concatenated along the slot axis, with ``_fill [N]``. Slots at and beyond ``write_index`` are zeros
  in the reference (a fresh cache per image), so cutting them halves the file on average and
  `TraceSet.sample` rebuilds the exact [R,H,T_max,D] input;
- bookkeeping: ``_image``, ``_class``, ``_step`` and ``_ref_logits [N,R,V]``, the torch reference's
  logits for that call, which `verify_traces` uses to prove that the traces replay through the
  package's FP32 graph (i.e. that they belong to this model).

This module is numpy-only (onnxruntime on demand), so quantizing never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dartrt.runtime.contract import LOGITS, MODULATION, PAST, STEP_INPUTS
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write, read_json_object, sha256_file

from .store import TRACES_DIR

TRACES_FORMAT = "dartrt-traces"
TRACES_VERSION = 2  # 2: positions and direction per row (the graph contract of package format 3)
CACHE_PREFIX = f"{PAST}."
META = ("_image", "_class", "_step", "_fill", "_ref_logits", "_modulation_index")


@dataclass
class Sample:
    """One recorded graph call: its inputs (caches trimmed to ``fill`` slots) and the reference logits."""

    inputs: dict[str, np.ndarray]
    image: int
    class_id: int
    step: int
    fill: int
    ref_logits: np.ndarray


@dataclass
class TraceSet:
    """The recorded calls of one graph, with the full-size graph inputs rebuilt on demand."""

    graph: str
    input_names: tuple[str, ...]
    cache_shape: tuple[int, int, int]  # (H, T_max, D)
    arrays: dict[str, np.ndarray]
    pkg: Path | None = None  # the package it was loaded from (workers reload it instead of pickling)
    _offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        fill = self.arrays["_fill"].astype(np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(fill)])

    def __len__(self) -> int:
        return int(self.arrays["_step"].shape[0])

    @property
    def steps(self) -> np.ndarray:
        return self.arrays["_step"]

    @property
    def classes(self) -> np.ndarray:
        return self.arrays["_class"]

    @property
    def rows(self) -> int:
        return int(self.arrays["write_index"].shape[1])

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """The exact graph feed of call ``i`` (full [R,H,T_max,D] caches, zeros past the filled slots)."""
        feed: dict[str, np.ndarray] = {}
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        for name in self.input_names:
            if name.startswith(CACHE_PREFIX):
                h, t, d = self.cache_shape
                full = np.zeros((self.rows, h, t, d), dtype=np.float32)
                full[:, :, : hi - lo] = self.arrays[name][:, :, lo:hi]
                feed[name] = full
            elif name == MODULATION:
                feed[name] = np.ascontiguousarray(self.arrays[name][int(self.arrays["_modulation_index"][i])])
            else:
                feed[name] = np.ascontiguousarray(self.arrays[name][i])
        return feed

    def feeds(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self.sample(i)

    def reader(self, limit: int | None = None):
        """An onnxruntime/ModelOpt `CalibrationDataReader` over (the first ``limit``) samples."""
        return TraceReader(self, limit)


def _calibration_reader_base():
    try:
        from onnxruntime.quantization import CalibrationDataReader
    except ImportError:  # pragma: no cover - onnxruntime is a hard requirement of calibration
        return object
    return CalibrationDataReader


class TraceReader(_calibration_reader_base()):
    """Feeds one recorded call per ``get_next`` (what ORT's calibrators and ModelOpt iterate).

    ModelOpt's own ``calibration_data`` dict splits every input along axis 0 into equal chunks, which
    cuts one call's rows apart (and its AdaLN table, stored once per image); a reader hands over
    whole, real calls instead. Samples are rebuilt lazily, so only
    one full-size cache set is in memory at a time."""

    def __init__(self, traces: TraceSet, limit: int | None = None) -> None:
        self.traces = traces
        self.order = subsample(traces.steps, limit)
        self.count = len(self.order)
        self.index = 0

    def __len__(self) -> int:
        return self.count

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= self.count:
            return None
        self.index += 1
        return self.traces.sample(int(self.order[self.index - 1]))

    def get_first(self) -> dict[str, np.ndarray]:
        return self.traces.sample(int(self.order[0]))

    def rewind(self) -> None:
        self.index = 0

    def set_range(self, start_index: int, end_index: int) -> None:  # ORT's batched-calibration hook
        self.index = max(0, int(start_index))
        self.count = min(len(self.order), int(end_index))


def subsample(steps: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of ``limit`` samples spread evenly over the step order (all of them if None). Samples
    are stored in recording order (batch by batch, early steps first), so taking the first N would
    calibrate on the start of the sequence only."""
    order = np.argsort(steps, kind="stable")
    if limit is None or limit >= len(order):
        return order
    picks = np.unique(np.linspace(0, len(order) - 1, max(int(limit), 1)).round().astype(np.int64))
    return order[picks]


def pack(samples: list[Sample], input_names: list[str]) -> dict[str, np.ndarray]:
    """Samples → the npz arrays described in the module docstring."""
    if not samples:
        raise DartrtError("no calibration samples were recorded")
    arrays: dict[str, np.ndarray] = {}
    for name in STEP_INPUTS:
        arrays[name] = np.stack([s.inputs[name] for s in samples])
    if MODULATION in input_names:
        images = sorted({s.image for s in samples})
        where = {img: k for k, img in enumerate(images)}
        first = {s.image: s for s in reversed(samples)}
        arrays[MODULATION] = np.stack([first[img].inputs[MODULATION] for img in images]).astype(np.float32)
        arrays["_modulation_index"] = np.array([where[s.image] for s in samples], dtype=np.int64)
    for name in input_names:
        if name.startswith(CACHE_PREFIX):
            arrays[name] = np.concatenate([s.inputs[name] for s in samples], axis=2).astype(np.float32)
    arrays["_image"] = np.array([s.image for s in samples], dtype=np.int64)
    arrays["_class"] = np.array([s.class_id for s in samples], dtype=np.int64)
    arrays["_step"] = np.array([s.step for s in samples], dtype=np.int64)
    arrays["_fill"] = np.array([s.fill for s in samples], dtype=np.int64)
    arrays["_ref_logits"] = np.stack([s.ref_logits for s in samples]).astype(np.float32)
    return arrays


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed on purpose: float32 activations barely deflate, and the zeros are already cut."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write)


def traces_dir(pkg: str | Path) -> Path:
    return Path(pkg) / TRACES_DIR


def load_traces_manifest(pkg: str | Path) -> dict:
    path = traces_dir(pkg) / "manifest.json"
    if not path.is_file():
        raise DartrtError(f"{pkg} has no calibration traces ({path} missing); run `dartrt calibrate` first")
    data = read_json_object(path)
    if data.get("format") != TRACES_FORMAT or data.get("version") != TRACES_VERSION:
        raise DartrtError(f"{path} is not a dartrt traces manifest of version {TRACES_VERSION}; re-record the traces")
    return data


def load_traces(pkg: str | Path, graph: str, check_hash: bool = True) -> TraceSet:
    """The stored traces of ``graph``; the sha256 recorded at write time is checked first."""
    meta = load_traces_manifest(pkg)
    if graph not in meta["graphs"]:
        raise DartrtError(f"the calibration traces of {pkg} have no {graph!r} graph")
    entry = meta["graphs"][graph]
    path = traces_dir(pkg) / entry["file"]
    if not path.is_file():
        raise DartrtError(f"calibration trace file missing: {path}")
    if check_hash and sha256_file(path) != entry["sha256"]:
        raise DartrtError(f"calibration trace file {path} is corrupt or was modified (sha256 mismatch)")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return TraceSet(graph, tuple(entry["inputs"]), tuple(meta["cache_shape"]), arrays, Path(pkg))


def verify_traces(traces: TraceSet, graph_path: Path, count: int = 2, atol: float = 1e-3) -> float:
    """Replay the first ``count`` samples through an FP32 graph: its logits must be the reference's.

    This is what ties a trace set to a package: traces recorded from a different checkpoint (or with
    a mis-built cache) fail here with a clear error instead of silently calibrating wrong ranges."""
    from dartrt.runtime.sessions import REFERENCE, open_session

    session = open_session(graph_path, REFERENCE)
    worst = 0.0
    for i in range(min(count, len(traces))):
        logits = session.run([LOGITS], traces.sample(i))[0][:, -1]
        worst = max(worst, float(np.abs(logits - traces.arrays["_ref_logits"][i]).max()))
    if not worst <= atol:
        raise DartrtError(f"the {traces.graph} traces do not replay through {graph_path.name} (max-abs {worst:.3g} > "
                          f"{atol:g}): they were recorded from another model; re-record them with the package's "
                          "checkpoint (--source)")
    return worst
