"""The CLI: generation end to end, LlamaGen conversion, and one clear line for every bad input."""

import json
import subprocess
import sys

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dartrt.cli import main
from dartrt.dar.checkpoint import load_checkpoint, random_checkpoint, save_checkpoint


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_generate_preset_writes_pngs_and_grid(tmp_path):
    result = run("generate", "tiny-dar", "-c", 1, "-c", 4, "--n", 2, "--seed", 3, "-o", tmp_path)
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["0000_class1.png", "0001_class1.png", "0002_class4.png", "0003_class4.png", "grid.png"]
    img = Image.open(tmp_path / "0000_class1.png")
    assert img.size == (16, 16) and img.mode == "RGB"
    assert Image.open(tmp_path / "grid.png").size[1] > 2 * 16


def test_generate_is_seeded(tmp_path):
    for sub in ("a", "b"):
        assert run("generate", "tiny-llamagen", "-c", 2, "--seed", 5, "-o", tmp_path / sub).exit_code == 0
    a = np.asarray(Image.open(tmp_path / "a" / "0000_class2.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "0000_class2.png"))
    assert (a == b).all()


def test_checkpoint_round_trip_through_cli(tmp_path):
    ckpt = random_checkpoint("tiny-1d", seed=4)
    save_checkpoint(tmp_path / "ck", ckpt.model, ckpt.vq, ckpt.image_size)
    loaded = load_checkpoint(tmp_path / "ck")
    for k, v in ckpt.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    result = run("generate", tmp_path / "ck", "-c", 0, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output


def test_convert_llamagen(tmp_path):
    """A LlamaGen-layout GPT (DDP "model" nesting, _orig_mod. prefix, stale freqs_cis) and VQ state dict
    convert into our format with every tensor preserved."""
    src = random_checkpoint("tiny-llamagen", seed=2)
    gpt = {f"_orig_mod.{k}": v for k, v in src.model.state_dict().items()}
    gpt["freqs_cis"] = torch.zeros(3)
    torch.save({"model": gpt}, tmp_path / "GPT.pt")
    vq = dict(src.vq.state_dict())
    vq["quantize.codebook_used"] = torch.zeros(4)
    torch.save({"model": vq}, tmp_path / "VQ.pt")
    result = run("convert", "llamagen", "--gpt", tmp_path / "GPT.pt", "--vq", tmp_path / "VQ.pt",
                 "--model", "tiny-llamagen", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(tmp_path / "out")
    for k, v in src.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model"]["rope_class_row"] == "zero"


@pytest.mark.parametrize("minutes", ["-1", "nan", "inf"])
def test_train_demo_refuses_a_bad_budget_before_training(minutes, tmp_path):
    result = run("train-demo", "--quick", "--budget-minutes", minutes, "-o", tmp_path / "demo")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "--budget-minutes must be" in lines[0], result.output
    assert not (tmp_path / "demo").exists()


def test_console_script_prints_no_traceback(tmp_path):
    """The installed entry point, in a real process: one line on stderr, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "dartrt.cli", "generate", "tiny-dar", "-c", "99", "-o",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: class id 99 is outside [0, 10)"
    assert "Traceback" not in proc.stderr + proc.stdout


def test_export_refuses_to_overwrite(tmp_path, tiny_dar_package):
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_dar_package, pkg)
    before = sorted(p.name for p in pkg.iterdir())
    result = run("export", "tiny-dar", "-o", pkg)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "already holds a package (--force replaces" in lines[0]
    assert sorted(p.name for p in pkg.iterdir()) == before


# ---- generate's output folder (issue 23) ------------------------------------------------------------------
def test_generate_writes_each_batch_as_it_finishes(tiny_dar_package, tmp_path, monkeypatch):
    """An interrupt in the second batch keeps the first batch's PNGs (and says so)."""
    import dartrt.runtime.pipeline as pipeline

    real, calls = pipeline.run_request, []

    def interrupted_second_batch(backend, request, *args, **kwargs):
        calls.append(len(request.images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(backend, request, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_request", interrupted_second_batch)
    result = run("generate", tiny_dar_package, "-c", 0, "-c", 1, "--n", 2, "--batch-size", 2, "-o", tmp_path / "o")
    assert result.exit_code == 130 and calls == [2, 2]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["0000_class0.png", "0001_class0.png"]
    lines = [line for line in result.output.strip().splitlines() if line]
    assert lines[-2:] == [f"kept 2 finished image(s) in {tmp_path / 'o'}", "interrupted"], result.output


def test_generate_progress_counts_images(tiny_dar_package, tmp_path):
    result = run("generate", tiny_dar_package, "-c", 0, "--n", 3, "--batch-size", 2, "-o", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "3.0/3 images" in result.output and "step" not in result.output.split("wrote")[0]


def test_overwrite_removes_only_generate_outputs(tiny_dar_package, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    for name in ("0007_class3.png", "grid.png", "keep.txt", "notes.png"):
        (out / name).write_bytes(b"x")
    result = run("generate", tiny_dar_package, "-c", 0, "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["0000_class0.png", "grid.png", "keep.txt", "notes.png"]
    assert (out / "keep.txt").read_bytes() == b"x" and (out / "notes.png").read_bytes() == b"x"


def test_generate_checks_an_unwritable_folder_first(tiny_dar_package):
    import os

    if os.access("/proc/sys", os.W_OK):
        pytest.skip("no unwritable folder to try here (/proc/sys is writable)")
    result = run("generate", tiny_dar_package, "-o", "/proc/sys/dartrt-out")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and lines == ["error: cannot write to /proc/sys/dartrt-out: /proc/sys is not writable"]


def test_every_option_has_help():
    """One vocabulary: every option of every command says what it does."""
    from dartrt.cli import main as group

    missing = [f"{name} {param.opts[0]}" for name, command in group.commands.items()
               for sub in ([command] if not hasattr(command, "commands") else command.commands.values())
               for param in sub.params if isinstance(param, click.Option) and not param.help]
    assert missing == []
