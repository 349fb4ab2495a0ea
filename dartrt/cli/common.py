"""What every command shares: one-line errors, one spelling per option, opening a SOURCE.

Options that mean the same thing in several commands are defined once here (`--backend`, `--threads`,
`--batch-size`, `--precision`, `--seed`, `--atol/--rtol`, `--json`), so they have one spelling, one
range and one help text everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click

from dartrt.extras import require
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import MANIFEST_NAME, is_package

# --backend: what runs a SOURCE. Packages run on onnxruntime (CPU or CUDA EP) or TensorRT engines; the
# torch reference runs checkpoints and presets.
PACKAGE_BACKENDS = ("auto", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
SOURCE_BACKENDS = (*PACKAGE_BACKENDS, "torch")
BACKEND_HELP = ("auto: onnxruntime (on CUDA when it really runs there) for a package, torch for a checkpoint or "
                "preset; onnxruntime-cpu / onnxruntime-cuda force the execution provider; tensorrt runs the "
                "package's built engines; torch runs the PyTorch reference.")


class Terminated(BaseException):
    """SIGTERM as an exception, so that every ``finally`` and ``except BaseException`` cleanup runs (an
    export removes its temp folder) as it does for Ctrl-C."""


# The signal that stopped the running command, if any. A library may turn the exception a signal raised
# into an error of its own (torch's exporter reports a half-imported module when Ctrl-C lands in one of
# its lazy imports); once a signal came, whatever unwinds is reported as the interruption it is.
_received: signal.Signals | None = None
EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _on_signal(signum: int, frame) -> None:
    global _received
    _received = signal.Signals(signum)
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = {sig: signal.signal(sig, _on_signal) for sig in EXIT_STATUS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _report_signal(sig: signal.Signals) -> None:
    click.echo("\ninterrupted" if sig == signal.SIGINT else "\nterminated", err=True)
    sys.exit(EXIT_STATUS[sig])


def one_line_errors(fn):
    """Report user-facing errors as a single line (exit 2) instead of a traceback; Ctrl-C and SIGTERM
    clean up and say so on a line of their own (exit status 130 and 143; `dartrt.cli.run` then ends the
    process by the signal itself)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _signals_as_exceptions():
                return fn(*args, **kwargs)
        except (KeyboardInterrupt, Terminated) as exc:
            _report_signal(_received or (signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM))
        except DartrtError as exc:
            if _received is not None:
                _report_signal(_received)
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except Exception:
            if _received is not None:
                _report_signal(_received)
            raise

    return wrapper


def model_name_in(folder: str | Path) -> str | None:
    """The model name in ``folder``'s config.json (a checkpoint), or None when it holds none."""
    try:
        name = json.loads((Path(folder) / "config.json").read_text())["model"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def check_training_output(out: str | Path, model_name: str) -> None:
    """A training command writes its files into OUT: a new or empty folder, or one holding an earlier
    model of the same name (retraining in place, as `train-demo` does with models/demo). Anything else is
    refused, so that `train-demo-dar -o models/demo` cannot overwrite the DAR demo's weights."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DartrtError(f"{out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    found = model_name_in(out)
    if found != model_name:
        what = f"a model named {found!r}" if found else "files that are not a model"
        raise DartrtError(f"{out} holds {what}; write {model_name} to a new or empty folder, or to one holding "
                          f"an earlier {model_name}")


# ---- shared options -----------------------------------------------------------------------------------
def backend_option(choices: tuple[str, ...] = SOURCE_BACKENDS, default: str = "auto"):
    return click.option("--backend", type=click.Choice(choices), default=default, show_default=True,
                        help=BACKEND_HELP)


def threads_option(fn):
    return click.option("--threads", type=click.IntRange(min=1), default=None,
                        help="CPU threads for onnxruntime and torch, >= 1 (default: every usable core).")(fn)


def precision_option(fn):
    return click.option("--precision", default=None, metavar="NAME",
                        help="A precision the package holds: fp32 (the exported graphs; default), fp16, or a "
                             "calibration variant (int8, int8-dynamic, ...); an unknown name lists what the "
                             "package has. Packages only.")(fn)


def json_option(fn):
    return click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
                        help="Also write the report to this JSON file (atomically).")(fn)


def tolerance_options(fn):
    """--atol/--rtol: the rule graphs are judged by (`dartrt.runtime.metrics.Tolerance`)."""
    from dartrt.runtime.metrics import FP32_STEP

    fn = click.option("--rtol", type=click.FloatRange(min=0), default=FP32_STEP.rtol, show_default=True,
                      help="Relative part of the bound: max|test - ref| <= atol + rtol * max|ref| per output.")(fn)
    return click.option("--atol", type=click.FloatRange(min=0), default=FP32_STEP.atol, show_default=True,
                        help="Absolute part of the bound on fp32 step outputs (logits, caches).")(fn)


def generation_options(fn):
    """The sampling options shared by `generate` and friends (defaults come from the model). Their ranges
    are checked by the runtime (`dartrt.runtime.scheduler.build_request`), so the CLI and the API say the
    same thing about the same bad value."""
    options = [
        click.option("--class", "-c", "classes", type=int, multiple=True,
                     help="Class id in [0, num_classes) (repeatable). Default: every class."),
        click.option("--n", "n_per_class", type=int, default=1, show_default=True,
                     help="Images per class, >= 1."),
        click.option("--cfg", type=float, default=None,
                     help="Classifier-free guidance scale, >= 0 and at most 1e4 (1 = off). Default: the model's."),
        click.option("--cfg-schedule", type=click.Choice(["constant", "linear", "power-cosine"]), default=None,
                     help="How the guidance weight moves over the tokens. Default: the model's."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed, >= 0: image i draws from its own generator seeded by (seed, i)."),
        click.option("--order", default=None,
                     help="Scan order: diagonal | diagonal-mirror | raster, adaptive (the model chooses each image's "
                          "order; any-order models), or a .npy file of integers: G*G cell indices r*G+c, or "
                          "[G*G, 2] (row, col) pairs. Default: the model's."),
        click.option("--top-k", type=int, default=None,
                     help="Keep the k most likely tokens, >= 0 (0 = off). Default: the model's."),
        click.option("--top-p", type=float, default=None,
                     help="Nucleus sampling mass in (0, 1] (1 = off). Default: the model's."),
        click.option("--temperature", type=float, default=None,
                     help="Sampling temperature, >= 0 (0 = greedy). Default: the model's."),
        click.option("--batch-size", type=int, default=8, show_default=True,
                     help="Images per batched forward, >= 1 (CFG doubles the rows)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def check_json_path(json_path: str | None) -> None:
    """A report path must be writable before a long run starts, not after it."""
    if json_path is None:
        return
    folder = Path(json_path).resolve().parent
    if not folder.is_dir():
        raise DartrtError(f"cannot write {json_path}: its folder does not exist")


def load_order(order: str | None):
    """--order: a name, or a .npy file of integers (validated by `dartrt.runtime.orders.make_order`)."""
    if order is None or not order.endswith(".npy"):
        return order
    import numpy as np

    try:
        return np.load(order, allow_pickle=False)
    except FileNotFoundError:
        raise DartrtError(f"order file not found: {order}") from None
    except IsADirectoryError:
        raise DartrtError(f"order file {order} is a folder") from None
    except EOFError:
        raise DartrtError(f"order file {order} is empty") from None
    except (OSError, ValueError) as exc:
        raise DartrtError(f"cannot read order file {order} as a numpy array: {' '.join(str(exc).split())}") from None


def open_backend(source: str | None, backend: str, dtype: str | None = None, precision: str | None = None,
                 threads: int | None = None):
    """A runtime Backend for SOURCE: a package, a checkpoint folder, a preset, or None (the bundled demo).
    ``precision`` selects a package's graphs; ``dtype`` is the torch reference's; an option that does not
    apply to SOURCE is refused rather than ignored."""
    if source is not None and Path(source).is_dir() and not (Path(source) / "config.json").is_file() \
            and not (Path(source) / MANIFEST_NAME).is_file():
        raise DartrtError(f"{source} is neither a dartrt package (no {MANIFEST_NAME}; `dartrt export` writes one) "
                          "nor a checkpoint folder (no config.json)")
    if source is not None and (Path(source) / MANIFEST_NAME).is_file():
        if backend == "torch":
            raise DartrtError(f"{source} is an exported package; the torch backend needs a checkpoint or preset")
        if dtype is not None:
            raise DartrtError(f"--dtype is for the torch reference; {source} is a package, whose precision is "
                              "chosen with --precision")
        if not is_package(source):
            raise DartrtError(f"{Path(source) / MANIFEST_NAME} is not a dartrt package manifest")
        from dartrt.runtime.package import open_package_backend

        options = {} if threads is None else {"intra_op_threads": threads}
        return open_package_backend(source, backend, precision=precision, **options)
    what = source or "the bundled demo"
    if backend not in ("auto", "torch"):
        raise DartrtError(f"the {backend} backend runs exported packages, and {what} is a checkpoint or preset "
                          "(run `dartrt export` first)")
    if precision is not None:
        raise DartrtError(f"--precision selects a package's graphs, and {what} is not a package; the torch "
                          "backend takes --dtype")
    require(("torch", "safetensors"), f"running {what} with the torch reference (only an exported package runs "
            "without it)")
    import torch

    from dartrt.dar.checkpoint import resolve_source
    from dartrt.dar.torch_backend import TorchBackend

    if threads is not None:
        torch.set_num_threads(threads)
    torch_dtype = {None: torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    from dartrt.dar.d_ar.checkpoint import resolve_d_ar_source  # a D-AR pair: its reference decodes by diffusion

    if (d_ar := resolve_d_ar_source(source)) is not None:
        from dartrt.dar.d_ar.torch_backend import torch_d_ar_backend

        return torch_d_ar_backend(d_ar, dtype=torch_dtype)
    return TorchBackend(resolve_source(source), dtype=torch_dtype)
