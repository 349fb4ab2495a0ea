"""`dartrt`: export, build, calibrate, generate, verify and bench DAR image generators.

One module per command group (polygraphy keeps its tools apart the same way); this one only assembles
them. Every command turns a `DartrtError` (bad input, corrupt file, unsupported setting, a missing
optional dependency) into one line on stderr and exit status 2; torch and onnxruntime are imported only
by the commands that need them.
"""

from __future__ import annotations

import click

from .bench import bench
from .demo import eval_demo_cmd, train_demo_cmd
from .export import convert, export_cmd
from .generate import generate
from .precision import build_cmd, calibrate_cmd
from .serve import bench_serve_cmd, serve_cmd
from .verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dartrt")
def main() -> None:
    """Export DAR-family image generators to ONNX/TensorRT packages and run them."""


for command in (generate, export_cmd, convert, verify, bench, calibrate_cmd, build_cmd, train_demo_cmd,
                eval_demo_cmd):
    main.add_command(command)
main.add_command(serve_cmd)
main.add_command(bench_serve_cmd)

__all__ = ["main"]
