"""The installable package: one `dartrt` namespace in the wheel, the demo model inside, light requirements."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def source_tree(dest: Path) -> Path:
    """The files a clean clone would have (tracked, plus new files git does not ignore), copied to ``dest``:
    the wheel is built from what would be committed, and its build/ folder does not land in the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know the source files")
    src = source_tree(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("dartrt-*.whl")
    return path


def test_wheel_installs_only_the_dartrt_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"dartrt", next(t for t in top if t.endswith(".dist-info"))}, top
    for part in ("runtime", "dar", "dar/demo", "exporter", "graphs", "calibration", "bench", "cli"):
        assert f"dartrt/{part}/__init__.py" in names, part
    assert not any(n.startswith(("dartrt/tests", "tests/", "tools/")) for n in names)


def test_wheel_ships_the_demo_model_and_op_table(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for file in ("config.json", "model.safetensors", "vq.safetensors", "classifier.json", "classifier.safetensors"):
        assert f"dartrt/models/demo/{file}" in names, file
    assert "dartrt/graphs/data/trt_ops_11.0.json" in names
    shipped = zipfile.ZipFile(wheel).getinfo("dartrt/models/demo/model.safetensors").file_size
    assert shipped == (REPO / "models/demo/model.safetensors").stat().st_size
    for file in ("config.json", "model.safetensors", "vq.safetensors", "vq_encoder.safetensors", "metrics.json"):
        assert f"dartrt/models/demo-anyorder/{file}" in names, file
    for file in ("config.json", "model.safetensors", "tokenizer.safetensors", "encoder.safetensors", "encoder.json",
                 "metrics.json"):
        assert f"dartrt/models/demo-dar/{file}" in names, file


def test_base_requirements_are_the_runtime_only(wheel):
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(meta_name).decode())
    requires = meta.get_all("Requires-Dist")
    base = [r for r in requires if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("<")[0].split("=")[0].strip() for r in base) == ["click", "numpy", "pillow",
                                                                                         "tqdm"]
    torch = [r for r in requires if r.startswith("torch")]
    assert torch and all('extra == "export"' in r for r in torch) and not any("==" in r.split(";")[0] for r in torch)
    assert meta["License-Expression"] == "Apache-2.0"
