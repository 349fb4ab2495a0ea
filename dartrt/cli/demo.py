"""`dartrt train-demo` and `dartrt eval-demo`: the bundled demo model's recipe and its judge."""

from __future__ import annotations

from pathlib import Path

import click

from dartrt.extras import require
from dartrt.runtime.errors import DartrtError

from .common import backend_option, one_line_errors, open_backend, threads_option


@click.command("train-demo")
@click.option("-o", "--out", type=click.Path(file_okay=False), default="models/demo", show_default=True,
              help="Folder for the trained model (config, weights, VQ, classifier, train_log.json, metrics.json).")
@click.option("--quick", is_flag=True, help="A seconds-long smoke run (tiny step counts; not a usable model).")
@click.option("--eval/--no-eval", "run_eval", default=True, show_default=True,
              help="Measure image quality afterwards and write metrics.json.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="torch threads (use 1 on a machine shared with other jobs: oversubscription is far slower).")
@click.option("--reuse-classifier", is_flag=True, help="Keep the (seeded) classifier already in --out.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Keep the trained VQ and its token grids here and reuse them when the recipe matches "
                   "(retraining only the DAR then skips the tokenizer).")
@click.option("--budget-minutes", type=float, default=None,
              help="Wall-clock budget for the whole run; the DAR trains until it is spent (its LR schedule follows "
                   "the clock). Default: the recipe's 45. 0: no clock, the DAR runs its 20,000-step cap (hours).")
@one_line_errors
def train_demo_cmd(out, quick, run_eval, threads, reuse_classifier, cache_dir, budget_minutes):
    """Retrain the bundled demo (classifier, VQ tokenizer, DAR) from scratch, seeded, on the CPU."""
    import dataclasses
    import math

    require(("torch", "safetensors"), "`dartrt train-demo`")
    from dartrt.dar.demo.train import QUICK, DemoRecipe, train_demo

    recipe = dataclasses.replace(QUICK if quick else DemoRecipe(), threads=threads)
    if budget_minutes is not None:
        if not math.isfinite(budget_minutes) or budget_minutes < 0:
            raise DartrtError(f"--budget-minutes must be a finite number >= 0, got {budget_minutes}")
        recipe = dataclasses.replace(recipe, budget_minutes=budget_minutes or None)
    report = train_demo(out, recipe, log=click.echo, reuse_classifier=reuse_classifier, cache_dir=cache_dir)
    click.echo(f"trained in {report['timings_seconds']['total']:.0f}s: {report['timings_seconds']}")
    if run_eval:
        _eval_demo(out, n_per_class=2 if quick else 50, seed=0, backend="torch", write=True)


@click.command("eval-demo")
@click.argument("source", required=False)
@click.option("--n", "n_per_class", type=click.IntRange(min=1), default=50, show_default=True,
              help="Images per class, >= 1.")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True, help="Seed, >= 0.")
@backend_option()
@threads_option
@click.option("--write", is_flag=True, help="Store the result as SOURCE's metrics.json (checkpoints only).")
@one_line_errors
def eval_demo_cmd(source, n_per_class, seed, backend, threads, write):
    """Class accuracy and Fréchet distance of generated demo images, at CFG 1.0 and the default CFG."""
    _eval_demo(source, n_per_class, seed, backend, write, threads)


def _eval_demo(source, n_per_class: int, seed: int, backend: str, write: bool, threads: int | None = None) -> None:

    from dartrt.dar.checkpoint import BUNDLED
    from dartrt.runtime.fileio import atomic_write_json
    require(("torch", "safetensors"), "`dartrt eval-demo` (its judge is a torch classifier)")
    from dartrt.dar.demo.evaluate import evaluate_backend

    engine = open_backend(source, backend, threads=threads)
    folder = Path(source) if source else BUNDLED
    classifier_dir = folder if (folder / "classifier.json").is_file() else BUNDLED
    report = evaluate_backend(engine, classifier_dir, n_per_class=n_per_class, seed=seed)
    click.echo(f"real held-out images: Fréchet distance {report['real_heldout_frechet_distance']:.3f}")
    for cfg, row in report["by_cfg"].items():
        click.echo(f"cfg {cfg:>4}: class accuracy {row['class_accuracy']:.3f}, Fréchet distance "
                   f"{row['frechet_distance']:.3f} ({row['fd_ratio_to_real']:.2f}x real; shift of the means "
                   f"{row['frechet_mean_term']:.3f}), {row['seconds']:.0f}s")
        if row["per_class_fd_ratio"]:
            click.echo("  Fréchet distance by class, x real: " + ", ".join(
                f"{name} {ratio:.1f}" for name, ratio in row["per_class_fd_ratio"].items() if ratio is not None))
    if write:
        atomic_write_json(folder / "metrics.json", report)
        click.echo(f"wrote {folder / 'metrics.json'}")
