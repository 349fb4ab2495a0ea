"""`dartrt export` never deletes what is not its own (issue 23, data loss): --force replaces a dartrt package
and nothing else, the source is never a target, concurrent exports cannot replace each other, and an
export killed by SIGTERM or Ctrl-C leaves no temp folder behind (a later export removes old ones)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from dartrt.cli import main  # noqa: E402
from dartrt.dar.checkpoint import random_checkpoint, save_checkpoint  # noqa: E402
from dartrt.exporter import export_package  # noqa: E402
from dartrt.exporter.target import check_target, lock_path, staging_folder  # noqa: E402
from dartrt.runtime.errors import DartrtError  # noqa: E402
from dartrt.runtime.fileio import exclusive_lock  # noqa: E402
from dartrt.runtime.manifest import load_manifest  # noqa: E402


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output.strip().splitlines()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_force_never_replaces_a_folder_that_is_not_a_package(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    code, lines = run("export", "tiny-dar", "-o", target, "--force")
    assert code == 2 and len(lines) == 1 and "is not empty and is not a dartrt package" in lines[0]
    assert (target / "keep.txt").read_text() == "x"


def test_the_source_checkpoint_is_never_a_target(tmp_path):
    ckpt = random_checkpoint("tiny-dar")
    folder = tmp_path / "ck"
    save_checkpoint(folder, ckpt.model, ckpt.vq, ckpt.image_size)
    before = sorted(p.name for p in folder.iterdir())
    for out in (folder, folder / "pkg"):
        code, lines = run("export", folder, "-o", out, "--force")
        assert code == 2 and len(lines) == 1 and "the checkpoint being exported" in lines[0], lines
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize("make", ["file", "under-file", "cwd"])
def test_targets_that_cannot_be_packages_are_refused_before_exporting(tmp_path, make, monkeypatch):
    """`-o .`, `-o FILE`, `-o FILE/x`: one line at once, not after the whole export ran."""
    (tmp_path / "f").write_text("x")
    target = {"file": tmp_path / "f", "under-file": tmp_path / "f" / "pkg", "cwd": Path(".")}[make]
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    code, lines = run("export", "tiny-dar", "-o", target, "--force")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert time.perf_counter() - start < 5  # refused before any graph was exported
    assert (tmp_path / "f").read_text() == "x"


def test_force_replaces_a_package_and_an_empty_folder_is_fine(tmp_path, tiny_dar_package):
    empty = tmp_path / "empty"
    empty.mkdir()
    check_target(empty, force=False)
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_dar_package, pkg)
    with pytest.raises(DartrtError, match="already holds a package"):
        check_target(pkg, force=False)
    check_target(pkg, force=True)  # a package may be replaced


def test_a_second_export_to_the_same_target_fails_with_one_line(tmp_path):
    """The lock: while one export holds OUT, another gets one line naming the holder."""
    out = tmp_path / "pkg"
    with exclusive_lock(lock_path(out), "x"):
        with pytest.raises(DartrtError, match=r"is in use by another dartrt process \(pid \d+"):
            export_package(random_checkpoint("tiny-dar"), out, check=False, log=lambda *a: None)
    assert not out.exists() and not leftovers(tmp_path)


def test_a_target_written_meanwhile_is_not_replaced(tmp_path):
    """Re-checked at the final rename: a folder that appeared during the export is left alone."""
    out = tmp_path / "pkg"
    with pytest.raises(DartrtError, match="is not empty and is not a dartrt package"):
        with staging_folder(out, force=False) as tmp:
            (tmp / "graph.onnx").write_bytes(b"ours")
            out.mkdir()
            (out / "theirs.txt").write_text("y")
    assert (out / "theirs.txt").read_text() == "y" and not leftovers(tmp_path)


def test_stale_temp_folders_of_the_target_are_removed(tmp_path):
    out = tmp_path / "pkg"
    for stale in (f".{out.name}.tmp-dead1", f".{out.name}.old-123"):
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "big.onnx").write_bytes(b"0" * 100)
    (tmp_path / ".other.tmp-x").mkdir()  # another target's: not ours to touch
    export_package(random_checkpoint("tiny-dar"), out, check=False, log=lambda *a: None)
    assert leftovers(tmp_path) == [".other.tmp-x"]
    assert load_manifest(out)["model"]["name"] == "tiny-dar"


# Two moments: early (torch's exporter still lazily importing, where a KeyboardInterrupt used to come
# out as torch's own AttributeError report) and later in the export itself.
@pytest.mark.parametrize("sig, delay", [(signal.SIGTERM, 0.5), (signal.SIGINT, 0.5), (signal.SIGINT, 1.5)])
def test_an_interrupted_export_removes_its_temp_folder(tmp_path, sig, delay):
    proc = subprocess.Popen([sys.executable, "-m", "dartrt.cli", "export", "tiny-dar", "-o", str(tmp_path / "pkg")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not leftovers(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert leftovers(tmp_path), "the export never created its temp folder"
    time.sleep(delay)
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    # The script ends by the signal after cleaning up (the shell shows 130 / 143), every time.
    assert proc.returncode == -sig, err[-2000:]
    assert err.strip().splitlines()[-1] in ("terminated", "interrupted") and "Traceback" not in err
    assert not leftovers(tmp_path) and not (tmp_path / "pkg").exists()
