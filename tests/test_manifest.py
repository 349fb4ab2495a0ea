"""The package manifest: hashes every file on write, refuses a damaged package by name on load."""

from __future__ import annotations

import json
import os

import pytest

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import FORMAT, FORMAT_VERSION, Manifest, load_manifest, sha256_file, write_manifest


def _manifest() -> dict:
    model = {"name": "fake", "num_classes": 10, "vocab_size": 512, "grid_size": 8, "rope": "4d",
             "order": "diagonal", "default_cfg": 4.0, "default_cfg_schedule": "constant", "default_top_k": 0,
             "default_top_p": 1.0, "default_temperature": 1.0, "n_layer": 2, "n_head": 4, "head_dim": 16}
    graph = {"inputs": [{"name": "x", "dtype": "int64", "shape": ["batch"]}], "outputs": []}
    return {"model": model, "image_size": 16, "opset": 24, "precision": "fp32",
            "graphs": {"prefill": {"file": "prefill.onnx", **graph}, "decode": {"file": "decode.onnx", **graph},
                       "vq_decoder": {"file": "sub/vq_decoder.onnx", **graph}}}


@pytest.fixture
def pkg(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "prefill.onnx").write_bytes(b"prefill-graph" * 100)
    (root / "decode.onnx").write_bytes(b"decode-graph" * 100)
    (root / "decode.onnx.data").write_bytes(os.urandom(5000))
    (root / "sub" / "vq_decoder.onnx").write_bytes(b"vq")
    (root / ".decode.onnx.tmp").write_bytes(b"half-written temp file")
    write_manifest(root, _manifest())
    return root


def _error(pkg, **kw) -> str:
    with pytest.raises(DartrtError) as info:
        load_manifest(pkg, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_round_trip(pkg):
    data = load_manifest(pkg)
    assert data["format"] == FORMAT and data["format_version"] == FORMAT_VERSION
    assert sorted(data["files"]) == ["decode.onnx", "decode.onnx.data", "prefill.onnx", "sub/vq_decoder.onnx"]
    assert data["files"]["decode.onnx.data"] == {"sha256": sha256_file(pkg / "decode.onnx.data"), "bytes": 5000}
    assert data["graphs"] == _manifest()["graphs"] and data["engines"] == {}
    assert not [p for p in pkg.iterdir() if p.name.startswith(".manifest")]  # no temp file left behind
    view = Manifest.load(pkg)
    assert view.info.grid_size == 8 and view.info.image_size == 16
    assert view.graph("vq_decoder").path == pkg / "sub" / "vq_decoder.onnx"
    with pytest.raises(DartrtError, match="no 'engine' graph"):
        view.graph("engine")


def test_flipped_byte_is_corrupt(pkg):
    path = pkg / "decode.onnx.data"
    data = bytearray(path.read_bytes())
    data[1234] ^= 0x01
    path.write_bytes(bytes(data))
    message = _error(pkg)
    assert "decode.onnx.data" in message and "corrupt or was modified (sha256 mismatch)" in message
    load_manifest(pkg, verify_hashes=False)  # sizes still match: only the hash catches it


def test_truncated_file(pkg):
    path = pkg / "prefill.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    message = _error(pkg, verify_hashes=False)
    assert "prefill.onnx" in message and "truncated" in message


def test_deleted_file(pkg):
    (pkg / "sub" / "vq_decoder.onnx").unlink()
    message = _error(pkg)
    assert "vq_decoder.onnx" in message and "missing" in message


def test_tampered_manifest_is_not_json(pkg):
    path = pkg / "manifest.json"
    path.write_text(path.read_text()[:-20])
    message = _error(pkg)
    assert "manifest.json" in message and "not valid JSON" in message


def test_wrong_format_version(pkg):
    path = pkg / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    message = _error(pkg)
    assert "manifest.json" in message and "99" in message and f"version {FORMAT_VERSION}" in message


def test_wrong_format(pkg):
    path = pkg / "manifest.json"
    path.write_text(json.dumps({"format": "something-else"}))
    assert "not a dartrt package manifest" in _error(pkg)


def test_missing_manifest_and_folder(pkg, tmp_path):
    (pkg / "manifest.json").unlink()
    message = _error(pkg)
    assert "manifest.json" in message and "missing" in message
    message = _error(tmp_path / "nowhere")
    assert "nowhere" in message and "not found" in message


def test_graph_file_not_listed(pkg):
    data = load_manifest(pkg)
    data["graphs"]["decode"]["file"] = "other.onnx"
    write_manifest(pkg, data)  # a writer's bug, not a hand edit: the checksum holds
    message = _error(pkg)
    assert "other.onnx" in message and "decode" in message


@pytest.mark.parametrize("field, value", [("num_classes", 20), ("default_cfg", 9.0), ("grid_size", 4)])
def test_hand_edited_manifest_is_refused(pkg, field, value):
    """manifest.json carries its own checksum: editing the model entry by hand (which used to give
    onnxruntime or TypeError tracebacks later) is one line when the package opens."""
    path = pkg / "manifest.json"
    data = json.loads(path.read_text())
    data["model"][field] = value
    path.write_text(json.dumps(data, indent=2))
    message = _error(pkg, verify_hashes=False)
    assert "changed after dartrt wrote it" in message and "checksum" in message


@pytest.mark.parametrize("field, value, says", [
    ("num_classes", 0, "model num_classes must be an integer >= 1, got 0"),
    ("vocab_size", "many", "model vocab_size must be an integer >= 2, got 'many'"),
    ("grid_size", 2.5, "model grid_size must be an integer >= 1"),
    ("default_cfg", float("inf"), "model default_cfg must be a finite number >= 0"),
    ("default_top_p", 0.0, "model default_top_p must be in (0, 1]"),
    ("rope", "3d", "model rope must be one of 1d, 2d, 4d"),
])
def test_model_entry_is_validated(pkg, field, value, says):
    """A manifest with a consistent checksum but an impossible model entry (a writer's bug) is refused
    by name when it opens."""
    data = load_manifest(pkg)
    data["model"][field] = value
    write_manifest(pkg, data)
    assert says in _error(pkg)


def test_old_format_says_how_to_re_export(pkg):
    path = pkg / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 1
    path.write_text(json.dumps(data))
    message = _error(pkg)
    assert "format_version 1 is not supported" in message and "dartrt export SOURCE -o" in message


def test_write_manifest_replaces_files_and_stamps_format(pkg):
    (pkg / "extra.bin").write_bytes(b"123")
    data = write_manifest(pkg, {**_manifest(), "format_version": 0, "files": {"stale": {}}})
    assert data["format_version"] == FORMAT_VERSION and "stale" not in data["files"]
    assert load_manifest(pkg)["files"]["extra.bin"]["bytes"] == 3


def test_trace_data_is_size_checked_at_open(pkg):
    """Calibration traces are data no backend runs: opening a package checks their size but leaves the
    hash to the trace loader (calibration.traceset), so `generate` does not hash 100+ MB per start."""
    traces = pkg / "calibration" / "traces"
    traces.mkdir(parents=True)
    (traces / "decode.npz").write_bytes(b"\0" * 4096)
    write_manifest(pkg, load_manifest(pkg))
    (traces / "decode.npz").write_bytes(b"\1" * 4096)  # same size, other bytes
    load_manifest(pkg)  # opens: not hashed here
    (traces / "decode.npz").write_bytes(b"\1" * 100)
    assert "truncated" in _error(pkg)
