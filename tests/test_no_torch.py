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


D_AR_SCRIPT = BLOCK_TORCH + """
import numpy as np
from dartrt import runtime
from dartrt.runtime import d_ar
assert runtime.decode is d_ar.decode
images = runtime.generate(sys.argv[1], [0, 1], seed=0, on_preview=lambda group, previews: None)
tokens = np.zeros((1, 16), dtype=np.int64)
decoded, previews = d_ar.decode(sys.argv[1], tokens, previews=True, output="float")
assert len(images) == 2 and decoded.shape == (1, 3, 32, 32) and len(previews) == 4
assert "torch" not in sys.modules, "torch was imported"
print("ok", sorted(m for m in sys.modules if m.startswith(("dartrt.dar", "dartrt.exporter"))))
"""


def test_d_ar_generate_and_decode_without_torch(tiny_d_ar_package):
    """A D-AR package generates (tokens, streamed decoder, previews) and decodes tokens with torch blocked."""
    proc = subprocess.run([sys.executable, "-c", D_AR_SCRIPT, str(tiny_d_ar_package)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok []", proc.stdout
