"""Train the demo tokenizer's decode path (conditions transformer and velocity network) on frozen tokens.

The objective is D-AR's (showlab/D-AR ``SequentialDiffusionDecoder.forward``): for each image a time
t ~ U(0, 1) picks the group of tokens that conditions it, by the rounding the sampler uses (group
round(t·G), clamped), and the network is trained at the shifted time s(t) on x_s = s·(data_std·x) + (1 − s)·noise.
The codebook is the token source's (`DemoTokens.codebook`), copied and frozen.

What is ours, each measured on the shared 2-core CPU (docs/d-ar.md, "The decode path alone"):
- ``prediction="data"`` (`TokenizerConfig.prediction`): the loss is the image's MSE, x̂ = x_s + (1 − s)·v
  against data_std·x. The velocity's MSE weighs a step by 1/(1 − s)², so nearly all of it comes from the
  almost-clean end, where x_s shows the image and the tokens are not needed;
- ``noise_only_share`` of each batch is decoded from pure noise (s = 0) with any group: there only the tokens
  can lower the loss, so the network learns to read them (from 8 dB to 13 dB in the first runs);
- ``conv_in``'s bias drawn N(0, 1) (`init_for_training`): at high noise an image token is a projection of
  noise and its query to the conditions cannot be positional until it carries a constant part (+1 dB);
- from ``trajectory_from`` of the run on, ``trajectory_share`` of each batch starts where the sampler itself
  is after g steps (g from 1 to G − 1, the ODE run with the current weights on the image's own tokens, no
  gradient through it): trained only on true noisy images the network kept its own early blur along the
  sampled path (exposure bias); this gave 0.65 judged accuracy against 0.52 for the same minutes without;
- the learning rate follows the clock (`dartrt.dar.demo.train_dar.schedule`), so the run anneals to zero when
  its share of the budget is spent; fresh procedural images every step (the data never repeats).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...demo.shapes import make_batch
from ...demo.train_dar import cpu_runs_bf16, schedule
from ...demo.train_vq import images_to_tensor
from ..sampler import FlowSampler, shift_time, step_token_ranges, time_grid
from ..tokenizer import DARTokenizer
from .encoder import DemoTokens


@dataclass
class TrainDecoderOptions:
    steps: int = 100000  # a cap when time_budget_s is set (the clock ends the run)
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    grad_clip: float = 1.0
    noise_only_share: float = 0.6  # of the rows not on a trajectory
    trajectory_from: float = 0.6  # progress (steps or clock) after which trajectories start
    trajectory_share: float = 0.5
    bf16: bool = True
    seed: int = 0
    time_budget_s: float | None = None


def init_for_training(tokenizer: DARTokenizer, codebook: torch.Tensor) -> None:
    """The public init (truncated normal(0.02) linears, zero biases, zero AdaLN output, conv_out and residual
    gates: the untrained decoder predicts x̂ = 0 and every block starts as identity), the frozen codebook, and
    conv_in's bias drawn N(0, 1) (see the module doc)."""
    with torch.no_grad():
        for module in tokenizer.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(tokenizer.decoder_embedding.weight, std=0.02)
        tokenizer.quantize.embedding.weight.copy_(codebook)
        for block in tokenizer.decoder_layers:
            block.gate1.zero_()
            block.gate2.zero_()
        net = tokenizer.diff_decoder.net
        for block in net.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(net.conv_out.weight)
        nn.init.zeros_(net.conv_out.bias)
        nn.init.normal_(net.conv_in.bias)
    tokenizer.quantize.embedding.weight.requires_grad_(False)


def group_starts(t: torch.Tensor, num_tokens: int, num_groups: int, per_step: int) -> torch.Tensor:
    """The first token of the group that conditions time t (before the shift): the public rounding
    round(t·G)/G·N, clamped to the last group. At t = i/steps it is exactly the sampler's step i."""
    discrete = torch.floor(t * num_groups + 0.5) / num_groups
    return (discrete * num_tokens).long().clamp(0, num_tokens - per_step)


@torch.no_grad()
def sampler_state(tokenizer: DARTokenizer, cond: torch.Tensor, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """x after ``steps`` steps of the real sampler (Euler, then AB2) from ``noise`` on conditions [B, N, D]."""
    sampler = FlowSampler(tokenizer.velocity, noise, tokenizer.cfg)
    for begin, end in step_token_ranges(tokenizer.cfg)[:steps]:
        sampler.advance(cond[:, begin:end])
    return sampler.x.float()


def decoder_loss(tokenizer: DARTokenizer, ids: torch.Tensor, x: torch.Tensor, gen: torch.Generator,
                 noise_only_share: float, trajectories: int) -> torch.Tensor:
    """Image MSE (/ data_std²) of one batch: ids [B, N], images x [B, 3, H, W] in [-1, 1]; the first
    ``trajectories`` rows start from the sampler's own state after g steps (see the module doc)."""
    cfg = tokenizer.cfg
    b = x.shape[0]
    cond = tokenizer.conditions(ids)
    t = torch.rand(b, generator=gen)
    start = group_starts(t, cfg.num_tokens, cfg.num_groups, cfg.tokens_per_step)
    s = shift_time(t, cfg.time_shift)
    noise_only = torch.rand(b, generator=gen) < noise_only_share
    noise_only[:trajectories] = False
    group = torch.randint(0, cfg.num_groups, (b,), generator=gen)
    start = torch.where(noise_only, group_starts(group / cfg.num_groups, cfg.num_tokens, cfg.num_groups,
                                                 cfg.tokens_per_step), start)
    s = torch.where(noise_only, torch.zeros_like(s), s)
    noise = torch.randn(x.shape, generator=gen)
    target = x * cfg.data_std
    xt = s[:, None, None, None] * target + (1 - s[:, None, None, None]) * noise
    if trajectories:
        g = int(torch.randint(1, cfg.denoising_steps, (1,), generator=gen))
        xt[:trajectories] = sampler_state(tokenizer, cond[:trajectories].detach(), noise[:trajectories], g)
        s[:trajectories] = time_grid(cfg)[g]
        start[:trajectories] = step_token_ranges(cfg)[g][0]
    rows = start[:, None] + torch.arange(cfg.tokens_per_step)
    v = tokenizer.velocity(xt, s, cond[torch.arange(b)[:, None], rows])
    s4 = s[:, None, None, None]
    return F.mse_loss(xt + (1 - s4) * v.float(), target) / cfg.data_std**2


def train_decoder(tokens: DemoTokens, tokenizer: DARTokenizer, opts: TrainDecoderOptions, progress: bool = True,
                  log=print) -> dict:
    """Train ``tokenizer``'s decode path in place on fresh shapes images tokenised by ``tokens``; returns the log."""
    if tokenizer.cfg.prediction != "data":
        raise ValueError("the demo decoder is trained with prediction 'data' (see the module doc)")
    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    init_for_training(tokenizer, tokens.codebook.detach())
    tokenizer.train()
    params = [p for p in tokenizer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": opts.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=opts.lr, betas=(0.9, 0.95))
    bf16 = opts.bf16 and cpu_runs_bf16()
    trajectory_rows = int(round(opts.trajectory_share * opts.batch_size))
    losses: list[float] = []
    trajectory_step = None
    start = time.perf_counter()
    last_step_s, stopped_by = 0.0, "steps"
    bar = tqdm(range(opts.steps), desc="train D-AR decoder", disable=not progress)
    for step in bar:
        elapsed = time.perf_counter() - start
        if opts.time_budget_s and elapsed + last_step_s > opts.time_budget_s:
            stopped_by = "time budget"
            break
        progress_frac = max(step / opts.steps, elapsed / opts.time_budget_s if opts.time_budget_s else 0.0)
        on_trajectory = trajectory_rows if progress_frac >= opts.trajectory_from else 0
        if on_trajectory and trajectory_step is None:
            trajectory_step = step
            log(f"decoder: trajectories from step {step} ({trajectory_rows} of {opts.batch_size} rows a batch)")
        lr = schedule(step, elapsed, opts)
        for group in opt.param_groups:
            group["lr"] = lr
        images, _ = make_batch(range(step * opts.batch_size, (step + 1) * opts.batch_size), "train")
        x = images_to_tensor(images)
        ids = tokens.encode_ids(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = decoder_loss(tokenizer, ids, x, gen, opts.noise_only_share, on_trajectory)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        last_step_s = time.perf_counter() - start - elapsed
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.1e}")
    bar.close()
    tokenizer.eval()
    seconds = time.perf_counter() - start
    if stopped_by != "steps":
        log(f"decoder: time budget of {opts.time_budget_s:.0f} s reached after {len(losses)} steps")
    return {"steps": len(losses), "stopped_by": stopped_by, "time_budget_s": opts.time_budget_s, "bf16": bf16,
            "batch_size": opts.batch_size, "images_seen": len(losses) * opts.batch_size,
            "trajectories_from_step": trajectory_step, "train_seconds": round(seconds, 1),
            "final_loss": float(np.mean(losses[-50:])) if losses else math.nan,
            "loss_curve": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, len(losses), 50)]}
