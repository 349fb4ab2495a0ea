"""The one place that creates ONNX Runtime sessions: a Polygraphy-style loader with named profiles.

Every session in dartrt (the runtime's backend, the export check, graph comparisons, trace replays,
calibration reports, verify's Polygraphy rung) is built by `SessionFromOnnx`, so the options that decide
numbers are set once:

- exact INT8 GEMMs on x86 CPUs without VNNI (``session.x64quantprecision``): there ORT's fast U8S8
  kernels sum pairs of products in saturating 16-bit lanes, so INT8 graphs silently lose accuracy; on an
  AVX2-only EPYC the dynamic INT8 tiny DAR agreed with FP32 on 395 of 512 top-1 tokens against 500 on an
  AVX-512 VNNI CPU. ORT applies the option only where the CPU lacks VNNI; float graphs are unaffected;
- TF32 off on the CUDA EP unless asked for: the EP turns it on by default, so an fp32 package would not
  compute in fp32. On an H200 (bundled demo, ORT 1.31.1) the step logits were 0.03 from the torch
  reference with TF32 (30x the fp32 bound of verify) and 1.8e-5 without;
- one inter-op thread, sequential execution: the step graphs are a chain, extra pools only contend;
- ``spinning`` off where several sessions take turns (a D-AR package's AR step and tokenizer graphs): an
  ORT worker spins for a while after its work, and on a small CPU the spinning pool of the session that just
  ran takes the cores from the next one (see ``SessionProfile.spinning``).

The profiles say what a session is for:

- ``runtime``: speed. All graph optimizations, every usable core.
- ``reference``: comparisons. One thread, so figures are reproducible on a shared build machine.
- ``check``: numbers on big graphs. Basic rewrites, no arena, no weight pre-packing, so a multi-GB
  graph costs one copy of its weights (DAR-XL must check on a 24 GB machine).

Like Polygraphy's loaders, a `SessionFromOnnx` is a callable that builds the session when called, so it
can be handed to Polygraphy's ``OnnxrtRunner`` as is.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from .errors import DartrtError

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
ProviderSpec = str | tuple[str, dict[str, str]]


def usable_cpus() -> int:
    """Cores this process may run on (a container's affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class SessionProfile:
    """How a session is built. ``threads`` None means every usable core; ``log_severity`` 0/1 shows ORT's
    verbose/info log (where its "in-place optimization not activated" warning appears), 3 errors only."""

    name: str
    optimization: str = "all"
    threads: int | None = None
    memory_arena: bool = True
    prepacking: bool = True
    log_severity: int = 3
    # Whether idle intra-op workers spin before sleeping (ORT's default). Off for a D-AR package: its stream
    # alternates AR steps with the tokenizer's graphs, and spinning pools contended (docs/d-ar.md, bench).
    spinning: bool = True

    def __post_init__(self) -> None:
        if self.optimization not in OPT_LEVELS:
            raise DartrtError(f"unknown optimization level {self.optimization!r}: use one of {', '.join(OPT_LEVELS)}")
        if self.threads is not None and (isinstance(self.threads, bool) or int(self.threads) != self.threads
                                         or self.threads < 1):
            raise DartrtError(f"threads must be an integer >= 1, got {self.threads!r}")

    def but(self, **changes) -> SessionProfile:
        """This profile with some fields changed (``None`` values are ignored, so callers can pass
        optional overrides straight through)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    def options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = OPT_LEVELS[self.optimization]
        opts.intra_op_num_threads = int(self.threads or usable_cpus())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = int(self.log_severity)
        opts.enable_cpu_mem_arena = self.memory_arena
        if not self.prepacking:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.add_session_config_entry("session.x64quantprecision", "1")  # exact INT8 GEMMs (module doc)
        if not self.spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts


RUNTIME = SessionProfile("runtime")
REFERENCE = SessionProfile("reference", threads=1)
CHECK = SessionProfile("check", optimization="basic", memory_arena=False, prepacking=False)
PROFILES = {p.name: p for p in (RUNTIME, REFERENCE, CHECK)}


def resolve_providers(device: str = "cpu", cuda_tf32: bool = False) -> list[ProviderSpec]:
    """The EP list for ``device``: cpu; cuda (refused by name when this onnxruntime has no CUDA EP);
    auto (CUDA when this build lists it, else the CPU). The CUDA EP gets TF32 off unless ``cuda_tf32``."""
    if device not in DEVICES:
        raise DartrtError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cuda" and CUDA_EP not in available:
        raise DartrtError("onnxruntime has no CUDA execution provider here "
                          f"(available: {', '.join(available)}); install onnxruntime-gpu or use the CPU")
    if device == "cpu" or CUDA_EP not in available:
        return [CPU_EP]
    return [(CUDA_EP, {"use_tf32": "1" if cuda_tf32 else "0"}), CPU_EP]


@dataclass(frozen=True)
class SessionFromOnnx:
    """A loader: calling it opens ``path`` under ``profile`` on ``providers`` (an EP list from
    `resolve_providers`). Any failure to load is one `DartrtError` line naming the file."""

    path: Path
    profile: SessionProfile = RUNTIME
    providers: tuple[ProviderSpec, ...] = (CPU_EP,)

    def __call__(self) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(self.path), sess_options=self.profile.options(),
                                        providers=list(self.providers))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DartrtError(f"onnxruntime cannot load {self.path}: {first}") from None


@dataclass
class GraphSessions:
    """A package's graphs opened on one EP list: ``provider_specs`` is the list that opened them (with its
    options, for a second session that must ask for the same), ``device`` where they all really run."""

    sessions: dict[str, ort.InferenceSession]
    provider_specs: list[ProviderSpec]
    device: str


def open_graph_sessions(paths: dict[str, Path], profile: SessionProfile, device: str = "auto",
                        cuda_tf32: bool = False) -> GraphSessions:
    """Open every graph of ``paths`` (name → file) on ``device``'s EPs. 'auto' whose CUDA EP cannot start
    falls back to the CPU (decided on the first graph: a later failure is a real one); 'cuda' that ends up
    on the CPU is refused in one line, never run slowly in silence."""
    requested = resolve_providers(device, cuda_tf32)
    sessions: dict[str, ort.InferenceSession] = {}
    for graph, path in paths.items():
        try:
            sessions[graph] = SessionFromOnnx(path, profile, tuple(requested))()
        except DartrtError:
            if device != "auto" or requested == [CPU_EP] or sessions:
                raise
            requested = [CPU_EP]
            sessions[graph] = SessionFromOnnx(path, profile, tuple(requested))()
    on_cuda = bool(sessions) and all(s.get_providers()[:1] == [CUDA_EP] for s in sessions.values())
    if device == "cuda" and not on_cuda:
        raise DartrtError("onnxruntime fell back to the CPU: the CUDA execution provider could not start "
                          "(no GPU, or a CUDA/cuDNN library is missing); use the CPU")
    return GraphSessions(sessions, requested, "cuda" if on_cuda else "cpu")


def open_session(path: str | Path, profile: SessionProfile | str = RUNTIME, device: str = "cpu",
                 **overrides) -> ort.InferenceSession:
    """Open ``path`` now: ``profile`` by object or name, ``device`` as in `resolve_providers`, and
    ``overrides`` (threads, optimization, log_severity, ...) on top of the profile."""
    chosen = PROFILES[profile] if isinstance(profile, str) else profile
    return SessionFromOnnx(Path(path), chosen.but(**overrides), tuple(resolve_providers(device)))()


def io_names(session: ort.InferenceSession) -> tuple[list[str], list[str]]:
    """(input names, output names) of a session, in graph order."""
    return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]


def run_named(session: ort.InferenceSession, feed: dict) -> dict:
    """``session.run`` with every output, returned by name."""
    return dict(zip(io_names(session)[1], session.run(None, feed)))
