"""The runtime generates from a package with torch unimportable: production hosts need no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")

from torch_blocker import BLOCK_TORCH  # noqa: E402

SCRIPT = BLOCK_TORCH + """
from dartrt import runtime
images = runtime.generate(sys.argv[1], [0, 1], n_per_class=1, seed=0)
assert len(images) == 2 and images[0].mode == "RGB", images
assert "torch" not in sys.modules, "torch was imported"
heavy = ("onnxruntime", "dartrt.dar", "dartrt.exporter")
print("ok", images[0].size, sorted(m for m in sys.modules if m.startswith(heavy)))
"""


def test_blocker_really_blocks():
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import dartrt.dar.model"], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_generate_without_torch(tiny_dar_package):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_dar_package)], capture_output=True, text=True,
                          timeout=120, )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok"), proc.stdout
    assert "dartrt.dar" not in proc.stdout and "exporter" not in proc.stdout
