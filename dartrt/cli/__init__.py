"""`dartrt`: export, build, calibrate, generate, verify and bench DAR image generators.

One module per command group (polygraphy keeps its tools apart the same way); this one only assembles
them. Every command turns a `DartrtError` (bad input, corrupt file, unsupported setting, a missing
optional dependency) into one line on stderr and exit status 2; torch and onnxruntime are imported only
by the commands that need them.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys

import click

from .bench import bench
from .d_ar import decode_cmd, eval_demo_dar_cmd, train_demo_dar_cmd
from .demo import eval_demo_cmd, eval_orders_cmd, oar_finetune_cmd, train_demo_cmd
from .export import convert, export_cmd
from .generate import generate
from .precision import build_cmd, calibrate_cmd
from .serve import bench_serve_cmd, serve_cmd
from .verify import verify


class DartrtGroup(click.Group):
    """click's group, with its usage errors (an unknown option, a value out of range) reported like every
    other bad input: one line naming the problem, exit status 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "dartrt"
            click.echo(f"error: {' '.join(exc.format_message().split())} (see `{where} --help`)", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=DartrtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dartrt")
def main() -> None:
    """Export DAR-family image generators to ONNX/TensorRT packages and run them."""


for command in (generate, export_cmd, convert, verify, bench, calibrate_cmd, build_cmd, train_demo_cmd,
                eval_demo_cmd, eval_orders_cmd, oar_finetune_cmd):
    main.add_command(command)
main.add_command(serve_cmd)
main.add_command(bench_serve_cmd)
for command in (decode_cmd, train_demo_dar_cmd, eval_demo_dar_cmd):  # D-AR (dartrt.cli.d_ar)
    main.add_command(command)


def run() -> None:
    """The `dartrt` script: `main`, and a command stopped by Ctrl-C or SIGTERM (which cleaned up and
    exited 130 or 143) ends the process by that signal once the interpreter's exit handlers ran, the
    POSIX convention CPython follows for an uncaught Ctrl-C: the shell still shows 130/143, and a parent
    process sees a signal death every time (CPython alone would turn some exits into one, depending on
    where the signal landed)."""
    stopped_by: list[signal.Signals] = []

    def die_by_signal() -> None:  # registered first, so it runs after every later exit handler
        if stopped_by:
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(stopped_by[0], signal.SIG_DFL)
            os.kill(os.getpid(), stopped_by[0])

    atexit.register(die_by_signal)
    try:
        main()
    except SystemExit as exc:
        signals = {130: signal.SIGINT, 143: signal.SIGTERM}
        if exc.code in signals:
            stopped_by.append(signals[exc.code])
        raise


__all__ = ["main", "run"]
