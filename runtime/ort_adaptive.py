"""The adaptive-order graphs on onnxruntime: candidate scoring and the in-place commit (docs/oar.md).

Opened on first use by `OrtBackend` (a package exported without them still runs every fixed order). The
candidates graph reads the backend's live caches and AdaLN table, bound as OrtValues, and returns its
logits and every layer's candidate K/V rows [R, H, C, D] as OrtValues that onnxruntime allocates on the
backend's device; those rows are bound as inputs of the commit graph, whose ``present.{i}.*`` outputs
are bound to the same cache OrtValues as its ``past_key_values.{i}.*`` inputs, so ``TensorScatter``
writes one [R, H, 1, D] row per cache in place. Only the logits cross to the host; the rows never do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .contract import (
    ADAPTIVE_GRAPHS,
    CANDIDATE,
    CANDIDATES,
    CHOICE,
    COMMIT,
    IMAGE,
    LOGITS,
    MODULATION,
    PAST,
    PRESENT,
    TOKEN_GRID,
    VQ_ENCODER,
    WRITE_INDEX,
    cache_names,
    graph_io,
    step_feed,
)
from .errors import DartrtError
from .sessions import SessionFromOnnx


def _missing_graph(backend, graph: str, what: str, how: str) -> DartrtError:
    root = backend.manifest.root
    return DartrtError(f"{root} has no {graph!r} graph, so it cannot {what}; {how}")


class OrtCandidateGraphs:
    """The candidates and commit graphs of ``backend``'s package, run against its caches."""

    def __init__(self, backend) -> None:
        from .ort_backend import check_io

        self.backend = backend
        graphs = backend.manifest.data["graphs"]
        for graph in ADAPTIVE_GRAPHS:
            if graph not in graphs:
                raise _missing_graph(backend, graph, "run an adaptive order",
                                     "it was exported without the adaptive-order graphs (they come with models "
                                     "trained for any order); re-export it with them: dartrt export SOURCE -o "
                                     f"{backend.manifest.root} --force --adaptive")
        self.sessions: dict[str, ort.InferenceSession] = {}
        for graph in ADAPTIVE_GRAPHS:
            path = Path(backend.manifest.graph(graph).path)
            session = SessionFromOnnx(path, backend.profile, tuple(backend.provider_specs))()
            check_io(session, path, graph_io(graph, backend.n_layer, backend.adaln))
            self.sessions[graph] = session
        self._io = {g: s.io_binding() for g, s in self.sessions.items()}
        self._rows: list[ort.OrtValue] = []  # the last scoring call's candidate K/V rows, on the device
        self._keep: list[np.ndarray] = []

    def score(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
              write_index: int) -> np.ndarray:
        b = self.backend
        io = self._io[CANDIDATES]
        feed = step_feed(token_ids, positions, direction, write_index)
        self._keep = list(feed.values())
        for name, arr in feed.items():
            io.bind_cpu_input(name, arr)
        if b.adaln:
            io.bind_ortvalue_input(MODULATION, b._modulation)
        for value, name in zip(b._caches, cache_names(b.n_layer, PAST)):
            io.bind_ortvalue_input(name, value)
        for name in (LOGITS, *cache_names(b.n_layer, CANDIDATE)):
            io.bind_output(name, b.device)
        io.synchronize_inputs()
        self.sessions[CANDIDATES].run_with_iobinding(io)
        io.synchronize_outputs()
        outputs = io.get_outputs()
        self._rows = list(outputs[1:])
        return np.array(outputs[0].numpy(), dtype=np.float32)

    def commit(self, choice: np.ndarray, write_index: int) -> None:
        b = self.backend
        if not self._rows:
            raise DartrtError("commit before any candidates were scored")
        io = self._io[COMMIT]
        rows = len(choice)
        self._keep = [np.ascontiguousarray(choice, dtype=np.int64),
                      np.full(rows, int(write_index), dtype=np.int64)]
        io.bind_cpu_input(CHOICE, self._keep[0])
        io.bind_cpu_input(WRITE_INDEX, self._keep[1])
        for value, name in zip(self._rows, cache_names(b.n_layer, CANDIDATE)):
            io.bind_ortvalue_input(name, value)
        outs = b._caches if b.alias_cache else b._spare
        for value, name in zip(b._caches, cache_names(b.n_layer, PAST)):
            io.bind_ortvalue_input(name, value)
        for value, name in zip(outs, cache_names(b.n_layer, PRESENT)):
            io.bind_ortvalue_output(name, value)
        io.synchronize_inputs()
        self.sessions[COMMIT].run_with_iobinding(io)
        io.synchronize_outputs()
        b.swap_caches()


class OrtEncoder:
    """The package's VQ encoder graph: uint8 images → token grids (editing from images)."""

    def __init__(self, backend) -> None:
        if VQ_ENCODER not in backend.manifest.data["graphs"]:
            raise _missing_graph(backend, VQ_ENCODER, "turn an image into tokens",
                                 "its checkpoint had no VQ encoder (vq_encoder.safetensors); give the known "
                                 "tokens as a token grid instead (--tokens)")
        path = Path(backend.manifest.graph(VQ_ENCODER).path)
        self.session = SessionFromOnnx(path, backend.profile, tuple(backend.provider_specs))()

    def encode(self, images: np.ndarray) -> np.ndarray:
        from .images import from_uint8

        return self.session.run([TOKEN_GRID], {IMAGE: from_uint8(images)})[0].astype(np.int64)
