"""TensorRT as a `Backend`: device-resident KV cache, in-place updates, one stream, a CUDA graph per step.

Why this shape (docs/design.md, "Backends" and "The graph contract"):
- each layer's K/V cache is one device buffer for the whole batch, bound once with `set_tensor_address`
  as both `past_key_values.{i}.*` and `present.{i}.*`: the engine's in-place `IKVCacheUpdateLayer`
  requires that (`engine.get_aliased_input_tensor(present)` names the past it aliases), and it means
  no cache copy ever;
- the step inputs (token ids, positions, direction, write index) live in fixed device buffers that are
  overwritten in place with `cudaMemcpyAsync` before each step, so the decode step's addresses and
  shapes never change and one CUDA graph, captured after a warm-up `execute_async_v3`, replays every
  step; only the sampled ids go in and the last position's logits come out;
- the engine must have been built for this GPU and this TensorRT: the manifest records both
  (`graphs.trt_build`), and a mismatch is refused by name before deserialising anything.

No torch: device memory comes from cuda-python (`cuda.bindings.runtime`, or the older `cuda.cudart`).
This module cannot run on a machine without an NVIDIA GPU and TensorRT; its pure-Python parts (the
engine/device compatibility check) are tested on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import ModelInfo, check_step_rows
from .contract import (
    ALL_GRAPHS,
    DECODE,
    IMAGE,
    INPUT_IDS,
    LOGITS,
    PAST,
    PREFILL,
    PRESENT,
    TOKEN_GRID,
    VQ_DECODER,
    past_name,
    step_feed,
)
from .errors import DartrtError
from .images import to_uint8
from .manifest import Manifest
from .precisions import ENGINE_PRECISIONS

INSTALL_HINT = "pip install 'dartrt[tensorrt]'"


# ---- which GPU / TensorRT an engine belongs to (pure Python, CPU-testable) ----------------------------
@dataclass(frozen=True)
class DeviceInfo:
    """The GPU and TensorRT an engine was built with, or the ones present here."""

    gpu: str
    compute_capability: str  # "9.0"
    tensorrt: str  # "11.4.0.106"

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")

    def describe(self) -> str:
        return f"{self.gpu} ({self.sm}) with TensorRT {self.tensorrt}"

    @classmethod
    def from_engine_entry(cls, entry: dict) -> "DeviceInfo":
        try:
            return cls(str(entry["gpu"]), str(entry["compute_capability"]), str(entry["tensorrt"]))
        except KeyError as exc:
            raise DartrtError(f"engine entry {entry.get('file', '?')} lacks {exc.args[0]!r}; rebuild it with "
                              "`dartrt build`") from None


def check_engine_compatible(file: str, built: DeviceInfo, here: DeviceInfo) -> None:
    """Refuse an engine built for another GPU architecture or another TensorRT, naming both.

    TensorRT plans are tied to the exact TensorRT version and the SM they were tuned on (unless built
    version-/hardware-compatible, which dartrt does not do). A different GPU model with the same SM
    is accepted: the plan runs, though its tactics were timed on the other model.
    """
    if built.compute_capability != here.compute_capability or built.tensorrt != here.tensorrt:
        raise DartrtError(f"engine {Path(file).name} was built for {built.describe()} but this is "
                          f"{here.gpu} ({here.sm}) / TensorRT {here.tensorrt}; rebuild it here with "
                          "`dartrt build`")


# ---- cuda-python -----------------------------------------------------------------------------------------
def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise DartrtError(f"cuda-python is not installed; {INSTALL_HINT}") from None
    return cudart


def _ck(result):
    """cuda-python returns (err, *values): raise on error, return the values."""
    cudart = _cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        raise DartrtError(f"CUDA call failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


def device_info(device: int = 0) -> DeviceInfo:
    """This machine's GPU ``device`` and the installed TensorRT."""
    try:
        import tensorrt as trt
    except ImportError:
        raise DartrtError(f"TensorRT is not installed ({INSTALL_HINT})") from None
    cudart = _cudart()
    count = _ck(cudart.cudaGetDeviceCount())
    if count < 1 or device >= count:
        raise DartrtError(f"no CUDA GPU {device} here ({count} found)")
    prop = _ck(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return DeviceInfo(name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}", trt.__version__)


class DeviceBuffer:
    """One device allocation of a fixed shape and dtype (the address never changes)."""

    def __init__(self, shape: tuple[int, ...], dtype) -> None:
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.nbytes = max(int(np.prod(self.shape)) * self.dtype.itemsize, 1)
        self.ptr = int(_ck(_cudart().cudaMalloc(self.nbytes)))

    def upload(self, array: np.ndarray, stream) -> np.ndarray:
        """Async H2D copy of ``array`` (returned: it must stay alive until the stream syncs)."""
        host = np.ascontiguousarray(array, dtype=self.dtype)
        if host.nbytes > self.nbytes:
            raise DartrtError(f"input of {host.nbytes} bytes does not fit its {self.nbytes}-byte device buffer")
        cudart = _cudart()
        _ck(cudart.cudaMemcpyAsync(self.ptr, host.ctypes.data, host.nbytes,
                                   cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
        return host

    def download(self, shape: tuple[int, ...], stream) -> np.ndarray:
        host = np.empty(shape, dtype=self.dtype)
        cudart = _cudart()
        _ck(cudart.cudaMemcpyAsync(host.ctypes.data, self.ptr, host.nbytes,
                                   cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
        return host

    def zero(self, stream) -> None:
        _ck(_cudart().cudaMemsetAsync(self.ptr, 0, self.nbytes, stream))

    def free(self) -> None:
        if self.ptr:
            _cudart().cudaFree(self.ptr)
            self.ptr = 0


# ---- one engine ----------------------------------------------------------------------------------------
class EngineRunner:
    """An engine, its execution context and the max shapes of its (single) optimisation profile."""

    def __init__(self, trt, runtime, path: Path) -> None:
        self.trt = trt
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise DartrtError(f"TensorRT could not deserialise {path.name}; rebuild it with `dartrt build`")
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]

    def dtype(self, name: str):
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def max_shape(self, name: str) -> tuple[int, ...]:
        if name in self.inputs:
            return tuple(self.engine.get_tensor_profile_shape(name, 0)[2])
        return tuple(self.engine.get_tensor_shape(name))

    def aliased_input(self, output: str) -> str | None:
        return self.engine.get_aliased_input_tensor(output) or None

    def bind(self, name: str, buffer: DeviceBuffer) -> None:
        if not self.context.set_tensor_address(name, buffer.ptr):
            raise DartrtError(f"TensorRT refused the address for {name}")

    def shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise DartrtError(f"shape {shape} of {name} is outside the engine's profile; rebuild with a larger "
                              "--max-batch")

    def run(self, stream) -> None:
        if not self.context.execute_async_v3(int(stream)):
            raise DartrtError("TensorRT execute_async_v3 failed")


# ---- the backend ---------------------------------------------------------------------------------------
class TrtBackend:
    """A package's engines (`dartrt build`) as a Backend, with the cache on the device."""

    name = "tensorrt"

    def __init__(self, manifest: Manifest, precision: str | None = None, device: int = 0,
                 cuda_graph: bool = True) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise DartrtError(f"TensorRT backend is not available here: tensorrt is not installed ({INSTALL_HINT}); "
                              "use backend='onnxruntime'") from None
        self.manifest = manifest
        self.info: ModelInfo = manifest.info
        engines = manifest.data.get("engines") or {}
        self.precision = precision or _pick_precision(engines)
        here = device_info(device)
        self.cudart = _cudart()
        _ck(self.cudart.cudaSetDevice(device))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.runners: dict[str, EngineRunner] = {}
        for graph in ALL_GRAPHS:
            key = f"{graph}.{self.precision if graph != VQ_DECODER else 'fp32'}"
            entry = engines.get(key) or engines.get(f"{graph}.{self.precision}")
            if entry is None:
                raise DartrtError(f"TensorRT backend is not available here: the package has no {key} engine "
                                  f"(have: {', '.join(engines) or 'none'}); run `dartrt build`")
            check_engine_compatible(entry["file"], DeviceInfo.from_engine_entry(entry), here)
            self.runners[graph] = EngineRunner(trt, runtime, manifest.root / entry["file"])
        self.stream = _ck(self.cudart.cudaStreamCreate())
        self.cuda_graph = cuda_graph
        self._rows = 0
        self._buffers: dict[str, DeviceBuffer] = {}
        self._graphs: dict[tuple[int, int], object] = {}
        self._keep: list[np.ndarray] = []

    # ---- buffers --------------------------------------------------------------------------------------
    def _allocate(self, rows: int) -> None:
        """Caches, AdaLN table, step inputs and logits for ``rows``; bound once to both contexts."""
        if rows == self._rows:
            return
        self._release()
        decode, prefill = self.runners[DECODE], self.runners[PREFILL]
        max_seq = decode.max_shape(INPUT_IDS)[1]
        for name in decode.inputs:
            shape = list(decode.max_shape(name))
            shape = [rows if i == 0 else d for i, d in enumerate(shape)]  # every input is per row
            self._buffers[name] = DeviceBuffer(tuple(shape), decode.dtype(name))
        vocab = self.info.vocab_size
        self._buffers[LOGITS] = DeviceBuffer((rows, max_seq, vocab), np.float32)
        for name in (n for n in decode.inputs if n.startswith(f"{PAST}.")):
            self._buffers[name].zero(self.stream)  # stale slots are masked, but 0·NaN would still be NaN
        for runner in (prefill, decode):
            for name in runner.names:
                buffer_name = past_name(name)
                if name.startswith(f"{PRESENT}."):
                    alias = runner.aliased_input(name)
                    if alias != buffer_name:
                        raise DartrtError(f"engine output {name} is not updated in place (aliases {alias!r}); "
                                          "rebuild it from a dartrt-prepared graph")
                if buffer_name in self._buffers:
                    runner.bind(name, self._buffers[buffer_name])
        self._rows = rows

    def _release(self) -> None:
        self._graphs.clear()
        for buffer in self._buffers.values():
            buffer.free()
        self._buffers = {}
        self._rows = 0

    def _upload_step(self, runner: EngineRunner, ids, positions, direction, write_index: int) -> None:
        arrays = step_feed(ids, positions, direction, write_index)
        self._keep = [self._buffers[n].upload(a, self.stream) for n, a in arrays.items()]
        for name, array in arrays.items():
            runner.shape(name, np.shape(array))
        rows = np.shape(ids)[0]
        for name in runner.inputs:
            if name not in arrays:
                runner.shape(name, (rows, *runner.max_shape(name)[1:]))

    def _logits(self, rows: int, seq: int) -> np.ndarray:
        # the engine wrote a contiguous [rows, seq, V] at the start of the [rows, max_seq, V] buffer
        out = self._buffers[LOGITS].download((rows, seq, self.info.vocab_size), self.stream)
        _ck(self.cudart.cudaStreamSynchronize(self.stream))
        self._keep = []
        return np.array(out[:, -1], dtype=np.float32)

    def _execute_decode(self, rows: int, seq: int) -> None:
        """Replay the captured graph for this (rows, seq), capturing it after one warm-up run."""
        runner = self.runners[DECODE]
        key = (rows, seq)
        if not self.cuda_graph:
            runner.run(self.stream)
            return
        if key not in self._graphs:
            runner.run(self.stream)  # warm-up: flushes TensorRT's deferred updates before capture
            _ck(self.cudart.cudaStreamSynchronize(self.stream))
            mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _ck(self.cudart.cudaStreamBeginCapture(self.stream, mode))
            runner.run(self.stream)
            graph = _ck(self.cudart.cudaStreamEndCapture(self.stream))
            self._graphs[key] = _ck(self.cudart.cudaGraphInstantiate(graph, 0))
            return  # the warm-up already computed this step; the capture only recorded it
        _ck(self.cudart.cudaGraphLaunch(self._graphs[key], self.stream))

    # ---- Backend protocol ----------------------------------------------------------------------------
    def prefill(self, class_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray) -> np.ndarray:
        rows = len(class_ids)
        self._allocate(rows)
        for name in (n for n in self._buffers if n.startswith(f"{PAST}.")):
            self._buffers[name].zero(self.stream)
        runner = self.runners[PREFILL]
        self._upload_step(runner, np.asarray(class_ids).reshape(rows, 1), positions, direction, 0)
        runner.run(self.stream)
        return self._logits(rows, 1)

    def step(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
             write_index: int) -> np.ndarray:
        rows, seq = token_ids.shape
        check_step_rows(rows, self._rows)
        runner = self.runners[DECODE]
        self._upload_step(runner, token_ids, positions, direction, int(write_index))
        self._execute_decode(rows, seq)
        return self._logits(rows, seq)

    def decode_vq(self, grids: np.ndarray) -> np.ndarray:
        runner = self.runners[VQ_DECODER]
        max_batch = runner.max_shape(TOKEN_GRID)[0]
        out = []
        for i in range(0, len(grids), max_batch):
            chunk = np.ascontiguousarray(grids[i:i + max_batch], dtype=runner.dtype(TOKEN_GRID))
            runner.shape(TOKEN_GRID, chunk.shape)
            image_shape = tuple(runner.context.get_tensor_shape(IMAGE))
            src, dst = DeviceBuffer(chunk.shape, chunk.dtype), DeviceBuffer(image_shape, np.float32)
            try:
                runner.bind(TOKEN_GRID, src)
                runner.bind(IMAGE, dst)
                keep = src.upload(chunk, self.stream)
                runner.run(self.stream)
                image = dst.download(image_shape, self.stream)
                _ck(self.cudart.cudaStreamSynchronize(self.stream))
                del keep
            finally:
                src.free()
                dst.free()
            out.append(to_uint8(image))
        return np.concatenate(out)

    def close(self) -> None:
        self._release()

    def __del__(self) -> None:  # best effort; explicit close() is preferred
        try:
            self._release()
        except Exception:  # interpreter shutdown: cuda-python may already be gone
            pass


def _pick_precision(engines: dict) -> str:
    """The first precision of ENGINE_PRECISIONS (fp16, int8, fp8, int4-awq, fp32) the package has engines for."""
    for precision in ENGINE_PRECISIONS:
        if f"decode.{precision}" in engines:
            return precision
    raise DartrtError("TensorRT backend is not available here: the package has no TensorRT engines; "
                      "run `dartrt build PKG --precision fp16`")
