"""The PyTorch reference of an exported package, rebuilt from what its manifest records.

verify, bench and calibration all compare a package with the model it was exported from. The exporter
records that model as ``source``: a checkpoint folder, or ``preset NAME (random weights)`` (rebuilt
with seed 0, as `random_checkpoint` and `dartrt export PRESET` make it). This is the one parser of that
record, and the one check that a reference really is the package's model (equal config and image size),
so a wrong ``--source`` is refused by name instead of failing every numeric check.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest

from .checkpoint import BUNDLED, Checkpoint, load_checkpoint, preset_source, random_checkpoint, resolve_source
from .config import PRESETS, ModelConfig

PRESET_SOURCE = re.compile(re.escape(preset_source("@")).replace("@", r"(?P<name>\S+)"))


def reference_checkpoint(manifest: Manifest, source: str | None = None,
                         hint: str = "pass --source with the checkpoint folder or preset it was exported from"
                         ) -> Checkpoint:
    """The torch model that produced the package: ``source`` (a checkpoint folder or preset) if given,
    else the manifest's record. ``hint`` ends the error when neither can be found (what the command
    offers instead)."""
    recorded = manifest.source
    if source is not None:
        ckpt = resolve_source(source)
    elif (match := PRESET_SOURCE.fullmatch(recorded)) and match["name"] in PRESETS:
        ckpt = random_checkpoint(match["name"], seed=0)
    elif recorded and Path(recorded).is_dir():
        ckpt = load_checkpoint(recorded)
    elif recorded and Path(recorded).resolve() == BUNDLED:
        ckpt = resolve_source(None)  # says how to get the bundled model back
    else:
        what = f"its source {recorded!r} is not available here" if recorded else "its manifest names no source"
        raise DartrtError(f"cannot rebuild the reference of {manifest.root}: {what}; {hint}")
    want = json.loads(json.dumps(manifest.data["model"]))
    have = json.loads(json.dumps(ckpt.config.to_dict()))
    for key in ("any_order",):  # added after format 3: a package written before it has the default
        want.setdefault(key, next(f.default for f in dataclasses.fields(ModelConfig) if f.name == key))
    if have != want:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise DartrtError(f"source {ckpt.source} does not match the package (model config differs in "
                          f"{', '.join(diff[:4])}); {hint}")
    if int(manifest.data.get("image_size", ckpt.image_size)) != ckpt.image_size:
        raise DartrtError(f"source {ckpt.source} makes {ckpt.image_size}px images, the package "
                          f"{manifest.data['image_size']}px; {hint}")
    return ckpt
