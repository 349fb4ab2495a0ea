"""Open an exported package: verify it, then hand back the Backend that runs it.

This is the one place that maps a backend name to an implementation, so the CLI and
`runtime.generate` agree on what "auto" means, and onnxruntime is imported only when it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .backend import Backend, ModelInfo
from .errors import DartrtError
from .manifest import Manifest, load_manifest

BACKENDS = ("auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
_ORT_PROVIDERS = {"auto": "auto", "onnxruntime": "auto", "onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda"}


@dataclass(frozen=True)
class Package:
    """A verified package folder: its manifest dict and the model info the scheduler needs."""

    dir: Path
    manifest: dict
    info: ModelInfo

    @classmethod
    def open(cls, pkg_dir: str | Path, verify_hashes: bool = True) -> "Package":
        data = load_manifest(pkg_dir, verify_hashes)
        try:
            info = ModelInfo.from_config(data["model"], int(data["image_size"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DartrtError(f"{Path(pkg_dir) / 'manifest.json'}: bad model entry ({exc!r})") from None
        return cls(Path(pkg_dir), data, info)

    @property
    def view(self) -> Manifest:
        return Manifest(self.dir, self.manifest)


def open_package_backend(pkg_dir: str | Path, backend: str = "auto", *, verify_hashes: bool = True,
                         **options) -> Backend:
    """A ready Backend for the package at ``pkg_dir``.

    ``backend``: auto (onnxruntime, on CUDA when it really runs there), onnxruntime, onnxruntime-cpu,
    onnxruntime-cuda; tensorrt is refused until engines exist. ``options`` go to the backend
    (for onnxruntime: intra_op_threads, optimization, log_severity).
    """
    if backend not in BACKENDS:
        hint = "; the torch backend needs a checkpoint or preset, not a package" if backend == "torch" else ""
        raise DartrtError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}{hint}")
    package = Package.open(pkg_dir, verify_hashes)
    if backend == "tensorrt":
        from .trt_backend import TrtBackend  # imports tensorrt/cuda-python only when constructed

        return TrtBackend(package.view, **options)
    try:
        from .ort_backend import OrtBackend
    except ImportError as exc:
        raise DartrtError(f"onnxruntime is not installed ({exc}); pip install 'dartrt[cpu]' or 'dartrt[gpu]'") from None
    providers = options.pop("providers", _ORT_PROVIDERS[backend])
    return OrtBackend(package.view, providers=providers, **options)
