"""`dartrt verify`: the parity ladder of a package against its PyTorch reference."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dartrt.extras import EXPORT_MODULES, require
from dartrt.runtime.errors import DartrtError

from .common import one_line_errors


@click.command("verify")
@click.argument("package", type=click.Path(file_okay=False))
@click.option("--backend", default="onnxruntime", show_default=True,
              help="onnxruntime (CUDA when it runs there, else CPU) | onnxruntime-cpu | onnxruntime-cuda | tensorrt.")
@click.option("--source", default=None,
              help="Checkpoint folder or preset the package was exported from. Default: the manifest's source.")
@click.option("--seeds", type=int, default=2, show_default=True, help="Seeds for the sequence-level runs.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime (default: all).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the checks to this JSON file.")
@click.option("--precision", default=None,
              help="fp32 (default on onnxruntime; held to 1e-4), fp16 or a calibration variant (held to "
                   "teacher-forced top-1 agreement); on tensorrt the engine precision (default: best built).")
@one_line_errors
def verify(package, backend, source, seeds, threads, json_path, precision):
    """Check PACKAGE against the PyTorch reference: graphs, teacher-forced step logits, generated token
    grids, decoded images, and the decode graph under Polygraphy. Exit 1 if any check fails."""
    import json

    from dartrt.runtime.fileio import atomic_write
    require(EXPORT_MODULES, "`dartrt verify` (it rebuilds the torch reference)")
    from dartrt.verify import ParitySettings, format_table, verify_package

    if threads is not None and threads < 1:
        raise DartrtError(f"--threads must be >= 1, got {threads}")
    if json_path is not None and not Path(json_path).resolve().parent.is_dir():
        raise DartrtError(f"cannot write {json_path}: its folder does not exist")
    settings = ParitySettings(seeds=seeds, threads=threads)
    report = verify_package(package, backend, source, settings, log=lambda msg: click.echo(f"  {msg}", err=True),
                            precision=precision)
    click.echo(f"{report.package}: {report.backend} on {report.device} against {report.source}")
    if report.precision != "fp32":
        click.echo(f"precision {report.precision}: judged by teacher-forced top-1 agreement (step:top1); the fp32 "
                   "bounds (1e-4 logits, identical tokens) are shown as INFO, not applied")
    click.echo(format_table(report.checks))
    failed = [c.name for c in report.failed]
    click.echo(f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} ({report.seconds:.1f}s)")
    if json_path is not None:
        text = json.dumps(report.to_json(), indent=2) + "\n"
        atomic_write(Path(json_path), lambda p: Path(p).write_text(text))
    if failed:
        sys.exit(1)
