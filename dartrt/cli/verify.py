"""`dartrt verify`: the parity ladder of a package against its PyTorch reference."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dartrt.extras import EXPORT_MODULES, require

from .common import (
    PACKAGE_BACKENDS,
    backend_option,
    check_json_path,
    json_option,
    one_line_errors,
    precision_option,
    threads_option,
    tolerance_options,
)


@click.command("verify")
@click.argument("package", type=click.Path(file_okay=False))
@backend_option(PACKAGE_BACKENDS, default="onnxruntime")
@click.option("--source", default=None,
              help="Checkpoint folder or preset the package was exported from. Default: the manifest's source.")
@click.option("--seeds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Seeds for the sequence-level runs, >= 1.")
@threads_option
@json_option
@precision_option
@tolerance_options
@one_line_errors
def verify(package, backend, source, seeds, threads, json_path, precision, atol, rtol):
    """Check PACKAGE against the PyTorch reference: graphs, teacher-forced step logits, generated token
    grids, decoded images, and the decode graph under Polygraphy. fp32 is held to --atol/--rtol and identical
    tokens; fp16 and INT8 precisions to teacher-forced top-1 agreement. Exit 1 if any check fails."""
    require(EXPORT_MODULES, "`dartrt verify` (it rebuilds the torch reference)")
    from dartrt.runtime.fileio import atomic_write_json
    from dartrt.runtime.metrics import Tolerance
    from dartrt.verify import ParitySettings, format_table, verify_package

    check_json_path(json_path)
    settings = ParitySettings(seeds=seeds, threads=threads, tolerance=Tolerance(atol, rtol))
    report = verify_package(package, "onnxruntime" if backend == "auto" else backend, source, settings,
                            log=lambda msg: click.echo(f"  {msg}", err=True), precision=precision)
    click.echo(f"{report.package}: {report.backend} on {report.device} against {report.source}")
    if report.precision != "fp32":
        click.echo(f"precision {report.precision}: judged by teacher-forced top-1 agreement (step:top1); the fp32 "
                   "bounds (step logits, identical tokens) are shown as INFO, not applied")
    click.echo(format_table(report.checks))
    failed = [c.name for c in report.failed]
    click.echo(f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} ({report.seconds:.1f}s)")
    if json_path is not None:
        atomic_write_json(Path(json_path), report.to_json())
    if failed:
        sys.exit(1)
