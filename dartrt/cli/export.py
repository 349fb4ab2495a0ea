"""`dartrt export` and `dartrt convert`: checkpoints in, packages (or our checkpoint format) out."""

from __future__ import annotations

from pathlib import Path

import click

from dartrt.extras import EXPORT_MODULES, require
from dartrt.runtime.contract import MAX_OPSET, MIN_OPSET, OPSET

from .common import one_line_errors, tolerance_options


@click.group()
def convert() -> None:
    """Convert third-party checkpoints into dartrt's format (safetensors + config.json)."""


@convert.command("llamagen")
@click.option("--gpt", "gpt_path", type=click.Path(), required=True, help="LlamaGen GPT c2i .pt")
@click.option("--vq", "vq_path", type=click.Path(), required=True, help="LlamaGen VQ-16 .pt (vq_ds16_c2i.pt)")
@click.option("--model", "preset", default="GPT-B", show_default=True, help="GPT-B/L/XL/XXL/3B")
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True,
              help="Checkpoint folder to write (config.json + safetensors).")
@one_line_errors
def convert_llamagen(gpt_path, vq_path, preset, out):
    """Import LlamaGen c2i GPT + VQ-16 checkpoints."""
    require(("torch", "safetensors"), "`dartrt convert`")
    from dartrt.dar.convert import convert_llamagen as run

    run(gpt_path, vq_path, preset, out)
    click.echo(f"wrote {out}")


@convert.command("d-ar")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(), required=True,
              help="D-AR tokenizer .pt (D-AR-tokenizer_v1.pt or a trainer checkpoint)")
@click.option("--gpt", "gpt_path", type=click.Path(), required=True, help="D-AR GPT .pt (D-AR-L-360K.pt)")
@click.option("--model", "preset", default="GPT-L", show_default=True,
              help="GPT-B/L/XL/XXL/3B (depth and widths are read from the checkpoint)")
@click.option("--gpt-weights", type=click.Choice(["model", "ema"]), default="model", show_default=True,
              help="Which GPT weights to take (the public sampler takes 'model')")
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True,
              help="Checkpoint folder to write (config.json + safetensors for the GPT and the tokenizer).")
@one_line_errors
def convert_d_ar(tokenizer_path, gpt_path, preset, gpt_weights, out):
    """Import D-AR's tokenizer and GPT checkpoints (showlab/D-AR)."""
    require(("torch", "safetensors"), "`dartrt convert`")
    from dartrt.dar.d_ar import convert_d_ar as run

    converted = run(tokenizer_path, gpt_path, preset, out, gpt_weights=gpt_weights)
    for note in converted.notes:
        click.echo(f"note: GPT {note}")
    click.echo(f"wrote {out}")


@click.command("export")
@click.argument("source", required=False)
@click.option("-o", "--out", type=click.Path(), required=True,
              help="Package folder to write: new, empty, or (with --force) an existing dartrt package.")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=OPSET, show_default=True,
              help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (the exporter writes broken files outside it).")
@click.option("--force", is_flag=True,
              help="Replace OUT if it is a dartrt package. Nothing else is ever replaced: a folder with other "
                   "files, or the checkpoint being exported, is refused.")
@click.option("--adaptive/--no-adaptive", default=None,
              help="Also export the adaptive-order graphs (candidates, commit: docs/oar.md), 4D-RoPE models only. "
                   "Default: when the model's config says it was trained for any order.")
@tolerance_options
@one_line_errors
def export_cmd(source, out, opset, force, adaptive, atol, rtol):
    """Export SOURCE (checkpoint folder, preset, or the bundled model) to an ONNX package; every graph is
    checked in onnxruntime against eager torch under --atol/--rtol before the package is written."""
    require(EXPORT_MODULES, "`dartrt export`")
    from dartrt.dar.checkpoint import BUNDLED, resolve_source
    from dartrt.exporter import export_package
    from dartrt.exporter.target import check_target
    from dartrt.runtime.metrics import FP32_IMAGE, Tolerance

    folder = BUNDLED if source is None else Path(source)
    check_target(Path(out), force, folder if folder.is_dir() else None)  # before the checkpoint is loaded
    from dartrt.dar.d_ar.checkpoint import resolve_d_ar_source

    ckpt = resolve_d_ar_source(source) or resolve_source(source)  # a D-AR pair adds its tokenizer's graphs
    click.echo(f"exporting {ckpt.source} → {out}")
    tolerance = Tolerance(atol, rtol)
    image = Tolerance(max(FP32_IMAGE.atol, atol), max(FP32_IMAGE.rtol, rtol))
    report = export_package(ckpt, out, force=force, opset=opset, log=click.echo, tolerance=tolerance,
                            image_tolerance=image, adaptive=adaptive)
    click.echo(f"wrote {report.package} in {report.seconds:.1f}s")
