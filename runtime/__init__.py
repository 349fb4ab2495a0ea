"""dartrt's light runtime: numpy plus ONNX Runtime or TensorRT, never torch.

Scan orders, direction ids, CFG schedules and the sampler live here once; the torch reference imports
them, so the reference and every backend share one definition.
"""

from .errors import DartrtError

__all__ = ["DartrtError"]
