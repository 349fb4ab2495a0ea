"""ONNX Runtime sessions come from one loader (dartrt.runtime.sessions) with named profiles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ort = pytest.importorskip("onnxruntime")

from dartrt.runtime import sessions  # noqa: E402
from dartrt.runtime.errors import DartrtError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("runtime", "exporter", "verify", "graphs", "calibration", "bench", "dar", "dartrt", "serve")


@pytest.mark.parametrize("profile", sorted(sessions.PROFILES))
def test_every_profile_asks_for_exact_int8_gemms(profile):
    """The U8S8 saturation fix must reach every session (on VNNI CPUs ORT ignores the option)."""
    opts = sessions.PROFILES[profile].options()
    assert opts.get_session_config_entry("session.x64quantprecision") == "1"
    assert opts.inter_op_num_threads == 1


def test_profiles_say_what_they_are_for():
    assert sessions.REFERENCE.options().intra_op_num_threads == 1  # reproducible comparisons
    assert sessions.RUNTIME.options().intra_op_num_threads == sessions.usable_cpus()
    check = sessions.CHECK.options()  # one copy of the weights for multi-GB graphs
    assert check.get_session_config_entry("session.disable_prepacking") == "1"
    assert not check.enable_cpu_mem_arena
    assert check.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert sessions.REFERENCE.but(threads=None, optimization="basic").optimization == "basic"
    with pytest.raises(DartrtError, match="unknown optimization level 'fast'"):
        sessions.RUNTIME.but(optimization="fast")
    with pytest.raises(DartrtError, match="threads must be an integer >= 1"):
        sessions.RUNTIME.but(threads=0)


def test_cuda_ep_keeps_fp32_unless_asked(monkeypatch):
    """The CUDA EP's own default is TF32 on, which put the bundled demo's step logits 0.03 from torch
    on an H200 (30x the fp32 bound); dartrt asks for use_tf32=0 unless told otherwise. Checked by the
    provider list it would request, since this machine has no CUDA EP."""
    monkeypatch.setattr(sessions.ort, "get_available_providers", lambda: [sessions.CUDA_EP, sessions.CPU_EP])
    assert sessions.resolve_providers("auto") == [(sessions.CUDA_EP, {"use_tf32": "0"}), sessions.CPU_EP]
    assert sessions.resolve_providers("cuda", cuda_tf32=True) == [(sessions.CUDA_EP, {"use_tf32": "1"}),
                                                                    sessions.CPU_EP]
    assert sessions.resolve_providers("cpu") == [sessions.CPU_EP]
    with pytest.raises(DartrtError, match="unknown device 'tpu'"):
        sessions.resolve_providers("tpu")


def test_a_file_that_is_not_a_graph_is_one_line(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(DartrtError, match=r"onnxruntime cannot load .*x\.onnx") as err:
        sessions.open_session(bad)
    assert "\n" not in str(err.value)


def test_no_other_module_builds_a_session():
    """One owner: every InferenceSession and SessionOptions in dartrt's code is built in sessions.py."""
    pattern = re.compile(r"\b(InferenceSession|SessionOptions)\(")
    offenders = [str(path.relative_to(REPO)) for folder in SOURCE_DIRS if (REPO / folder).is_dir()
                 for path in (REPO / folder).rglob("*.py")
                 if path.name != "sessions.py" and pattern.search(path.read_text(encoding="utf-8"))]
    assert offenders == []
