"""Calibration: real generation traces → INT8 Q/DQ graphs (ModelOpt; onnxruntime CPU variants) → a
quality report against FP32. See traces.py (what is recorded and why), quantize.py (the recipes) and
report.py (the measures). Importing the package is light; torch loads only when traces are recorded."""
