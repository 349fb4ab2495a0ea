"""The PyTorch reference for the DAR family (DAR, LlamaGen c2i, D-AR's 1D AR model).

Everything else in dartrt is measured against this package. It is never imported by `runtime`.
"""

from .config import PRESETS, ModelConfig, get_preset

__all__ = ["PRESETS", "ModelConfig", "get_preset"]
