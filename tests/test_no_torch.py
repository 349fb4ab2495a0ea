"""The runtime generates from a package with torch unimportable: production hosts need no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("onnxruntime")

# Any attempt to import torch (or a torch submodule), however indirect, raises ImportError.
BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test (import of {name})")
        return None
sys.meta_path.insert(0, _NoTorch())
"""

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
