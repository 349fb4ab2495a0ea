"""PyTorch reference → ONNX package (prefill and decode graphs with an explicit KV cache, VQ decoder,
manifest)."""

from .package import ExportReport, export_package

__all__ = ["ExportReport", "export_package"]
