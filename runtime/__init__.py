"""dartrt's light runtime: numpy plus ONNX Runtime or TensorRT, never torch.

Scan orders, direction ids, CFG schedules and the sampler live here once; the torch reference imports
them, so the reference and every backend share one definition.

``runtime.generate(package, class_ids, ...)`` is the production entry point; ``runtime.decode(package,
tokens, ...)`` decodes D-AR tokens with a D-AR package's diffusion decoder (`runtime.d_ar`). onnxruntime
is imported only when a package is opened, so ``from dartrt import runtime`` stays light (numpy and
Pillow).
"""

from .api import generate
from .d_ar import decode
from .errors import DartrtError
from .manifest import Manifest
from .package import open_package_backend

__all__ = ["DartrtError", "Manifest", "decode", "generate", "open_package_backend"]
