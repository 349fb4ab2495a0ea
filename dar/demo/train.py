"""`dartrt train-demo`: retrain the bundled demo (classifier, VQ tokenizer, DAR) from scratch.

Seeded and CPU-only. The three stages run in order because the DAR learns the VQ's tokens; the
classifier is independent and only judges generated images. Everything is written atomically into
the output folder, with the measured metrics in metrics.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write, atomic_write_json, atomic_write_npz

from ..checkpoint import save_checkpoint
from ..config import ModelConfig, get_preset
from ..vq import VQ_PRESETS, VQModel, build_vq
from .classifier import save_classifier, train_classifier
from .shapes import CLASS_NAMES, IMAGE_SIZE, make_batch
from .train_dar import TrainDAROptions, train_dar
from .train_vq import images_to_tensor, train_vq


@dataclass
class DemoRecipe:
    seed: int = 0
    classifier_steps: int = 1200
    classifier_batch: int = 64
    vq_steps: int = 1300
    vq_batch: int = 16
    # 8e-4 reconstructs better than 2e-4 at no cost in time (Fréchet distance of reconstructions 2.5x / 3.6x
    # real data against 4.7x / 4.0x, seeds 0 / 1, docs/demo-model.md).
    vq_lr: float = 8e-4
    train_images: int = 40000  # distinct images tokenised for the DAR
    # One cosine phase (a tuple, so a recipe can add warm restarts) with Muon on the blocks' matrices. Its
    # length is the clock's (``budget_minutes``); 20,000 steps is only a cap, which no 2-core CPU measured
    # here reaches in the budget. The shipped model got 5,608 steps of 32 sequences (0.38-0.44 s each on a
    # 2-core Xeon with AMX); a fixed 3,100 on an AVX-512 EPYC (0.63 s each) gave the previous one: 92.0 %
    # and 5.2x real at CFG 1.25, against 96.8 % and 2.6x now (seed 0, docs/demo-model.md). Higher rates won 900-step
    # proxies but not the full 3,100 steps: 5e-3 tied (loss 0.517 against 0.498), Muon alone at 1e-2 lost
    # (0.568; docs/demo-model.md).
    dar: tuple[TrainDAROptions, ...] = field(default_factory=lambda: (
        TrainDAROptions(steps=20000, batch_size=32, lr=2.5e-3, warmup=100, compile=True, optimizer="muon"),
    ))
    # The DAR's size (heads of 64). In the same compute smaller DARs learned far more than the earlier
    # 6 x 192: on an AVX2 CPU 6 x 128 reached 81.0 % at CFG 1.5 after 1530 steps against 53.6 % for 6 x 192
    # after 1000 (docs/demo-model.md, "What was tried and what it gave").
    dar_layers: int = 6
    dar_width: int = 128
    threads: int = 2
    # Minutes for everything, the 45: the classifier, the VQ and tokenising (their recorded times
    # when reused from a cache) and the DAR, whose last phase then trains until the rest is spent, its step
    # count a cap (`train_dar.schedule`). So the step count, and the model, depend on the machine: the
    # shipped model's 44.8 minutes bought 5,608 steps on a 2-core Xeon with AMX; an AVX2-only CPU gets
    # about a fifth of that (docs/demo-model.md, "The recipe"). None: no clock, the DAR runs its steps.
    budget_minutes: float | None = 45.0


def recipe_from_dict(fields: dict) -> DemoRecipe:
    """The recipe a ``train_log.json`` records; fields added since it was written take today's defaults,
    except ``budget_minutes``: a log from before the clock existed ran without one."""
    fields = dict(fields)
    fields.setdefault("budget_minutes", None)
    fields["dar"] = tuple(TrainDAROptions(**phase) for phase in fields.get("dar", ()))
    return DemoRecipe(**fields)


SAVE_RESERVE_S = 10.0  # kept back from the DAR's share of the budget for writing the checkpoint


QUICK = DemoRecipe(classifier_steps=20, vq_steps=20, train_images=256,
                   dar=(TrainDAROptions(steps=10, batch_size=8, warmup=2),), budget_minutes=None)


def dar_config(recipe: DemoRecipe) -> ModelConfig:
    """The DAR-demo preset at the recipe's depth and width, with heads of 64 (the preset's head size:
    PyTorch's CPU attention is slower at 32). The feed-forward keeps the preset's 512 hidden units at
    every size, as in the measured runs."""
    if recipe.dar_layers < 1 or recipe.dar_width < 64 or recipe.dar_width % 64:
        raise ValueError(f"DAR size must be >= 1 layer and a width that is a multiple of 64, "
                         f"got {recipe.dar_layers} x {recipe.dar_width}")
    preset = get_preset("DAR-demo")
    return dataclasses.replace(preset, n_layer=recipe.dar_layers, d_model=recipe.dar_width,
                               n_head=recipe.dar_width // 64, head_dim=64, ffn_hidden=preset.ffn_hidden)


@torch.no_grad()
def tokenize(vq, n_images: int, batch: int = 500, seed_split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    grids, labels = [], []
    for start in range(0, n_images, batch):
        images, lab = make_batch(range(start, min(start + batch, n_images)), seed_split)
        grids.append(vq.encode_to_indices(images_to_tensor(images)).numpy())
        labels.append(lab)
    return np.concatenate(grids), np.concatenate(labels)


def _tokenizer_key(recipe: DemoRecipe) -> str:
    """What the VQ and its token grids depend on; the cache is valid only for the same key."""
    fields = {k: getattr(recipe, k) for k in ("seed", "vq_steps", "vq_batch", "vq_lr", "train_images")}
    fields["vq"] = VQ_PRESETS["VQ-demo"].to_dict()
    fields["data"] = hashlib.sha256(make_batch(range(2 * len(CLASS_NAMES)))[0].tobytes()).hexdigest()
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _load_tokenizer_cache(folder: Path) -> tuple[VQModel, dict, np.ndarray, np.ndarray] | None:
    if not (folder / "done.json").is_file():
        return None
    vq_model = build_vq(VQ_PRESETS["VQ-demo"])
    vq_model.load_state_dict(load_file(folder / "vq_full.safetensors"))
    data = np.load(folder / "tokens.npz")
    return vq_model.eval(), json.loads((folder / "done.json").read_text()), data["grids"], data["labels"]


def _save_tokenizer_cache(folder: Path, vq_model: VQModel, info: dict, grids: np.ndarray,
                          labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in vq_model.state_dict().items()}
    atomic_write(folder / "vq_full.safetensors", lambda p: save_file(state, p))
    atomic_write_npz(folder / "tokens.npz", grids=grids, labels=labels)
    atomic_write_json(folder / "done.json", info)


def _fill_budget(phase: TrainDAROptions, left_s: float, log) -> TrainDAROptions:
    """The last DAR phase gets what is left of the recipe's budget (less a reserve for saving), capped by
    its own time budget if it has one."""
    left_s -= SAVE_RESERVE_S
    if left_s < 60:
        raise DartrtError(f"the demo budget leaves {max(left_s, 0):.0f} s for the DAR (under a minute): "
                         f"raise DemoRecipe.budget_minutes or shorten the earlier stages")
    budget = min(left_s, phase.time_budget_s) if phase.time_budget_s else left_s
    log(f"DAR: {budget:.0f} s of the budget left (at most {phase.steps} steps)")
    return dataclasses.replace(phase, time_budget_s=round(budget, 1))


def train_demo(out: str | Path, recipe: DemoRecipe | None = None, progress: bool = True, log=print,
               reuse_classifier: bool = False, cache_dir: str | Path | None = None) -> dict:
    """``reuse_classifier`` keeps a classifier already in ``out`` (it is seeded, so retraining it gives
    the same judge; reuse saves minutes when only the generator changes). ``cache_dir`` keeps the full
    VQ (encoder too) and the token grids, keyed by the recipe fields they depend on, so that retraining
    only the DAR skips the tokenizer's quarter hour; the cache is never part of the package."""
    recipe = recipe or DemoRecipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(recipe.threads)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    if reuse_classifier and (out / "classifier.json").is_file():
        clf_metrics = {"reused": True}
        log("classifier: reusing the one in the output folder")
    else:
        classifier, clf_metrics = train_classifier(recipe.classifier_steps, recipe.classifier_batch,
                                                   recipe.seed, progress=progress)
        save_classifier(classifier, out)
        log(f"classifier: held-out accuracy {clf_metrics['heldout_accuracy']:.4f}")
    timings["classifier"] = time.perf_counter() - t0

    vq_cfg = VQ_PRESETS["VQ-demo"]
    cache = Path(cache_dir) / _tokenizer_key(recipe) if cache_dir else None
    cached = _load_tokenizer_cache(cache) if cache else None
    if cached:
        vq_model, info, grids, labels = cached
        vq_metrics = info["vq"]
        timings.update(info["timings"])
        log(f"vq and tokens: reusing {cache} (trained in {timings['vq']:.0f}+{timings['tokenize']:.0f} s)")
    else:
        t = time.perf_counter()
        vq_model, vq_metrics = train_vq(lambda step, n: make_batch(range(step * n, (step + 1) * n), "train")[0],
                                        vq_cfg, recipe.vq_steps, recipe.vq_batch, lr=recipe.vq_lr,
                                        seed=recipe.seed, progress=progress)
        vq_model.eval()
        timings["vq"] = time.perf_counter() - t
        log(f"vq: {vq_metrics}")
        t = time.perf_counter()
        grids, labels = tokenize(vq_model, recipe.train_images)
        timings["tokenize"] = time.perf_counter() - t
        if cache:
            info = {"vq": vq_metrics, "timings": {k: timings[k] for k in ("vq", "tokenize")}}
            _save_tokenizer_cache(cache, vq_model, info, grids, labels)
    used = np.unique(grids).size
    log(f"tokenised {len(grids)} images; {used} of {vq_cfg.codebook_size} codes used")

    cfg = dar_config(recipe)
    cfg.class_names = list(CLASS_NAMES)
    cfg.name = "DAR-demo"
    decoder = vq_model.decode_path()
    codebook = decoder.quantize.embedding.weight.detach().clone()
    model, dar_log = None, []
    for i, phase in enumerate(recipe.dar):
        if recipe.budget_minutes is not None and i == len(recipe.dar) - 1:
            phase = _fill_budget(phase, recipe.budget_minutes * 60 - sum(timings.values())
                                 - sum(p["train_seconds"] for p in dar_log), log)
        model, log_phase = train_dar(cfg, codebook, grids, labels, phase, progress=progress, model=model,
                                     log=log)
        dar_log.append(log_phase)
    timings["dar"] = sum(p["train_seconds"] for p in dar_log)
    save_checkpoint(out, model, decoder, IMAGE_SIZE)
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    report = {"recipe": asdict(recipe), "classifier": clf_metrics, "vq": vq_metrics, "codes_used": int(used),
              "dar": dar_log, "dar_parameters": sum(p.numel() for p in model.parameters()),
              "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
              "torch_threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability()}  # the timings depend on it
    atomic_write_json(out / "train_log.json", report)
    return report
