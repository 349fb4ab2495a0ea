"""The bundled models, shipped as package data (``dartrt.models``).

``DEMO`` is the folder of the trained demo DAR (config, weights, VQ, classifier, metrics). It resolves
to the repository's ``models/demo`` in a checkout and to ``site-packages/dartrt/models/demo`` in an
installed wheel, so every command finds the same model either way.
"""

from __future__ import annotations

from pathlib import Path

DEMO = Path(__file__).resolve().parent / "demo"
# The any-order demo (docs/oar.md): DEMO trained further on random orders, with a VQ encoder for editing.
DEMO_ANYORDER = Path(__file__).resolve().parent / "demo-anyorder"


def recorded_path(folder: str | Path) -> str:
    """How a training log names a source folder: ``models/NAME`` for a bundled model (the same on every machine,
    in a checkout or a wheel), else the path as given."""
    resolved = Path(folder).resolve()
    if resolved.parent == Path(__file__).resolve().parent:
        return f"models/{resolved.name}"
    return str(folder)


# The D-AR demo (docs/d-ar.md): a D-AR checkpoint whose tokens are DEMO_ANYORDER's VQ codes.
DEMO_DAR = Path(__file__).resolve().parent / "demo-dar"
