"""A D-AR package on onnxruntime: the AR pair as an `OrtBackend`, the tokenizer's graphs as `TokenizerGraphs`.

The conditions graph keeps its KV cache the way the AR graphs do (`dartrt.runtime.ort_backend`): each
layer's key and value cache is one OrtValue per stream, bound both as ``past_key_values.{i}.*`` and as
``present.{i}.*``, so ``TensorScatter`` writes only the new slots. The velocity graph has no state; it runs
with plain numpy feeds (x, s, one group's conditions), since its inputs change entirely every call.
Sessions come from `dartrt.runtime.sessions`, as every session in dartrt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .contract import (
    COND,
    CONDITIONS,
    DECODE,
    PAST,
    PREFILL,
    PRESENT,
    VELOCITY,
    VELOCITY_OUT,
    cache_names,
    conditions_feed,
    d_ar_graph_io,
    velocity_feed,
)
from .d_ar_spec import DARSpec
from .errors import DartrtError
from .manifest import Manifest
from .ort_backend import OrtBackend, check_io
from .sessions import RUNTIME, open_graph_sessions


class OrtARBackend(OrtBackend):
    """D-AR's GPT on onnxruntime: prefill and decode only (the images come from the tokenizer's graphs)."""

    GRAPHS = (PREFILL, DECODE)

    def decode_vq(self, grids: np.ndarray) -> np.ndarray:
        raise DartrtError("a D-AR package has no VQ decoder: its tokens decode by diffusion (dartrt.runtime.decode)")


class OrtTokenizerGraphs:
    """``conditions`` and ``velocity`` of a D-AR package on onnxruntime (see the module doc)."""

    name = "onnxruntime"

    def __init__(self, manifest: Manifest, spec: DARSpec, device: str = "auto", intra_op_threads: int | None = None,
                 optimization: str = "all", log_severity: int = 3, graph_files: dict[str, Path] | None = None,
                 cuda_tf32: bool = False, spinning: bool | None = None) -> None:
        self.spec = spec
        self.profile = RUNTIME.but(threads=intra_op_threads, optimization=optimization, log_severity=log_severity,
                                   spinning=spinning)
        paths = {g: Path((graph_files or {}).get(g) or manifest.graph(g).path) for g in (CONDITIONS, VELOCITY)}
        opened = open_graph_sessions(paths, self.profile, device, cuda_tf32)
        self.sessions: dict[str, ort.InferenceSession] = opened.sessions
        for graph, path in paths.items():
            check_io(self.sessions[graph], path, d_ar_graph_io(graph, spec.cond_layers))
        self.device = opened.device
        past = cache_names(spec.cond_layers, PAST)
        types = {i.name: i.type for i in self.sessions[CONDITIONS].get_inputs()}
        self.cache_dtype = np.float16 if past and types[past[0]] == "tensor(float16)" else np.float32
        self._io = self.sessions[CONDITIONS].io_binding()

    def new_cache(self, rows: int) -> list[ort.OrtValue]:
        """One zeroed OrtValue per layer and kind, [rows, heads, num_tokens, head_dim]."""
        shape = (rows, *self.spec.cache_shape)
        caches = []
        for _ in range(2 * self.spec.cond_layers):
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), self.cache_dtype, self.device, 0)
            value.update_inplace(np.zeros(shape, dtype=self.cache_dtype))
            caches.append(value)
        return caches

    def conditions(self, cache: list[ort.OrtValue], ids: np.ndarray, write_index: int) -> np.ndarray:
        io = self._io
        feed = conditions_feed(ids, write_index)
        if feed["write_index"][0] + ids.shape[1] > self.spec.num_tokens:
            raise DartrtError(f"tokens up to slot {int(write_index) + ids.shape[1]} exceed the conditions cache "
                              f"({self.spec.num_tokens} slots)")
        for name, arr in feed.items():
            io.bind_cpu_input(name, arr)
        for name, value in zip(cache_names(self.spec.cond_layers, PAST), cache):
            io.bind_ortvalue_input(name, value)
        for name, value in zip(cache_names(self.spec.cond_layers, PRESENT), cache):
            io.bind_ortvalue_output(name, value)
        out = ort.OrtValue.ortvalue_from_shape_and_type([ids.shape[0], ids.shape[1], self.spec.cond_dim], np.float32,
                                                        self.device, 0)
        io.bind_ortvalue_output(COND, out)
        io.synchronize_inputs()
        self.sessions[CONDITIONS].run_with_iobinding(io)
        io.synchronize_outputs()
        io.clear_binding_inputs()
        io.clear_binding_outputs()
        return np.array(out.numpy(), dtype=np.float32)

    def velocity(self, x: np.ndarray, s, cond: np.ndarray) -> np.ndarray:
        return self.sessions[VELOCITY].run([VELOCITY_OUT], velocity_feed(x, s, cond))[0]
