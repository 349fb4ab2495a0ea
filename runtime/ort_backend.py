"""ONNX Runtime as a `Backend` (CPU or CUDA EP), with the KV cache updated in place via IOBinding.

Why IOBinding: a plain ``session.run`` would copy every layer's [R, H, T, D] cache in and out on every
step. Here each layer's key and value cache is one OrtValue allocated per batch, bound both as the
graph input ``past_key_values.{i}.*`` and as the graph output ``present.{i}.*``; the graph's
``TensorScatter`` then sees its output buffer is its input buffer and writes only the new slot. Bound
to separate buffers, ORT logs "in-place optimization not activated" and copies the whole cache.
The AdaLN table that prefill returns stays an OrtValue on the device and is bound as a decode input
once per batch, so per step only the token ids, positions, direction and write index go in and the
last position's logits come out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .backend import ModelInfo, check_step_rows
from .contract import (
    DECODE,
    IMAGE,
    LOGITS,
    MODULATION,
    PAST,
    PREFILL,
    PRESENT,
    TOKEN_GRID,
    VQ_DECODER,
    GraphIO,
    cache_names,
    graph_io,
    step_feed,
)
from .errors import DartrtError
from .images import to_uint8
from .manifest import Manifest
from .sessions import RUNTIME, io_names, open_graph_sessions


def check_io(session: ort.InferenceSession, path: Path, io: GraphIO) -> None:
    """The graph must take exactly what the backend feeds and return what it reads."""
    have_in, have_out = io_names(session)
    missing = [n for n in io.inputs if n not in have_in] + [n for n in io.outputs if n not in have_out]
    if missing:
        raise DartrtError(f"{path} lacks the graph I/O {', '.join(missing[:4])}"
                          f"{' …' if len(missing) > 4 else ''}; it was not exported by this dartrt, re-export it")
    extra = [n for n in have_in if n not in io.inputs]
    if extra:
        raise DartrtError(f"{path} has inputs this runtime does not feed ({', '.join(extra[:4])}); "
                          "re-export the package with this dartrt")


class OrtBackend:
    """A package's prefill/decode/vq_decoder graphs on onnxruntime; ``device`` is what ORT really uses."""

    name = "onnxruntime"
    # The graphs opened; a D-AR package has no VQ decoder (`dartrt.runtime.d_ar_ort` opens only the AR pair).
    GRAPHS: tuple[str, ...] = (PREFILL, DECODE, VQ_DECODER)

    def __init__(self, manifest: Manifest, device: str = "auto", intra_op_threads: int | None = None,
                 optimization: str = "all", log_severity: int = 3, alias_cache: bool = True,
                 graph_files: dict[str, Path] | None = None, cuda_tf32: bool = False,
                 spinning: bool | None = None) -> None:
        """``device``: auto (CUDA when it really starts, else the CPU), cpu or cuda. ``graph_files``
        overrides a graph's file (the FP16 or INT8 form of decode/prefill, say); ``cuda_tf32`` lets the
        CUDA EP use TF32; ``spinning`` False keeps idle workers from spinning (see `dartrt.runtime.sessions`)."""
        self.manifest = manifest
        self.info: ModelInfo = manifest.info
        model = manifest.data["model"]
        kv = manifest.kv_cache
        self.n_layer = int(kv.get("layers", model.get("n_layer", 0)))
        self.cache_shape = (int(kv.get("heads", model.get("n_head", 0))),
                            int(kv.get("max_len", self.info.seq_len)),
                            int(kv.get("head_dim", model.get("head_dim", 0))))
        self.adaln = manifest.adaln_width is not None or bool(model.get("adaln", False))
        self.alias_cache = alias_cache
        self.profile = RUNTIME.but(threads=intra_op_threads, optimization=optimization, log_severity=log_severity,
                                   spinning=spinning)
        paths = {g: Path((graph_files or {}).get(g) or manifest.graph(g).path) for g in self.GRAPHS}
        opened = open_graph_sessions(paths, self.profile, device, cuda_tf32)
        self.sessions: dict[str, ort.InferenceSession] = opened.sessions
        for graph, path in paths.items():
            check_io(self.sessions[graph], path, graph_io(graph, self.n_layer, self.adaln))
        self._check_shapes()
        past = cache_names(self.n_layer, PAST)
        # The cache dtype is the graph's: FP16 graphs keep their KV cache in fp16 (half the bytes).
        past_type = {i.name: i.type for i in self.sessions[DECODE].get_inputs()}[past[0]]
        self.cache_dtype = np.float16 if past_type == "tensor(float16)" else np.float32
        self.providers = self.sessions[DECODE].get_providers()
        self.provider_specs = opened.provider_specs  # a second session (Polygraphy's) asks for the same
        self.device = opened.device
        if self.adaln and manifest.adaln_width is None:
            out = {o.name: o.shape for o in self.sessions[PREFILL].get_outputs()}
            self.mod_width = int(out[MODULATION][-1])
        else:
            self.mod_width = manifest.adaln_width or 0
        self._io = {g: self.sessions[g].io_binding() for g in (PREFILL, DECODE)}
        self._rows = 0
        self._caches: list[ort.OrtValue] = []
        self._spare: list[ort.OrtValue] = []  # only when alias_cache=False: the other half of a ping-pong
        self._modulation: ort.OrtValue | None = None
        self._logits: dict[tuple[int, ...], ort.OrtValue] = {}
        self._keep: list[np.ndarray] = []  # host arrays bound by pointer must outlive the run

    def _check_shapes(self) -> None:
        """The manifest's model entry must describe these graphs: a package whose manifest and graphs
        disagree (a buggy writer, files from two packages) is refused by name before anything runs."""
        def static(values, name):
            shape = next(v.shape for v in values if v.name == name)
            return [d if isinstance(d, int) else None for d in shape]

        decode = self.sessions[DECODE]
        want = {"logits vocabulary": (static(decode.get_outputs(), LOGITS)[-1], self.info.vocab_size),
                "KV cache [heads, slots, head_dim]": (static(decode.get_inputs(), cache_names(1, PAST)[0])[1:],
                                                      list(self.cache_shape))}
        if VQ_DECODER in self.sessions:
            want["token grid"] = (static(self.sessions[VQ_DECODER].get_inputs(), TOKEN_GRID)[1:],
                                  [self.info.grid_size, self.info.grid_size])
        for what, (graph, manifest) in want.items():
            if graph != manifest and None not in (graph if isinstance(graph, list) else [graph]):
                raise DartrtError(f"{self.manifest.root}: the manifest says {what} {manifest}, the graphs have "
                                  f"{graph}; the package is inconsistent, re-export it")

    # ---- buffers ----------------------------------------------------------------------------------
    def _zeros(self, shape: tuple[int, ...], dtype=np.float32) -> ort.OrtValue:
        """A device OrtValue filled with zeros: stale slots are masked, but 0·NaN would still be NaN."""
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.device, 0)
        value.update_inplace(np.zeros(shape, dtype=dtype))
        return value

    def _allocate(self, rows: int) -> None:
        """Caches (and the AdaLN table) for a batch of ``rows``; reused while the batch size holds."""
        if rows == self._rows:
            return
        shape = (rows, *self.cache_shape)
        self._caches = [self._zeros(shape, self.cache_dtype) for _ in range(2 * self.n_layer)]
        self._spare = [] if self.alias_cache else [self._zeros(shape, self.cache_dtype)
                                                   for _ in range(2 * self.n_layer)]
        self._modulation = self._zeros((rows, 9, self.mod_width)) if self.adaln else None
        self._logits = {}
        self._rows = rows

    def _logits_buffer(self, shape: tuple[int, ...]) -> ort.OrtValue:
        if shape not in self._logits:
            self._logits[shape] = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device, 0)
        return self._logits[shape]

    def _bind_caches(self, io: ort.IOBinding) -> None:
        """past ← the live caches; present ← the same OrtValues (in place) or the spares (ping-pong)."""
        outs = self._caches if self.alias_cache else self._spare
        for i, name in enumerate(cache_names(self.n_layer, PAST)):
            io.bind_ortvalue_input(name, self._caches[i])
        for i, name in enumerate(cache_names(self.n_layer, PRESENT)):
            io.bind_ortvalue_output(name, outs[i])

    def _bind_step(self, io: ort.IOBinding, ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
                   write_index: int) -> None:
        feed = step_feed(ids, positions, direction, write_index)
        self._keep = list(feed.values())
        for name, arr in feed.items():
            io.bind_cpu_input(name, arr)

    def _run(self, graph: str, logits_shape: tuple[int, ...]) -> np.ndarray:
        io = self._io[graph]
        logits = self._logits_buffer(logits_shape)
        io.bind_ortvalue_output(LOGITS, logits)
        io.synchronize_inputs()
        self.sessions[graph].run_with_iobinding(io)
        io.synchronize_outputs()
        self.swap_caches()
        return np.array(logits.numpy()[:, -1], dtype=np.float32)

    def swap_caches(self) -> None:
        """After a call that wrote the caches: without aliasing, the spares now hold them (ping-pong)."""
        if not self.alias_cache:
            self._caches, self._spare = self._spare, self._caches
            self._bind_caches(self._io[DECODE])

    # ---- Backend protocol ---------------------------------------------------------------------------
    def prefill(self, class_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray) -> np.ndarray:
        rows = len(class_ids)
        self._allocate(rows)
        io = self._io[PREFILL]
        self._bind_step(io, np.asarray(class_ids).reshape(rows, 1), positions, direction,
                        0)
        self._bind_caches(io)
        if self.adaln:
            io.bind_ortvalue_output(MODULATION, self._modulation)
        logits = self._run(PREFILL, (rows, 1, self.info.vocab_size))
        decode = self._io[DECODE]
        self._bind_caches(decode)
        if self.adaln:
            decode.bind_ortvalue_input(MODULATION, self._modulation)
        return logits

    def step(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
             write_index: int) -> np.ndarray:
        rows, seq = token_ids.shape
        check_step_rows(rows, self._rows)
        io = self._io[DECODE]
        self._bind_step(io, token_ids, positions, direction, int(write_index))
        return self._run(DECODE, (rows, seq, self.info.vocab_size))

    def decode_vq(self, grids: np.ndarray) -> np.ndarray:
        image = self.sessions[VQ_DECODER].run([IMAGE], {TOKEN_GRID: np.ascontiguousarray(grids, dtype=np.int64)})
        return to_uint8(image[0])

    # ---- adaptive order and editing (runtime.adaptive): graphs opened on first use (runtime.ort_adaptive) --
    def score_candidates(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
                         write_index: int) -> np.ndarray:
        """The last token [R, 1] at slot write_index with C candidate next cells → logits [R, C, V]."""
        check_step_rows(len(token_ids), self._rows)
        return self.adaptive_graphs().score(token_ids, positions, direction, write_index)

    def commit(self, choice: np.ndarray, write_index: int) -> None:
        """Write candidate choice[r]'s K/V rows of the last scoring call at slot write_index, in place."""
        self.adaptive_graphs().commit(choice, write_index)

    def encode_vq(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [B, H, W, 3] → token grids [B, G, G] (the package's VQ encoder graph)."""
        if getattr(self, "_encoder", None) is None:
            from .ort_adaptive import OrtEncoder

            self._encoder = OrtEncoder(self)
        return self._encoder.encode(images)

    def adaptive_graphs(self):
        """The candidates and commit graphs, opened once (one line if the package lacks them)."""
        if getattr(self, "_candidate_graphs", None) is None:
            from .ort_adaptive import OrtCandidateGraphs

            self._candidate_graphs = OrtCandidateGraphs(self)
        return self._candidate_graphs

    # ---- introspection (tests, bench) -----------------------------------------------------------------
    def cache_arrays(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of one layer's live (key, value) caches [R, H, T, D]."""
        return self._caches[2 * layer].numpy().copy(), self._caches[2 * layer + 1].numpy().copy()
