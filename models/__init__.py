"""The bundled models, shipped as package data (``dartrt.models``).

``DEMO`` is the folder of the trained demo DAR (config, weights, VQ, classifier, metrics). It resolves
to the repository's ``models/demo`` in a checkout and to ``site-packages/dartrt/models/demo`` in an
installed wheel, so every command finds the same model either way.
"""

from pathlib import Path

DEMO = Path(__file__).resolve().parent / "demo"
# The any-order demo (docs/oar.md): DEMO trained further on random orders, with a VQ encoder for editing.
DEMO_ANYORDER = Path(__file__).resolve().parent / "demo-anyorder"
