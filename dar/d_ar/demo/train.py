"""`dartrt train-demo-dar`: train the D-AR demo (the tokenizer's decode path, then a 1D GPT) on the clock.

Seeded and CPU-only, on the DAR demo's procedural shapes (`dartrt.dar.demo.shapes`, 64×64, 10 classes), judged
by the DAR demo's classifier (`models/demo`). The tokens are the any-order DAR demo's VQ codes in dither groups
(`encoder.DemoTokens`: why not a learned D-AR encoder is said there), so the two stages share one budget
(45 minutes by default, as the DAR demo):

1. the decode path (conditions transformer, velocity network; `train_decoder`) gets ``decoder_share`` of the
   budget, its learning rate annealing with the clock;
2. ``train_images`` fresh images are tokenised, and the GPT (D-AR's 1D member of the family, trained by the DAR
   demo's own loop `dartrt.dar.demo.train_dar`, Muon and all) trains until the budget is spent.

The output folder is a D-AR checkpoint (`dartrt.dar.d_ar.checkpoint`: config.json, model.safetensors,
tokenizer.safetensors, weights stored in float16) plus the token source (encoder.safetensors, encoder.json; not
needed to generate) and train_log.json with the recipe, the CPU, steps and timings.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dartrt.models import DEMO_ANYORDER
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write_json

from ...config import ModelConfig
from ...demo.shapes import CLASS_NAMES
from ...demo.train import SAVE_RESERVE_S, _fill_budget, tokenize
from ...demo.train_dar import TrainDAROptions, train_dar
from ..checkpoint import save_d_ar_checkpoint
from ..config import TokenizerConfig, get_tokenizer_preset
from ..tokenizer import build_tokenizer
from .encoder import tokens_from_dar_demo
from .train_decoder import TrainDecoderOptions, train_decoder


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
    # Settings of the measured runs (docs/d-ar.md, "The decode path alone"): lr 2e-3, batch 32, 60 % of the
    # plain rows from pure noise, trajectories on half of each batch for the last part of the run.
    decoder_train: TrainDecoderOptions = field(default_factory=TrainDecoderOptions)
    # Share of the budget for the decode path; the GPT gets what is left after tokenising.
    decoder_share: float = 0.65
    train_images: int = 40000  # distinct images tokenised for the GPT
    gpt_layers: int = 6
    gpt_width: int = 128
    default_cfg: float = 1.5
    # The DAR demo's GPT settings at the same 256 tokens (batch 32, Muon at 2.5e-3).
    gpt: TrainDAROptions = field(default_factory=lambda: TrainDAROptions(
        steps=20000, batch_size=32, lr=2.5e-3, warmup=100, compile=True, optimizer="muon"))
    threads: int = 2
    budget_minutes: float | None = 45.0


QUICK = DemoDARRecipe(decoder_train=TrainDecoderOptions(steps=6, batch_size=8, warmup=2, trajectory_from=0.5),
                      train_images=64, gpt=TrainDAROptions(steps=4, batch_size=8, warmup=2), budget_minutes=None)


def recipe_to_dict(recipe: DemoDARRecipe) -> dict:
    return asdict(recipe)


def recipe_from_dict(data: dict) -> DemoDARRecipe:
    """Inverse of `recipe_to_dict` (train_log.json's "recipe"): what the shipped model's test compares with
    today's recipe, so that a recipe edit without a retrain cannot pass."""
    data = dict(data)
    data["tokenizer"] = TokenizerConfig.from_dict(data["tokenizer"])
    data["decoder_train"] = TrainDecoderOptions(**data["decoder_train"])
    data["gpt"] = TrainDAROptions(**data["gpt"])
    return DemoDARRecipe(**data)


def train_demo_dar(out: str | Path, recipe: DemoDARRecipe | None = None, progress: bool = True, log=print,
                   source: str | Path = DEMO_ANYORDER) -> dict:
    """Train the D-AR demo into ``out`` on the tokens of the DAR demo ``source``; returns the training log (also
    written as train_log.json)."""
    recipe = recipe or DemoDARRecipe()
    out = Path(out)
    tokens = tokens_from_dar_demo(source)
    tok_cfg = recipe.tokenizer
    if tokens.codebook.shape[0] != tok_cfg.codebook_size or len(tokens.order) != tok_cfg.num_tokens:
        raise DartrtError(f"{source}'s VQ gives {len(tokens.order)} tokens of {tokens.codebook.shape[0]} codes; "
                         f"the recipe's tokenizer wants {tok_cfg.num_tokens} of {tok_cfg.codebook_size}")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(recipe.threads)
    budget_s = recipe.budget_minutes * 60 if recipe.budget_minutes is not None else None
    timings: dict[str, float] = {}
    start = time.perf_counter()

    tokenizer = build_tokenizer(tok_cfg, seed=recipe.seed)
    dec_opts = recipe.decoder_train
    if budget_s is not None:
        dec_opts = dataclasses.replace(dec_opts, time_budget_s=round(recipe.decoder_share * budget_s, 1))
        log(f"decoder: {dec_opts.time_budget_s:.0f} s of the budget (at most {dec_opts.steps} steps)")
    dec_log = train_decoder(tokens, tokenizer, dec_opts, progress=progress, log=log)
    timings["decoder"] = time.perf_counter() - start

    t = time.perf_counter()
    ids, labels = tokenize(tokens, recipe.train_images)
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
    save_d_ar_checkpoint(out, model, tokenizer, store_fp16=True)
    tokens.save(out)
    timings["total"] = time.perf_counter() - start
    report = {
        "recipe": recipe_to_dict(recipe), "token_source": tokens.source, "decoder": dec_log, "codes_used": used,
        "gpt": gpt_log, "parameters": {
            "gpt": sum(p.numel() for p in model.parameters()),
            "tokenizer_decode_path": sum(p.numel() for p in tokenizer.parameters())},
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
