"""dartrt: export DAR-family image generators to portable packages and run them.

The parts install under this one namespace: ``dartrt.runtime`` (torch-free: run packages),
``dartrt.dar`` (the PyTorch reference), ``dartrt.exporter``, ``dartrt.verify``, ``dartrt.graphs``,
``dartrt.calibration``, ``dartrt.bench`` and ``dartrt.cli``. Importing ``dartrt`` itself loads nothing.
"""

__version__ = "0.1.0"
