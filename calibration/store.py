"""The package's ``calibration/`` folder: where its files go, and the manifest's ``calibration`` entry.

Calibration runs long after `dartrt export`, on a package other steps (engine builds, graph passes) may
be touching too, so every file lands by rename (`dartrt.runtime.fileio`) and the package manifest is
updated read-modify-write: only the ``calibration`` key is ours, everything else is carried over, and
the manifest is rewritten with every file re-hashed, so the runtime's hash check covers the traces and
the quantized graphs as well.
"""

from __future__ import annotations

from pathlib import Path

from dartrt.runtime.manifest import Manifest

CALIBRATION_DIR = "calibration"
TRACES_DIR = f"{CALIBRATION_DIR}/traces"
REPORT_FILE = f"{CALIBRATION_DIR}/report.json"


def update_calibration_entry(pkg: str | Path, key: str, value) -> dict:
    """Set ``manifest['calibration'][key] = value`` and rewrite the manifest (all files re-hashed).

    The manifest is read without checking its files (`Manifest.read`): calibration replaces listed
    files (a new variant, new traces) before it rewrites the manifest, and a run interrupted in between
    must not lock the next run out."""
    manifest = Manifest.read(pkg)
    data = dict(manifest.data)
    data["calibration"] = {**(data.get("calibration") or {}), key: value}
    return manifest.write(data).data
