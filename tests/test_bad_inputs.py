"""Bad input, CLI and API: one line that names the problem, exit status 2, never a traceback, nothing lost.

Each case below is run as a user would run it; the messages and exit statuses it produces are also the
table in docs/errors.md, which the last test renders from this run and compares with the file, so the
documentation cannot drift from the code. After changing a message, regenerate the table with
``DARTRT_WRITE_ERRORS_DOC=1 .venv/bin/python -P -m pytest -q tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from dartrt import runtime  # noqa: E402
from dartrt.cli import main  # noqa: E402
from dartrt.dar.checkpoint import random_checkpoint, save_checkpoint  # noqa: E402
from dartrt.runtime.errors import DartrtError  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
RESULTS: dict[str, tuple[str, str, int]] = {}  # case id -> (what was given, the message, exit status)


@dataclass(frozen=True)
class Case:
    id: str
    given: str  # shown in the table
    args: tuple  # CLI arguments, with {pkg}, {files}, {out} placeholders
    needle: str  # a part of the one line it must print
    midrun: bool = False  # found while generating: the progress bar was already on stderr


CLI_CASES = [
    # data loss
    Case("export-force-not-a-package", "`export -o DIR --force`, DIR holds other files",
         ("export", "tiny-dar", "-o", "{files}/userdir", "--force"), "is not empty and is not a dartrt package"),
    Case("export-onto-source", "`export CK -o CK --force`", ("export", "{files}/ck", "-o", "{files}/ck", "--force"),
         "is (or holds) the checkpoint being exported"),
    Case("export-under-file", "`export -o FILE/pkg`", ("export", "tiny-dar", "-o", "{files}/afile/pkg"),
         "is a file, not a folder"),
    Case("export-existing-package", "`export -o PKG` (PKG exists, no --force)", ("export", "tiny-dar", "-o", "{pkg}"),
         "already holds a package (--force replaces that package)"),
    Case("generate-stale-images", "`generate -o DIR`, DIR holds an earlier run's PNGs",
         ("generate", "{pkg}", "-c", "0", "-o", "{files}/earlier"), "image(s) of an earlier run"),
    Case("generate-out-under-file", "`generate -o FILE/x`", ("generate", "{pkg}", "-o", "{files}/afile/x"),
         "is a file, not a folder"),
    Case("train-dar-demo-onto-another-model", "`train-demo-dar -o CK` (CK holds a DAR checkpoint)",
         ("train-demo-dar", "--quick", "-o", "{files}/ck"), "holds a model named 'tiny-dar'; write D-AR-demo to a new"),
    Case("train-dar-demo-tokens-without-vq-encoder", "`train-demo-dar --tokens-from CK` (CK has no VQ encoder)",
         ("train-demo-dar", "--quick", "--tokens-from", "{files}/ck", "-o", "{out}"), "has no VQ encoder"),
    Case("train-demo-onto-user-files", "`train-demo -o DIR`, DIR holds other files",
         ("train-demo", "--quick", "-o", "{files}/userdir"), "holds files that are not a model"),
    Case("oar-finetune-onto-source", "`oar-finetune CK -o CK`", ("oar-finetune", "{files}/ck", "-o", "{files}/ck"),
         "is SOURCE itself"),
    # settings
    Case("class-out-of-range", "`generate -c 10` (10 classes)", ("generate", "{pkg}", "-c", "10", "-o", "{out}"),
         "class id 10 is outside [0, 10)"),
    Case("class-negative", "`generate -c -1`", ("generate", "{pkg}", "-c", "-1", "-o", "{out}"),
         "class id -1 is outside"),
    Case("seed-negative", "`generate --seed=-1`", ("generate", "{pkg}", "--seed=-1", "-o", "{out}"),
         "seed must be an integer >= 0"),
    Case("cfg-negative", "`generate --cfg -1`", ("generate", "{pkg}", "--cfg", "-1", "-o", "{out}"), "cfg"),
    Case("cfg-nan", "`generate --cfg nan`", ("generate", "{pkg}", "--cfg", "nan", "-o", "{out}"), "cfg"),
    Case("cfg-huge", "`generate --cfg 1e39`", ("generate", "{pkg}", "--cfg", "1e39", "-o", "{out}"), "cfg"),
    Case("temperature-negative", "`generate --temperature -0.5`",
         ("generate", "{pkg}", "--temperature", "-0.5", "-o", "{out}"), "temperature must be"),
    Case("temperature-huge", "`generate --temperature 1e39`",
         ("generate", "{pkg}", "--temperature", "1e39", "-o", "{out}"), "temperature must be"),
    Case("temperature-word", "`generate --temperature hot`",
         ("generate", "{pkg}", "--temperature", "hot", "-o", "{out}"), "'hot' is not a valid float"),
    Case("top-p-zero", "`generate --top-p 0`", ("generate", "{pkg}", "--top-p", "0", "-o", "{out}"),
         "top_p must be in (0, 1]"),
    Case("top-p-above-one", "`generate --top-p 1.5`", ("generate", "{pkg}", "--top-p", "1.5", "-o", "{out}"),
         "top_p must be in (0, 1]"),
    Case("top-k-negative", "`generate --top-k -2`", ("generate", "{pkg}", "--top-k", "-2", "-o", "{out}"),
         "top_k must be"),
    Case("n-zero", "`generate --n 0`", ("generate", "{pkg}", "--n", "0", "-o", "{out}"), "n_per_class must be"),
    Case("batch-zero", "`generate --batch-size 0`", ("generate", "{pkg}", "--batch-size", "0", "-o", "{out}"),
         "batch_size must be"),
    Case("dtype-on-package", "`generate PKG --dtype fp16`", ("generate", "{pkg}", "--dtype", "fp16", "-o", "{out}"),
         "--dtype is for the torch reference"),
    Case("backend-unknown", "`verify PKG --backend torch`", ("verify", "{pkg}", "--backend", "torch"),
         "Invalid value for '--backend'"),
    # orders
    Case("order-unknown", "`--order zigzag`", ("generate", "{pkg}", "--order", "zigzag", "-o", "{out}"),
         "unknown order 'zigzag'"),
    Case("order-floats", "`--order` file of non-integer floats (arange(256)+0.5)",
         ("generate", "{pkg}", "--order", "{files}/float.npy", "-o", "{out}"), "order holds floats"),
    Case("order-complex", "`--order` file of complex numbers",
         ("generate", "{pkg}", "--order", "{files}/complex.npy", "-o", "{out}"), "order holds complex numbers"),
    Case("order-numeric-strings", "`--order` file of numeric strings",
         ("generate", "{pkg}", "--order", "{files}/digits.npy", "-o", "{out}"), "order holds strings"),
    Case("order-objects", "`--order` file of Python objects",
         ("generate", "{pkg}", "--order", "{files}/objects.npy", "-o", "{out}"), "cannot read order file"),
    Case("order-empty-file", "`--order` an empty .npy file",
         ("generate", "{pkg}", "--order", "{files}/empty.npy", "-o", "{out}"), "is empty"),
    Case("order-too-short", "`--order` file of 15 cells",
         ("generate", "{pkg}", "--order", "{files}/order15.npy", "-o", "{out}"), "order has 15 cells"),
    Case("order-missing", "`--order` file that does not exist",
         ("generate", "{pkg}", "--order", "{files}/nowhere.npy", "-o", "{out}"), "order file not found"),
    # adaptive order and editing (docs/oar.md)
    Case("adaptive-untrained", "`--order adaptive` on a model not trained for any order",
         ("generate", "{pkg}", "--order", "adaptive", "-o", "{out}"), "was not trained for any order"),
    Case("adaptive-2d-rope", "`generate tiny-llamagen --order adaptive --allow-untrained` (2D RoPE)",
         ("generate", "tiny-llamagen", "--order", "adaptive", "--allow-untrained", "-o", "{out}"), "4D RoPE"),
    Case("adaptive-no-graphs", "`--order adaptive --allow-untrained`, package without the candidate graphs",
         ("generate", "{pkg}", "--order", "adaptive", "--allow-untrained", "-o", "{out}"),
         "has no 'candidates' graph"),
    Case("candidates-zero", "`--order adaptive --candidates 0`",
         ("generate", "{pkg}", "--order", "adaptive", "--candidates", "0", "-o", "{out}"),
         "candidates must be an integer >= 1 and <= 64"),
    Case("candidates-too-many", "`--order adaptive --candidates 65` (64 cells)",
         ("generate", "{pkg}", "--order", "adaptive", "--candidates", "65", "-o", "{out}"),
         "candidates must be an integer >= 1 and <= 64"),
    Case("candidates-fixed-order", "`--candidates 8` with a fixed order",
         ("generate", "{pkg}", "--candidates", "8", "-o", "{out}"), "applies to order='adaptive'"),
    Case("confidence-unknown", "`--order adaptive --confidence sure`",
         ("generate", "{pkg}", "--order", "adaptive", "--confidence", "sure", "-o", "{out}"),
         "confidence must be one of max-prob, neg-entropy"),
    Case("cells-per-step-zero", "`--order adaptive --cells-per-step 0`",
         ("generate", "{pkg}", "--order", "adaptive", "--cells-per-step", "0", "-o", "{out}"),
         "cells_per_step must be an integer >= 1"),
    Case("cells-schedule-unknown", "`--order adaptive --cells-schedule cosine`",
         ("generate", "{pkg}", "--order", "adaptive", "--cells-schedule", "cosine", "-o", "{out}"),
         "cells_schedule must be one of constant, linear"),
    Case("allow-untrained-fixed", "`--allow-untrained` with a fixed order",
         ("generate", "{pkg}", "--allow-untrained", "-o", "{out}"), "--allow-untrained applies to"),
    Case("mask-wrong-size", "`--mask` of 8x8 pixels (images are 16x16)",
         ("generate", "{pkg}", "--mask", "{files}/mask8.png", "--tokens", "{files}/grid.npy", "-o", "{out}"),
         "the mask is 8x8 pixels but the model's images are 16x16"),
    Case("mask-alone", "`--mask` without `--tokens` or `--image`",
         ("generate", "{pkg}", "--mask", "{files}/mask16.png", "-o", "{out}"), "from a token grid or from an image"),
    Case("tokens-without-mask", "`--tokens` without `--mask`",
         ("generate", "{pkg}", "--tokens", "{files}/grid.npy", "-o", "{out}"), "editing needs a mask"),
    Case("mask-keeps-all", "`--mask` all black (nothing to generate)",
         ("generate", "{pkg}", "--mask", "{files}/black16.png", "--tokens", "{files}/grid.npy", "-o", "{out}"),
         "the mask keeps every cell"),
    Case("mask-not-an-image", "`--mask` a file that is not an image",
         ("generate", "{pkg}", "--mask", "{files}/afile", "--tokens", "{files}/grid.npy", "-o", "{out}"),
         "cannot read the mask"),
    Case("tokens-out-of-range", "`--tokens` with ids >= the vocabulary (512)",
         ("generate", "{pkg}", "--mask", "{files}/mask16.png", "--tokens", "{files}/grid600.npy", "-o", "{out}"),
         "known tokens must be in [0, 512)"),
    Case("tokens-wrong-shape", "`--tokens` of shape [7, 7] (grid 8)",
         ("generate", "{pkg}", "--mask", "{files}/mask16.png", "--tokens", "{files}/grid7.npy", "-o", "{out}"),
         "known tokens have shape [7, 7]"),
    Case("image-wrong-size", "`--image` of 8x8 pixels",
         ("generate", "{pkg}", "--mask", "{files}/mask16.png", "--image", "{files}/mask8.png", "--allow-untrained",
          "-o", "{out}"), "the image is 8x8 pixels"),
    # sources and files
    Case("source-missing", "`generate PATH` (no such path)", ("generate", "{files}/nowhere", "-o", "{out}"),
         "does not exist: give a package folder"),
    Case("source-neither", "`generate DIR` (no manifest.json, no config.json)",
         ("generate", "{files}/userdir", "-o", "{out}"), "is neither a dartrt package"),
    Case("config-grid-zero", "checkpoint config.json with `grid_size: 0`",
         ("generate", "{files}/grid0", "-o", "{out}"), "grid_size must be an integer >= 1"),
    Case("config-width-word", 'checkpoint config.json with `d_model: "wide"`',
         ("generate", "{files}/wide", "-o", "{out}"), "d_model must be an integer >= 1"),
    Case("config-negative-layers", "checkpoint config.json with `n_layer: -1`",
         ("generate", "{files}/layers", "-o", "{out}"), "n_layer must be an integer >= 1"),
    Case("config-vocab-zero", "checkpoint config.json with `vocab_size: 0`",
         ("generate", "{files}/vocab0", "-o", "{out}"), "vocab_size must be an integer >= 2"),
    Case("config-not-json", "checkpoint config.json that is not JSON", ("generate", "{files}/garbage", "-o", "{out}"),
         "cannot parse"),
    Case("weights-truncated", "checkpoint whose model.safetensors is truncated",
         ("generate", "{files}/trunc", "-o", "{out}"), "model.safetensors"),
    Case("convert-not-a-checkpoint", "`convert llamagen --gpt FILE` (not a torch checkpoint)",
         ("convert", "llamagen", "--gpt", "{files}/garbage/config.json", "--vq", "{files}/garbage/config.json",
          "--model", "tiny-llamagen", "-o", "{files}/converted"), "config.json"),
    # non-finite numbers never become an image
    Case("nan-weights-torch", "checkpoint with NaN in `layers.0.attention.wqkv.weight` (torch backend)",
         ("generate", "{files}/nan", "-c", "0", "-o", "{out}"), "non-finite logits at step 0 for image 0", True),
    Case("nan-codebook-torch", "checkpoint with a NaN VQ codebook (torch backend)",
         ("generate", "{files}/nanvq", "-c", "0", "-o", "{out}"), "non-finite pixels", True),
    Case("nan-weights-onnxruntime", "package whose decode graph holds a NaN weight (onnxruntime)",
         ("generate", "{files}/nanpkg", "-c", "0", "-o", "{out}"), "non-finite logits at step 1 for image 0", True),
    Case("manifest-edited", "`manifest.json` edited by hand (`num_classes: 20`)",
         ("generate", "{files}/edited", "-o", "{out}"), "changed after dartrt wrote it"),
]


# ---- fixtures --------------------------------------------------------------------------------------------
def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    meta = json.loads(path.read_text())
    meta["model"].update(changes)
    path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_dar_package):
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "userdir").mkdir()
    (root / "userdir" / "keep.txt").write_text("the user's")
    (root / "afile").write_text("a file")
    (root / "earlier").mkdir()
    (root / "earlier" / "0000_class0.png").write_bytes(b"png")
    ckpt = random_checkpoint("tiny-dar")
    save_checkpoint(root / "ck", ckpt.model, ckpt.vq, ckpt.image_size)
    for name, changes in {"grid0": {"grid_size": 0}, "wide": {"d_model": "wide"}, "layers": {"n_layer": -1},
                          "vocab0": {"vocab_size": 0}}.items():
        shutil.copytree(root / "ck", root / name)
        _edit_config(root / name, **changes)
    (root / "garbage").mkdir()
    (root / "garbage" / "config.json").write_text("{not json")
    shutil.copytree(root / "ck", root / "trunc")
    weights = root / "trunc" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _nan_checkpoints(root, ckpt)
    _nan_package(root, tiny_dar_package)
    np.save(root / "float.npy", np.arange(256) + 0.5)
    np.save(root / "complex.npy", np.arange(256).astype(complex))
    np.save(root / "digits.npy", np.array([str(i) for i in range(256)]))
    np.save(root / "objects.npy", np.array([{"a": 1}] * 256, dtype=object), allow_pickle=True)
    (root / "empty.npy").write_bytes(b"")
    np.save(root / "order15.npy", np.arange(15))
    _edit_files(root)
    shutil.copytree(tiny_dar_package, root / "edited")
    manifest = root / "edited" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["model"]["num_classes"] = 20
    manifest.write_text(json.dumps(data, indent=2))
    return root


def _edit_files(root: Path) -> None:
    """Masks (16x16 is the tiny DAR's image size), token grids and an image for the editing cases."""
    from PIL import Image

    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(root / "mask16.png")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(root / "black16.png")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "mask8.png")
    np.save(root / "grid.npy", np.zeros((8, 8), dtype=np.int64))
    np.save(root / "grid600.npy", np.full((8, 8), 600, dtype=np.int64))
    np.save(root / "grid7.npy", np.zeros((7, 7), dtype=np.int64))


def _nan_checkpoints(root: Path, ckpt) -> None:
    import copy

    import torch

    nan = copy.deepcopy(ckpt)
    with torch.no_grad():
        nan.model.layers[0].attention.wqkv.weight.fill_(float("nan"))
    save_checkpoint(root / "nan", nan.model, nan.vq, nan.image_size)
    nanvq = copy.deepcopy(ckpt)
    with torch.no_grad():
        nanvq.vq.quantize.embedding.weight.fill_(float("nan"))
    save_checkpoint(root / "nanvq", nanvq.model, nanvq.vq, nanvq.image_size)


def _nan_package(root: Path, package: Path) -> None:
    """A package whose decode graph computes NaN (export would refuse such weights, so the graph is edited
    afterwards and the manifest rewritten, as a damaged engine build or a bad pass would leave it)."""
    import onnx
    from onnx import numpy_helper

    from dartrt.runtime.manifest import load_manifest, write_manifest

    shutil.copytree(package, root / "nanpkg")
    path = root / "nanpkg" / "decode.onnx"
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # a weight matrix
    weights = numpy_helper.to_array(init).copy()
    weights[...] = np.nan
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(model, str(path))
    write_manifest(root / "nanpkg", load_manifest(root / "nanpkg", verify_hashes=False, check_files=False))


def _fill(arg, pkg: Path, files: Path, out: Path) -> str:
    return str(arg).format(pkg=pkg, files=files, out=out)


def _normalise(text: str, files: Path, pkg: Path, out: Path) -> str:
    for path, name in ((files, "DIR"), (pkg.parent, "PKGS"), (out, "OUT")):
        text = text.replace(str(path), name)
    text = re.sub(r"pid \d+", "pid N", text)
    return re.sub(r"/tmp/[^\s,;)]*", "TMP", text)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input_is_one_line(case, files, tiny_dar_package, tmp_path):
    out = tmp_path / "out"
    args = [_fill(a, tiny_dar_package, files, out) for a in case.args]
    before = {p: p.read_bytes() for p in files.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, args, prog_name="dartrt")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert lines[-1].startswith("error: ") and case.needle in lines[-1], result.output
    assert len(lines) == 1 or (case.midrun and not any("error" in line for line in lines[:-1])), result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # a rejected run leaves no output folder behind
    assert {p: p.read_bytes() for p in files.rglob("*") if p.is_file()} == before  # nothing of the user's lost
    RESULTS[case.id] = (case.given, _normalise(lines[-1][len("error: "):], files, tiny_dar_package, out), 2)


# ---- the API: one validation layer, the documented error type ----------------------------------------
API_CASES = [
    ("class-ids-word", 'generate(b, ["abc"])', dict(class_ids=["abc"]), "class id 'abc' is not an integer"),
    ("class-ids-int", "generate(b, 3)", dict(class_ids=3), "class_ids must be a list of integers"),
    ("class-ids-none", "generate(b, None)", dict(class_ids=None), "class_ids must be a list of integers"),
    ("class-ids-nan", "generate(b, [nan])", dict(class_ids=[math.nan]), "class id nan is not an integer"),
    ("class-ids-float", "generate(b, [3.0])", dict(class_ids=[3.0]), "class id 3.0 is not an integer"),
    ("class-ids-2d", "generate(b, [[0, 1]])", dict(class_ids=np.array([[0, 1]])), "class_ids must be a list"),
    ("n-none", "generate(b, [0], n_per_class=None)", dict(n_per_class=None), "n_per_class must be an integer >= 1"),
    ("n-float", "generate(b, [0], n_per_class=2.0)", dict(n_per_class=2.0), "n_per_class must be an integer >= 1"),
    ("cfg-word", 'generate(b, [0], cfg="abc")', dict(cfg="abc"), "cfg must be a number"),
    ("cfg-string-number", 'generate(b, [0], cfg="2")', dict(cfg="2"), "cfg must be a number"),
    ("temperature-word-api", 'generate(b, [0], temperature="hot")', dict(temperature="hot"),
     "temperature must be a number"),
    ("seed-none", "generate(b, [0], seed=None)", dict(seed=None), "seed must be an integer >= 0"),
    ("seed-float", "generate(b, [0], seed=1.7)", dict(seed=1.7), "seed must be an integer >= 0"),
    ("on-step-int", "generate(b, [0], on_step=5)", dict(on_step=5), "on_step must be a callable"),
    ("package-string", 'generate(b, "12")', dict(class_ids="12"), "class_ids must be a list of integers"),
    ("adaptive-untrained-api", 'generate(b, [0], order="adaptive")', dict(order="adaptive"),
     "was not trained for any order"),
    ("candidates-float", 'generate(b, [0], order="adaptive", candidates=2.5)', dict(order="adaptive", candidates=2.5),
     "candidates must be an integer >= 1"),
    ("cells-per-step-huge", 'generate(b, [0], order="adaptive", cells_per_step=65)',
     dict(order="adaptive", cells_per_step=65), "cells_per_step must be an integer >= 1 and <= 64"),
    ("confidence-number", 'generate(b, [0], order="adaptive", confidence=1)', dict(order="adaptive", confidence=1),
     "confidence must be one of max-prob, neg-entropy"),
    ("mask-wrong-size-api", "generate(b, [0], known_tokens=zeros((8, 8), int), mask=ones((3, 3)))",
     dict(known_tokens=np.zeros((8, 8), np.int64), mask=np.ones((3, 3))), "the mask is 3x3 pixels"),
    ("known-tokens-float", "generate(b, [0], known_tokens=zeros((8, 8)), mask=M)",
     dict(known_tokens=np.zeros((8, 8)), mask=np.full((16, 16), 255, np.uint8)), "known tokens must be an integer"),
    ("image-grey", "generate(b, [0], image=zeros((16, 16)), mask=M)",
     dict(image=np.zeros((16, 16), np.uint8), mask=np.full((16, 16), 255, np.uint8), allow_untrained=True),
     "the image must be RGB uint8 [H, W, 3]"),
]


@pytest.mark.parametrize("case_id, given, kwargs, needle", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_is_one_dartrt_error(case_id, given, kwargs, needle, tiny_dar_package):
    backend = _backend(tiny_dar_package)
    kwargs = {"class_ids": [0], **kwargs}
    class_ids = kwargs.pop("class_ids")
    with pytest.raises(DartrtError) as err:
        runtime.generate(backend, class_ids, **kwargs)
    message = str(err.value)
    assert "\n" not in message and needle in message, message
    RESULTS[case_id] = (f"`runtime.{given}`", message, 0)


_BACKENDS: dict = {}


def _backend(pkg):
    if pkg not in _BACKENDS:
        _BACKENDS[pkg] = runtime.open_package_backend(pkg, "onnxruntime-cpu")
    return _BACKENDS[pkg]


# ---- the table in docs/ -------------------------------------------------------------------------------
def render() -> str:
    head = ["# Bad input: what dartrt says", "",
            "Every case below is run by `tests/test_bad_inputs.py`, which renders this table from what the run",
            "printed and fails when the file differs, so the table is what this dartrt does. CLI errors are one",
            "line on stderr (`error: ` + the message) with exit status 2; the API raises `DartrtError` with the",
            "same one-line message (exit status \"-\"; `b` is an opened backend). Paths: DIR is the folder of the",
            "test files, OUT the output folder, PKGS the folder of the test package.", "",
            "| input | message | exit |", "|---|---|---|"]
    rows = []
    for case_id in [c.id for c in CLI_CASES] + [c[0] for c in API_CASES]:
        if case_id in RESULTS:
            given, message, code = RESULTS[case_id]
            rows.append(f"| {given} | {message.replace('|', chr(92) + '|')} | {code or '-'} |")
    return "\n".join(head + rows) + "\n"


def test_errors_doc_is_what_the_cases_print():
    expected = len(CLI_CASES) + len(API_CASES)
    if len(RESULTS) != expected:
        pytest.skip(f"only {len(RESULTS)} of {expected} cases ran (run the whole file to compare the table)")
    text = render()
    if os.environ.get("DARTRT_WRITE_ERRORS_DOC"):
        DOC.write_text(text, encoding="utf-8")
    assert DOC.read_text(encoding="utf-8") == text, "docs/errors.md is stale: regenerate it (module docstring)"
