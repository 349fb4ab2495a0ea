"""The whole ladder for one package: open it, rebuild its reference, run every rung, report."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dartrt.runtime.backend import Backend
from dartrt.runtime.contract import CANDIDATES, DECODE
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest

from .adaptive import adaptive_checks
from .checks import Check, GraphHook, ParityReport, ParitySettings, skipped
from .polygraphy_rung import polygraphy_check
from .rungs import _generation_runs, graph_checks, image_check, sequence_checks, step_check

SUPPORTED_PRECISIONS = ("fp32",)


# ---- the whole ladder --------------------------------------------------------------------------------------
def run_ladder(manifest: Manifest, reference, backend: Backend, settings: ParitySettings | None = None,
               extra_checks: Sequence[GraphHook] = (), log: Callable[[str], None] | None = None,
               precision: str = "fp32") -> list[Check]:
    """Every rung for an opened backend and its torch reference (a `dartrt.dar.torch_backend.TorchBackend`).

    ``precision``: what the backend runs (its graphs are ``manifest``'s, so pass the precision's view);
    anything but fp32 is judged by the lower-precision rules of the module docstring."""
    say = log or (lambda _msg: None)
    settings = settings or ParitySettings()
    if manifest.precision not in SUPPORTED_PRECISIONS:
        raise DartrtError(f"verify's bounds are for {', '.join(SUPPORTED_PRECISIONS)} packages; this one is "
                          f"{manifest.precision} and has no stated tolerances yet")
    say("graph checks")
    checks = graph_checks(manifest)
    for hook in extra_checks:
        checks += list(hook(manifest))
    say(f"generation runs: {settings.seeds} seeds x greedy/sampling, torch and {backend.name} in lockstep")
    runs = _generation_runs(reference, backend, settings, adaln=bool(manifest.data["model"].get("adaln")))
    checks += step_check(runs, backend.info.seq_len, settings.tolerance, precision)
    checks += sequence_checks(runs, settings, precision)
    say("image decode")
    checks.append(image_check(reference, backend, runs.grids[:settings.images]))
    if CANDIDATES in manifest.data["graphs"] and precision == "fp32" and hasattr(backend, "score_candidates"):
        say("adaptive order: candidate calls in lockstep, then each side on its own")
        checks += adaptive_checks(reference, backend, settings, settings.tolerance)
    if precision != "fp32":
        checks.append(skipped("polygraphy:decode", settings.tolerance.describe(),
                              f"its only bound is fp32's; {precision} is judged by step:top1"))
        return checks
    say("polygraphy")
    providers = list(getattr(backend, "provider_specs", None) or ["CPUExecutionProvider"])
    checks.append(polygraphy_check(manifest.graph(DECODE).path, runs.feeds, runs.expected, providers,
                                   settings.tolerance))
    return checks


def verify_package(pkg_dir: str | Path, backend: str = "onnxruntime", source: str | None = None,
                   settings: ParitySettings | None = None, extra_checks: Sequence[GraphHook] = (),
                   log: Callable[[str], None] | None = None, precision: str | None = None) -> ParityReport:
    """Open the package (hashes checked) at ``precision`` (None: fp32 on onnxruntime, the best engine on
    tensorrt; see `dartrt.runtime.precisions`), rebuild its reference, and run the ladder. On onnxruntime the
    graph rows check the precision's own files."""
    import torch

    from dartrt.dar.reference import reference_checkpoint
    from dartrt.dar.torch_backend import TorchBackend
    from dartrt.runtime.package import open_package_backend
    from dartrt.runtime.precisions import precision_manifest, resolve_precision

    settings = settings or ParitySettings()
    start = time.perf_counter()
    manifest = Manifest.load(pkg_dir)
    if manifest.data.get("family") == "d-ar":
        raise DartrtError(f"{pkg_dir} is a D-AR package: dartrt verify checks DAR and LlamaGen packages only; a D-AR "
                          "package's graphs are checked against torch when it is exported (docs/d-ar.md)")
    ckpt = reference_checkpoint(manifest, source)
    options = {} if settings.threads is None else {"intra_op_threads": settings.threads}
    engine = open_package_backend(pkg_dir, backend, precision=precision, verify_hashes=False,
                                  **options)  # just hashed by load
    running = str(getattr(engine, "precision", None) or "fp32")
    if backend != "tensorrt" and running != "fp32":
        manifest = precision_manifest(manifest, resolve_precision(manifest.data, running, pkg_dir))
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        reference = TorchBackend(ckpt)
        checks = run_ladder(manifest, reference, engine, settings, extra_checks, log, running)
    finally:
        torch.set_num_threads(threads)
    device = getattr(engine, "device", "?")
    report = ParityReport(Path(pkg_dir), f"{engine.name}", device, ckpt.source, checks, precision=running)
    report.seconds = time.perf_counter() - start
    return report
