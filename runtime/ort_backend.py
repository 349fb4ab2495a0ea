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

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .backend import ModelInfo
from .errors import DartrtError
from .images import to_uint8
from .manifest import Manifest

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
STEP_INPUTS = ("input_ids", "positions", "direction", "write_index")
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def exact_int8_gemms(opts: ort.SessionOptions) -> ort.SessionOptions:
    """Ask ORT for its U8U8 integer GEMMs on x86 CPUs without VNNI (``session.x64quantprecision``).

    Why: there ORT's fast U8S8 kernels sum pairs of products in saturating 16-bit lanes, so INT8
    graphs silently lose accuracy; on an AVX2-only EPYC the dynamic INT8 tiny DAR agreed with FP32 on
    395 of 512 top-1 tokens against 500 on an AVX-512 VNNI CPU. ORT applies the option only where the
    CPU lacks VNNI, and it changes nothing for float graphs."""
    opts.add_session_config_entry("session.x64quantprecision", "1")
    return opts


def cache_names(n_layer: int, prefix: str) -> list[str]:
    """``{prefix}.{i}.key`` / ``.value`` for every layer, in graph order."""
    return [f"{prefix}.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]


def usable_cpus() -> int:
    """Cores this process may run on (a container's affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


ProviderSpec = str | tuple[str, dict[str, str]]


def resolve_providers(providers: str, cuda_tf32: bool = False) -> list[ProviderSpec]:
    """The EP list to ask for. 'auto' asks for CUDA when this onnxruntime build lists it.

    The CUDA EP gets ``use_tf32`` from ``cuda_tf32``, off by default. Why: the EP turns TF32 on by
    default, so an fp32 package no longer computes in fp32. Measured on an H200 (bundled demo, ORT
    1.31.1): with TF32 the step logits were 0.03 from the torch reference (relative 1.2e-3, 30x
    `dartrt verify`'s fp32 bound of 1e-4, though no sampled token changed); with it off, 1.8e-5.
    Whoever wants the speed over that parity passes ``cuda_tf32=True``."""
    if providers not in PROVIDER_CHOICES:
        raise DartrtError(f"unknown providers {providers!r}: use one of {', '.join(PROVIDER_CHOICES)}")
    available = ort.get_available_providers()
    if providers == "cuda" and CUDA_EP not in available:
        raise DartrtError("onnxruntime has no CUDA execution provider here "
                          f"(available: {', '.join(available)}); install onnxruntime-gpu or use providers='cpu'")
    if providers == "cpu" or CUDA_EP not in available:
        return [CPU_EP]
    return [(CUDA_EP, {"use_tf32": "1" if cuda_tf32 else "0"}), CPU_EP]


@dataclass(frozen=True)
class SessionSettings:
    """What every session of one backend shares. ``log_severity`` 0/1 shows ORT's verbose/info log
    (that is where the in-place warning appears); the default 3 shows errors only."""

    providers: str = "auto"
    intra_op_threads: int | None = None
    optimization: str = "all"
    log_severity: int = 3

    def options(self) -> ort.SessionOptions:
        if self.optimization not in OPT_LEVELS:
            raise DartrtError(f"unknown optimization level {self.optimization!r}: use one of {', '.join(OPT_LEVELS)}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = OPT_LEVELS[self.optimization]
        opts.intra_op_num_threads = int(self.intra_op_threads or usable_cpus())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = int(self.log_severity)
        return exact_int8_gemms(opts)


def open_session(path: Path, settings: SessionSettings, providers: list[ProviderSpec]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=settings.options(), providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise DartrtError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None


def check_io(session: ort.InferenceSession, path: Path, inputs: list[str], outputs: list[str]) -> None:
    """The graph must take exactly what the backend feeds and return what it reads."""
    have_in = [i.name for i in session.get_inputs()]
    have_out = {o.name for o in session.get_outputs()}
    missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
    if missing:
        raise DartrtError(f"{path} lacks the graph I/O {', '.join(missing[:4])}"
                          f"{' …' if len(missing) > 4 else ''}; it was not exported by this dartrt, re-export it")
    extra = [n for n in have_in if n not in inputs]
    if extra:
        raise DartrtError(f"{path} has inputs this runtime does not feed ({', '.join(extra[:4])}); "
                          "re-export the package with this dartrt")


class OrtBackend:
    """A package's prefill/decode/vq_decoder graphs on onnxruntime; ``device`` is what ORT really uses."""

    name = "onnxruntime"

    def __init__(self, manifest: Manifest, providers: str = "auto", intra_op_threads: int | None = None,
                 optimization: str = "all", log_severity: int = 3, alias_cache: bool = True,
                 graph_files: dict[str, Path] | None = None, cuda_tf32: bool = False) -> None:
        """``graph_files`` overrides a graph's file (the FP16 or INT8 form of decode/prefill, say);
        ``cuda_tf32`` lets the CUDA EP use TF32 (see `resolve_providers`)."""
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
        self.settings = SessionSettings(providers, intra_op_threads, optimization, log_severity)
        requested = resolve_providers(providers, cuda_tf32)

        past, present = cache_names(self.n_layer, "past_key_values"), cache_names(self.n_layer, "present")
        mod = ["adaln_modulation"] if self.adaln else []
        specs = {"prefill": (list(STEP_INPUTS) + past, ["logits"] + mod + present),
                 "decode": (list(STEP_INPUTS) + mod + past, ["logits"] + present),
                 "vq_decoder": (["token_grid"], ["image"])}
        self.sessions: dict[str, ort.InferenceSession] = {}
        for graph, (inputs, outputs) in specs.items():
            path = Path((graph_files or {}).get(graph) or manifest.graph(graph).path)
            try:
                session = open_session(path, self.settings, requested)
            except DartrtError:
                if providers != "auto" or requested == [CPU_EP] or self.sessions:
                    raise
                requested = [CPU_EP]  # 'auto' with a CUDA EP that cannot start: run on the CPU instead
                session = open_session(path, self.settings, requested)
            check_io(session, path, inputs, outputs)
            self.sessions[graph] = session
        # The cache dtype is the graph's: FP16 graphs keep their KV cache in fp16 (half the bytes).
        past_type = {i.name: i.type for i in self.sessions["decode"].get_inputs()}[past[0]]
        self.cache_dtype = np.float16 if past_type == "tensor(float16)" else np.float32
        got = self.sessions["decode"].get_providers()
        self.providers = got
        self.provider_specs = requested  # with their options: a second session (Polygraphy's) asks for the same
        self.device = "cuda" if got and got[0] == CUDA_EP else "cpu"
        if providers == "cuda" and self.device != "cuda":
            raise DartrtError("onnxruntime fell back to the CPU: the CUDA execution provider could not start "
                              "(no GPU, or a CUDA/cuDNN library is missing); use providers='cpu'")
        if self.adaln and manifest.adaln_width is None:
            out = {o.name: o.shape for o in self.sessions["prefill"].get_outputs()}
            self.mod_width = int(out["adaln_modulation"][-1])
        else:
            self.mod_width = manifest.adaln_width or 0
        self._io = {g: self.sessions[g].io_binding() for g in ("prefill", "decode")}
        self._rows = 0
        self._caches: list[ort.OrtValue] = []
        self._spare: list[ort.OrtValue] = []  # only when alias_cache=False: the other half of a ping-pong
        self._modulation: ort.OrtValue | None = None
        self._logits: dict[tuple[int, ...], ort.OrtValue] = {}
        self._keep: list[np.ndarray] = []  # host arrays bound by pointer must outlive the run

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
        for i, name in enumerate(cache_names(self.n_layer, "past_key_values")):
            io.bind_ortvalue_input(name, self._caches[i])
        for i, name in enumerate(cache_names(self.n_layer, "present")):
            io.bind_ortvalue_output(name, outs[i])

    def _bind_step(self, io: ort.IOBinding, ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
                   write: np.ndarray) -> None:
        arrays = [np.ascontiguousarray(a, dtype=np.int64) for a in (ids, positions, direction, write)]
        self._keep = arrays
        for name, arr in zip(STEP_INPUTS, arrays):
            io.bind_cpu_input(name, arr)

    def _run(self, graph: str, logits_shape: tuple[int, ...]) -> np.ndarray:
        io = self._io[graph]
        logits = self._logits_buffer(logits_shape)
        io.bind_ortvalue_output("logits", logits)
        io.synchronize_inputs()
        self.sessions[graph].run_with_iobinding(io)
        io.synchronize_outputs()
        if not self.alias_cache:
            self._caches, self._spare = self._spare, self._caches
            self._bind_caches(self._io["decode"])
        return np.array(logits.numpy()[:, -1], dtype=np.float32)

    # ---- Backend protocol ---------------------------------------------------------------------------
    def prefill(self, class_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray) -> np.ndarray:
        rows = len(class_ids)
        self._allocate(rows)
        io = self._io["prefill"]
        self._bind_step(io, np.asarray(class_ids).reshape(rows, 1), positions, direction,
                        np.zeros(rows, dtype=np.int64))
        self._bind_caches(io)
        if self.adaln:
            io.bind_ortvalue_output("adaln_modulation", self._modulation)
        logits = self._run("prefill", (rows, 1, self.info.vocab_size))
        decode = self._io["decode"]
        self._bind_caches(decode)
        if self.adaln:
            decode.bind_ortvalue_input("adaln_modulation", self._modulation)
        return logits

    def step(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
             write_index: int) -> np.ndarray:
        rows, seq = token_ids.shape
        if rows != self._rows:
            raise DartrtError(f"step got {rows} rows but prefill set up {self._rows}; call prefill first")
        io = self._io["decode"]
        self._bind_step(io, token_ids, positions, direction, np.full(rows, int(write_index), dtype=np.int64))
        return self._run("decode", (rows, seq, self.info.vocab_size))

    def decode_vq(self, grids: np.ndarray) -> np.ndarray:
        image = self.sessions["vq_decoder"].run(["image"], {"token_grid": np.ascontiguousarray(grids, dtype=np.int64)})
        return to_uint8(image[0])

    # ---- introspection (tests, bench) -----------------------------------------------------------------
    def cache_arrays(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of one layer's live (key, value) caches [R, H, T, D]."""
        return self._caches[2 * layer].numpy().copy(), self._caches[2 * layer + 1].numpy().copy()
