"""`dartrt train-demo-dar`: train the D-AR demo (sequential diffusion tokenizer, then a 1D GPT) on the clock.

Seeded and CPU-only, on the DAR demo's procedural shapes (`dartrt.dar.demo.shapes`, 64×64, 10 classes), judged
by the DAR demo's classifier (`models/demo`). Two stages in one budget (45 minutes by default, as the DAR demo):

1. the tokenizer (encoder, codebook, conditions transformer, velocity network; `train_tokenizer`) gets
   ``tokenizer_share`` of the budget, its learning rate annealing with the clock;
2. ``train_images`` fresh images are tokenised, and the GPT (D-AR's 1D member of the family, trained by the DAR
   demo's own loop `dartrt.dar.demo.train_dar`, Muon and all) trains until the budget is spent.

The output folder is a D-AR checkpoint (`dartrt.dar.d_ar.checkpoint`: config.json, model.safetensors,
tokenizer.safetensors) plus the encoder (encoder.safetensors, encoder.json; not needed to generate) and
train_log.json with the recipe, the CPU, steps and timings.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from dartrt.runtime.fileio import atomic_write, atomic_write_json

from ...config import ModelConfig
from ...demo.shapes import CLASS_NAMES, make_batch
from ...demo.train import SAVE_RESERVE_S, _fill_budget
from ...demo.train_dar import TrainDAROptions, train_dar
from ...demo.train_vq import images_to_tensor
from ..checkpoint import save_d_ar_checkpoint
from ..config import TokenizerConfig, get_tokenizer_preset
from ..tokenizer import build_tokenizer
from .encoder import DemoEncoder, EncoderConfig, encode_ids
from .train_tokenizer import TrainTokenizerOptions, train_tokenizer

ENCODER_WEIGHTS, ENCODER_CONFIG = "encoder.safetensors", "encoder.json"


def gpt_config(tokenizer: TokenizerConfig, layers: int, width: int, default_cfg: float) -> ModelConfig:
    """D-AR's GPT for the demo: LlamaGen's layout with 1D RoPE over the tokenizer's tokens (a square count, laid
    out as the family's G×G "grid" in raster order), its vocabulary the codebook, heads of 64."""
    grid = int(round(tokenizer.num_tokens ** 0.5))
    if grid * grid != tokenizer.num_tokens:
        raise ValueError(f"the GPT needs a square number of tokens, got {tokenizer.num_tokens}")
    return ModelConfig(name="D-AR-demo", family="d-ar", n_layer=layers, d_model=width, n_head=width // 64,
                       head_dim=64, vocab_size=tokenizer.codebook_size, num_classes=len(CLASS_NAMES),
                       grid_size=grid, ffn_multiple_of=64, ffn_hidden=4 * width, rope="1d",
                       token_embedding="learned", adaln=False, order="raster", default_cfg=default_cfg,
                       class_names=list(CLASS_NAMES))


@dataclass
class DemoDARRecipe:
    seed: int = 0
    tokenizer: TokenizerConfig = field(default_factory=lambda: get_tokenizer_preset("demo"))
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # Measured in short runs on a shared 2-core EPYC (docs/d-ar.md, "What was tried"): with the velocity loss the
    # decoder learned to denoise from x_s and ignored the tokens (8 dB, chance accuracy after 480 steps); the
    # image loss and half of each batch decoded from pure noise made it read them within 250 steps.
    tokenizer_train: TrainTokenizerOptions = field(default_factory=lambda: TrainTokenizerOptions(
        batch_size=32, lr=1e-3, noise_only_share=0.5, ae_warmup=0.35))
    # Share of the budget for the tokenizer; the GPT gets what is left after tokenising.
    tokenizer_share: float = 0.6
    train_images: int = 40000  # distinct images tokenised for the GPT
    gpt_layers: int = 6
    gpt_width: int = 128
    default_cfg: float = 1.5
    gpt: TrainDAROptions = field(default_factory=lambda: TrainDAROptions(
        steps=20000, batch_size=64, lr=2.5e-3, warmup=100, compile=True, optimizer="muon"))
    threads: int = 2
    budget_minutes: float | None = 45.0


QUICK = DemoDARRecipe(tokenizer_train=TrainTokenizerOptions(steps=6, batch_size=8, warmup=2),
                      train_images=64, gpt=TrainDAROptions(steps=4, batch_size=8, warmup=2), budget_minutes=None)


def recipe_to_dict(recipe: DemoDARRecipe) -> dict:
    return asdict(recipe)


def save_encoder(folder: Path, encoder: DemoEncoder) -> None:
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write(folder / ENCODER_WEIGHTS, lambda p: save_file(state, p))
    atomic_write_json(folder / ENCODER_CONFIG, encoder.cfg.to_dict())


def load_encoder(folder: str | Path, tokenizer: TokenizerConfig) -> DemoEncoder:
    """The demo's encoder saved next to a D-AR checkpoint (training tokens, reconstructions)."""
    from dartrt.dar.checkpoint import read_tensors
    from dartrt.dar.importers import load_checked

    folder = Path(folder)
    cfg = EncoderConfig.from_dict(json.loads((folder / ENCODER_CONFIG).read_text()))
    encoder = DemoEncoder(tokenizer, cfg)
    load_checked(encoder, read_tensors(folder / ENCODER_WEIGHTS), str(folder / ENCODER_WEIGHTS))
    return encoder.eval()


@torch.no_grad()
def tokenize(encoder: DemoEncoder, codebook: torch.Tensor, n_images: int, batch: int = 500,
             split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Token ids [n, num_tokens] and labels of the first ``n_images`` images of ``split``."""
    ids, labels = [], []
    for start in range(0, n_images, batch):
        images, lab = make_batch(range(start, min(start + batch, n_images)), split)
        ids.append(encode_ids(encoder, codebook, images_to_tensor(images)).numpy())
        labels.append(lab)
    return np.concatenate(ids), np.concatenate(labels)


def train_demo_dar(out: str | Path, recipe: DemoDARRecipe | None = None, progress: bool = True, log=print) -> dict:
    """Train the D-AR demo into ``out``; returns the training log (also written as train_log.json)."""
    recipe = recipe or DemoDARRecipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(recipe.threads)
    budget_s = recipe.budget_minutes * 60 if recipe.budget_minutes is not None else None
    timings: dict[str, float] = {}
    start = time.perf_counter()

    tok_cfg = recipe.tokenizer
    tokenizer = build_tokenizer(tok_cfg, seed=recipe.seed)
    torch.manual_seed(recipe.seed)
    encoder = DemoEncoder(tok_cfg, recipe.encoder)
    tok_opts = recipe.tokenizer_train
    if budget_s is not None:
        tok_opts = dataclasses.replace(tok_opts, time_budget_s=round(recipe.tokenizer_share * budget_s, 1))
        log(f"tokenizer: {tok_opts.time_budget_s:.0f} s of the budget (at most {tok_opts.steps} steps)")
    tok_log = train_tokenizer(encoder, tokenizer, tok_opts, progress=progress, log=log)
    timings["tokenizer"] = time.perf_counter() - start

    t = time.perf_counter()
    codebook = tokenizer.quantize.embedding.weight.detach()
    ids, labels = tokenize(encoder, codebook, recipe.train_images)
    timings["tokenize"] = time.perf_counter() - t
    used = int(np.unique(ids).size)
    log(f"tokenised {len(ids)} images; {used} of {tok_cfg.codebook_size} codes used")

    cfg = gpt_config(tok_cfg, recipe.gpt_layers, recipe.gpt_width, recipe.default_cfg)
    phase = recipe.gpt
    if budget_s is not None:
        phase = _fill_budget(phase, budget_s - (time.perf_counter() - start), log)
    grid = cfg.grid_size
    model, gpt_log = train_dar(cfg, None, ids.reshape(len(ids), grid, grid), labels, phase, progress=progress,
                               log=log)
    timings["gpt"] = gpt_log["train_seconds"]
    save_d_ar_checkpoint(out, model, tokenizer)
    save_encoder(out, encoder)
    timings["total"] = time.perf_counter() - start
    report = {
        "recipe": recipe_to_dict(recipe), "tokenizer": tok_log, "codes_used": used,
        "gpt": gpt_log, "parameters": {
            "gpt": sum(p.numel() for p in model.parameters()),
            "tokenizer_decode_path": sum(p.numel() for p in tokenizer.parameters()),
            "encoder": sum(p.numel() for p in encoder.parameters())},
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        "budget_seconds": budget_s, "save_reserve_seconds": SAVE_RESERVE_S,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": _cpu_name(),
    }
    atomic_write_json(out / "train_log.json", report)
    return report


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
