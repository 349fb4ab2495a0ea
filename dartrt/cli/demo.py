"""`dartrt train-demo` and `dartrt eval-demo`: the bundled demo model's recipe and its judge."""

from __future__ import annotations

from pathlib import Path

import click

from dartrt.extras import require
from dartrt.runtime.errors import DartrtError

from .common import backend_option, check_training_output, model_name_in, one_line_errors, open_backend, threads_option


@click.command("train-demo")
@click.option("-o", "--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the trained model (config, weights, VQ, classifier, train_log.json, metrics.json). "
                   "Default: models/demo, or models/demo-anyorder with --any-order.")
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
@click.option("--any-order", is_flag=True,
              help="Train the any-order demo instead (docs/oar.md): the --from demo's classifier and VQ "
                   "decoder, its encoder refitted, its DAR trained further on its own order mixed with random "
                   "permutations.")
@click.option("--from", "source", type=click.Path(file_okay=False), default=None,
              help="With --any-order: the demo folder it starts from (default: the bundled models/demo).")
@click.option("--random-share", type=click.FloatRange(0.0, 1.0), default=None,
              help="With --any-order: the share of training sequences in a random order, in [0, 1] (default 0.5; "
                   "the rest follow the model's native order).")
@click.option("--scratch", is_flag=True,
              help="With --any-order: train the DAR from scratch instead of from the --from demo's weights.")
@one_line_errors
def train_demo_cmd(out, quick, run_eval, threads, reuse_classifier, cache_dir, budget_minutes, any_order, source,
                   random_share, scratch):
    """Retrain the bundled demo (classifier, VQ tokenizer, DAR) from scratch, seeded, on the CPU; with
    --any-order, train the any-order demo from it."""
    import dataclasses
    import math

    require(("torch", "safetensors"), "`dartrt train-demo`")
    if budget_minutes is not None and (not math.isfinite(budget_minutes) or budget_minutes < 0):
        raise DartrtError(f"--budget-minutes must be a finite number >= 0, got {budget_minutes}")
    if not any_order:
        for flag, value in (("--from", source), ("--random-share", random_share), ("--scratch", scratch or None)):
            if value is not None:
                raise DartrtError(f"{flag} is an --any-order option")
    else:
        if reuse_classifier:
            raise DartrtError("--reuse-classifier does not apply to --any-order (it copies the --from demo's judge)")
        _train_anyorder(out or "models/demo-anyorder", source, quick, threads, cache_dir, budget_minutes,
                        random_share, scratch, run_eval)
        return
    out = out or "models/demo"
    check_training_output(out, "DAR-demo")
    from dartrt.dar.demo.train import QUICK, DemoRecipe, train_demo

    recipe = dataclasses.replace(QUICK if quick else DemoRecipe(), threads=threads)
    if budget_minutes is not None:
        recipe = dataclasses.replace(recipe, budget_minutes=budget_minutes or None)
    report = train_demo(out, recipe, log=click.echo, reuse_classifier=reuse_classifier, cache_dir=cache_dir)
    click.echo(f"trained in {report['timings_seconds']['total']:.0f}s: {report['timings_seconds']}")
    if run_eval:
        _eval_demo(out, n_per_class=2 if quick else 50, seed=0, backend="torch", write=True)


def _train_anyorder(out, source, quick, threads, cache_dir, budget_minutes, random_share, scratch, run_eval):
    import dataclasses

    from dartrt.dar.checkpoint import BUNDLED
    from dartrt.dar.demo.anyorder import QUICK, AnyOrderRecipe, train_anyorder_demo

    recipe = dataclasses.replace(QUICK if quick else AnyOrderRecipe(), threads=threads, init_from_source=not scratch)
    if budget_minutes is not None:
        recipe = dataclasses.replace(recipe, budget_minutes=budget_minutes or None)
    if random_share is not None:
        recipe = dataclasses.replace(recipe, dar=dataclasses.replace(recipe.dar, random_order_share=random_share))
    source = source or BUNDLED
    check_training_output(out, f"{model_name_in(source) or 'DAR-demo'}-anyorder")
    report = train_anyorder_demo(out, source, recipe, log=click.echo, cache_dir=cache_dir)
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


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DartrtError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise DartrtError(f"{what} must list integers >= 0, got {text!r}")
    return values


@click.command("eval-orders")
@click.argument("source", required=False)
@click.option("--orders", default="raster,diagonal,random,adaptive", show_default=True,
              help="Comma-separated scan orders to judge: raster, diagonal, diagonal-mirror, random (a random "
                   "permutation per image) and adaptive (the model chooses; any-order models only).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds, each >= 0.")
@click.option("--n", "n_per_class", type=click.IntRange(min=2), default=50, show_default=True,
              help="Images per class and seed, >= 2.")
@click.option("--cfg", type=click.FloatRange(min=0.0, max=1e4), default=None,
              help="CFG scale in [0, 1e4] (default: the model's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=50, show_default=True, help="Images per batch, >= 1.")
@click.option("--candidates", type=click.IntRange(min=1), default=None,
              help="adaptive: score only the N free cells nearest the painted region, >= 1 (default: every free cell).")
@click.option("--cells-per-step", type=click.IntRange(min=1), default=1, show_default=True,
              help="adaptive: cells painted per step, >= 1.")
@backend_option()
@threads_option
@click.option("--write", "write_to", type=click.Path(dir_okay=False), default=None,
              help="Merge the rows into this metrics JSON file (created if missing; rows of other orders are kept).")
@click.option("--label", default=None,
              help="Store the rows under LABEL-ORDER instead of ORDER (e.g. 'after-oar' for a fine-tuned model).")
@one_line_errors
def eval_orders_cmd(source, orders, seeds, n_per_class, cfg, batch_size, candidates, cells_per_step, backend, threads,
                    write_to, label):
    """Class accuracy and Fréchet distance ratio of generated demo images per scan order and seed (the
    eval-demo judge; docs/oar.md)."""
    import json

    from dartrt.dar.checkpoint import BUNDLED
    from dartrt.runtime.fileio import atomic_write_json
    require(("torch", "safetensors"), "`dartrt eval-orders` (its judge is a torch classifier)")
    from dartrt.dar.demo.order_eval import ORDERS, evaluate_orders

    names = tuple(o.strip() for o in orders.split(",") if o.strip())
    unknown = [o for o in names if o not in ORDERS]
    if not names or unknown:
        raise DartrtError(f"--orders: unknown order {unknown[0] if unknown else orders!r}; use {', '.join(ORDERS)}")
    engine = open_backend(source, backend, threads=threads)
    folder = Path(source) if source else BUNDLED
    classifier_dir = folder if (folder / "classifier.json").is_file() else BUNDLED
    report = evaluate_orders(engine, classifier_dir, names, _int_list(seeds, "--seeds"), n_per_class, cfg,
                             batch_size, log=click.echo, candidates=candidates, cells_per_step=cells_per_step)
    for order, entry in report["by_order"].items():
        mean = entry["mean"]
        click.echo(f"{order:>9} mean: class accuracy {mean['class_accuracy']:.3f}, Fréchet distance "
                   f"{mean['frechet_distance']:.3f} ({mean['fd_ratio_to_real']:.2f}x real)")
    if write_to:
        path = Path(write_to)
        try:
            merged = json.loads(path.read_text()) if path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DartrtError(f"cannot parse {path}: {exc}") from None
        protocol = {k: v for k, v in report.items() if k != "by_order"}
        for order, entry in report["by_order"].items():
            merged.setdefault("by_order", {})[f"{label}-{order}" if label else order] = {
                **entry, "protocol": {**protocol, "source": str(source or BUNDLED)}}
        atomic_write_json(path, merged)
        click.echo(f"wrote {path}")


@click.command("oar-finetune")
@click.argument("source", type=click.Path(file_okay=False))
@click.option("-o", "--out", type=click.Path(file_okay=False), required=True,
              help="Folder for the fine-tuned model (weights, VQ, encoder, classifier, oar_log.json, oar_orders.npz).")
@click.option("--budget-minutes", type=click.FloatRange(min=0.0, max=1e4), default=15.0, show_default=True,
              help="Wall-clock budget in [0, 1e4] minutes for the whole command (extraction, then the fine-tune until "
                   "it is spent). 0: no clock (every --images order, then the recipe's step cap).")
@click.option("--images", type=click.IntRange(min=1), default=2000, show_default=True,
              help="At most this many training images get their orders extracted, >= 1 (fewer if the extraction's "
                   "share of the budget runs out first).")
@click.option("--extract-share", type=click.FloatRange(0.05, 0.95), default=0.5, show_default=True,
              help="Share of the budget the extraction may use, in [0.05, 0.95].")
@click.option("--rule", type=click.Choice(["confidence", "likelihood"]), default="confidence", show_default=True,
              help="Which free cell is next during extraction: the most confident prediction (OAR, the adaptive "
                   "sampler's rule) or the highest probability of the cell's true token.")
@click.option("--random-share", type=click.FloatRange(0.0, 1.0), default=0.25, show_default=True,
              help="Share of fine-tune sequences in a random order instead of their extracted one, in [0, 1].")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch threads, >= 1.")
@click.option("--quick", is_flag=True, help="A seconds-long smoke run (tiny counts; not a useful model).")
@one_line_errors
def oar_finetune_cmd(source, out, budget_minutes, images, extract_share, rule, random_share, threads, quick):
    """OAR's second stage: extract the any-order model's preferred orders on training images (teacher-forced,
    the most confident free cell next), then fine-tune it on them (docs/oar.md)."""
    import dataclasses

    require(("torch", "safetensors"), "`dartrt oar-finetune`")
    from dartrt.dar.demo.oar import QUICK, OARRecipe, oar_finetune

    recipe = QUICK if quick else OARRecipe(images=images)
    recipe = dataclasses.replace(recipe, rule=rule, extract_share=extract_share, threads=threads,
                                 budget_minutes=None if quick or budget_minutes == 0 else budget_minutes,
                                 finetune=dataclasses.replace(recipe.finetune, random_order_share=random_share))
    if Path(out).resolve() == Path(source).resolve():
        raise DartrtError(f"-o {out} is SOURCE itself; the fine-tuned model goes to a folder of its own")
    name = model_name_in(source) or "the fine-tuned model"
    check_training_output(out, name if "oar" in name else f"{name}-oar")  # the name oar_finetune gives it
    report = oar_finetune(source, out, recipe, log=click.echo)
    click.echo(f"done in {report['timings_seconds']['total']:.0f}s: {report['timings_seconds']}")
