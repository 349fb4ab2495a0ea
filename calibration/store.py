"""Files of a package's ``calibration/`` folder: atomic writes and the manifest's ``calibration`` entry.

Calibration runs long after `dartrt export`, on a package other steps (engine builds, graph passes) may
be touching too, so every file lands by rename and the package manifest is updated read-modify-write:
only the ``calibration`` key is ours, everything else is carried over, and `write_manifest` re-hashes
every file so the runtime's hash check covers the traces and the quantized graphs as well.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write
from dartrt.runtime.manifest import FORMAT, MANIFEST_NAME, write_manifest

CALIBRATION_DIR = "calibration"
TRACES_DIR = f"{CALIBRATION_DIR}/traces"
REPORT_FILE = f"{CALIBRATION_DIR}/report.json"


def atomic_json(path: str | Path, data: dict) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def atomic_move(src: str | Path, dst: str | Path) -> None:
    """Move a finished file into the package (copy to a hidden sibling first when on another disk)."""
    atomic_write(dst, lambda p: shutil.copyfile(src, p))


def package_manifest(pkg: str | Path) -> dict:
    """The package manifest dict, *not* file-checked: calibration replaces listed files (a new
    variant, new traces) before it rewrites the manifest, and a run interrupted in between must not
    lock the next run out. Readers that run graphs go through `Manifest.load`, which checks hashes."""
    path = Path(pkg) / MANIFEST_NAME
    if not Path(pkg).is_dir():
        raise DartrtError(f"package folder not found: {pkg}")
    if not path.is_file():
        raise DartrtError(f"{path} is missing: not an exported dartrt package (run `dartrt export`)")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or "graphs" not in data or "model" not in data:
        raise DartrtError(f"{path} is not a dartrt package manifest")
    return data


def update_calibration_entry(pkg: str | Path, key: str, value) -> dict:
    """Set ``manifest['calibration'][key] = value`` and rewrite the manifest (all files re-hashed)."""
    data = package_manifest(pkg)
    section = dict(data.get("calibration") or {})
    section[key] = value
    data["calibration"] = section
    return write_manifest(pkg, data)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DartrtError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DartrtError(f"{path} is not valid JSON ({exc})") from None
