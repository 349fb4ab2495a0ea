"""Train the demo's sequential diffusion tokenizer end to end: encoder → VQ → conditions → velocity loss.

The objective is D-AR's (showlab/D-AR ``VQModel.encode`` and ``SequentialDiffusionDecoder.forward``): for
each image a time t ~ U(0, 1) picks the group of tokens that conditions it, by the same rounding the sampler
uses (group round(t·G), clamped), and the velocity network is trained by flow matching at the shifted time
s(t): x_s = s·(data_std·x) + (1 − s)·noise, target data_std·x − noise, loss MSE / data_std². The quantiser
adds its codebook and commitment terms (β = 0.25) over the tokens up to the end of the group used, since
later tokens got no reconstruction gradient in that sample. Because the conditions are causal, a group
early in the sequence is trained only from the noisiest times: the tokens come out coarse to fine.

What is ours, for a 2-core CPU budget (the public recipe trains for days on GPUs with extra losses):
- with ``prediction="data"`` (`TokenizerConfig.prediction`: the network predicts the image, the graph still
  returns v) the loss is the image's MSE, x̂ = x_s + (1 − s)·v against data_std·x: the velocity's MSE weighs
  a step by 1/(1 − s)², so nearly all of it came from the almost-clean end, where x_s shows the image and the
  tokens are not needed; the image loss weighs every time alike and the decoder learns to read the tokens;
- an autoencoder warm-up (the encoder's normalised vectors go to the decoder unquantised for the first
  ``ae_warmup`` of the run), then the codebook is set by spherical k-means on those vectors, and codes unused
  for ``restart_every`` steps are moved onto current vectors: the VQ demo's two tricks
  (`dartrt.dar.demo.train_vq`), reused here, against codebook collapse;
- the learning rate follows the clock like the DAR demo's (`dartrt.dar.demo.train_dar.schedule`), so the
  run anneals to zero when its share of the budget is spent;
- fresh procedural images every step (the data never repeats).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ...demo.shapes import make_batch
from ...demo.train_dar import Fp32Muon, cpu_runs_bf16, schedule
from ...demo.train_vq import _restart_dead_codes, _spherical_kmeans, images_to_tensor
from ..sampler import shift_time
from ..tokenizer import DARTokenizer
from .encoder import DemoEncoder, quantize


@dataclass
class TrainTokenizerOptions:
    steps: int = 20000  # a cap when time_budget_s is set (the clock usually ends the run)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    grad_clip: float = 1.0
    commitment: float = 0.25
    ae_warmup: float = 0.15  # share of the run (by the schedule's progress) before quantisation starts
    # Share of each batch decoded from pure noise (s = 0) with a uniformly drawn group: only the tokens can
    # reduce the loss there (see the module doc).
    noise_only_share: float = 0.0
    kmeans_batches: int = 8
    restart_every: int = 50
    restart_until: float = 0.75
    bf16: bool = True
    optimizer: str = "adamw"  # or "muon": Muon on the transformer blocks' matrices, AdamW on the rest
    seed: int = 0
    time_budget_s: float | None = None


def init_for_training(tokenizer: DARTokenizer) -> None:
    """The public init: truncated normal(0.02) for linears, zero biases; zero AdaLN output, zero conv_out and
    zero residual gates, so the untrained decoder predicts zero velocity and every block starts as identity."""
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
        codes = tokenizer.quantize.embedding.weight
        codes.copy_(F.normalize(torch.randn_like(codes), dim=-1))
        for block in tokenizer.decoder_layers:
            block.gate1.zero_()
            block.gate2.zero_()
        net = tokenizer.diff_decoder.net
        for block in net.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(net.conv_out.weight)
        nn.init.zeros_(net.conv_out.bias)


def group_starts(t: torch.Tensor, num_tokens: int, num_groups: int, per_step: int) -> torch.Tensor:
    """The first token of the group that conditions time t (before the shift): the public rounding
    round(t·G)/G·N, clamped to the last group. At t = i/steps it is exactly the sampler's step i."""
    discrete = torch.floor(t * num_groups + 0.5) / num_groups
    return (discrete * num_tokens).long().clamp(0, num_tokens - per_step)


@dataclass
class Losses:
    flow: torch.Tensor
    codebook: torch.Tensor
    ids: torch.Tensor
    vectors: torch.Tensor  # normalised encoder vectors, for k-means and restarts


def tokenizer_losses(encoder: DemoEncoder, tokenizer: DARTokenizer, x: torch.Tensor, quantised: bool,
                     gen: torch.Generator, commitment: float, noise_only_share: float = 0.0) -> Losses:
    """One batch of images x [B, 3, H, W] in [-1, 1] → the flow-matching and codebook losses."""
    cfg = tokenizer.cfg
    b = x.shape[0]
    z = encoder(x)
    ids, zn, zq = quantize(z.float(), tokenizer.quantize.embedding.weight.float())
    vectors = zn + (zq - zn).detach() if quantised else zn
    cond = tokenizer.conditions_of_vectors(vectors)
    t = torch.rand(b, generator=gen)
    start = group_starts(t, cfg.num_tokens, cfg.num_groups, cfg.tokens_per_step)
    s = shift_time(t, cfg.time_shift)
    noise_only = torch.rand(b, generator=gen) < noise_only_share
    if noise_only.any():  # s = 0 with any group: the image from that group's conditions alone
        group = torch.randint(0, cfg.num_groups, (b,), generator=gen)
        start = torch.where(noise_only, group_starts(group / cfg.num_groups, cfg.num_tokens, cfg.num_groups,
                                                     cfg.tokens_per_step), start)
        s = torch.where(noise_only, torch.zeros_like(s), s)
    rows = start[:, None] + torch.arange(cfg.tokens_per_step)
    cond_g = cond[torch.arange(b)[:, None], rows]
    s = s[:, None, None, None]
    noise = torch.randn(x.shape, generator=gen)
    target = x * cfg.data_std
    xt = s * target + (1 - s) * noise
    v = tokenizer.velocity(xt, s.reshape(b), cond_g)
    if cfg.prediction == "data":  # judged as an image: x̂ = x_s + (1 − s)·v, see the module doc
        flow = F.mse_loss(xt + (1 - s) * v.float(), target) / cfg.data_std**2
    else:  # D-AR's loss: the velocity's MSE
        flow = F.mse_loss(v.float(), target - noise) / cfg.data_std**2
    if quantised:
        used = (torch.arange(cfg.num_tokens)[None, :] < (start + cfg.tokens_per_step)[:, None]).float()
        per_token = ((zq - zn.detach()) ** 2).mean(-1) + commitment * ((zq.detach() - zn) ** 2).mean(-1)
        codebook = (per_token * used).sum() / used.sum()
    else:
        codebook = torch.zeros(())
    return Losses(flow, codebook, ids, zn.detach().reshape(-1, zn.shape[-1]))


def make_optimizers(encoder: DemoEncoder, tokenizer: DARTokenizer, opts: TrainTokenizerOptions
                    ) -> list[torch.optim.Optimizer]:
    """AdamW (betas 0.9/0.95, no decay on vectors); with ``optimizer="muon"`` the blocks' matrices (encoder,
    conditions transformer and velocity network linears) go to Muon at AdamW's RMS (the DAR demo's choice,
    `dartrt.dar.demo.train_dar.make_optimizer`), in fp32 where the CPU has no native bf16."""
    if opts.optimizer not in ("adamw", "muon"):
        raise ValueError(f"optimizer must be 'adamw' or 'muon', got {opts.optimizer!r}")
    hidden, rest = [], []
    for prefix, module in (("encoder.", encoder), ("", tokenizer)):
        for name, p in module.named_parameters():
            in_block = ".blocks." in f".{prefix}{name}" or name.startswith(("blocks.", "decoder_layers."))
            (hidden if opts.optimizer == "muon" and p.ndim == 2 and in_block else rest).append(p)
    out: list[torch.optim.Optimizer] = [torch.optim.AdamW(
        [{"params": [p for p in rest if p.ndim >= 2], "weight_decay": opts.weight_decay},
         {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.95))]
    if hidden:
        muon = torch.optim.Muon if cpu_runs_bf16() else Fp32Muon
        out.append(muon(hidden, lr=opts.lr, weight_decay=opts.weight_decay, adjust_lr_fn="match_rms_adamw"))
    return out


def train_tokenizer(encoder: DemoEncoder, tokenizer: DARTokenizer, opts: TrainTokenizerOptions,
                    progress: bool = True, log=print) -> dict:
    """Train both modules in place on fresh shapes images; returns the training log."""
    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    init_for_training(tokenizer)
    encoder.train()
    tokenizer.train()
    params = [p for m in (encoder, tokenizer) for p in m.parameters() if p.requires_grad]
    optimizers = make_optimizers(encoder, tokenizer, opts)
    opt = optimizers[0]  # AdamW: it holds the codebook, whose state k-means and restarts reset
    codebook = tokenizer.quantize.embedding.weight
    n_codes = codebook.shape[0]
    bf16 = opts.bf16 and cpu_runs_bf16()
    counts = torch.zeros(n_codes, dtype=torch.long)
    recent: deque[torch.Tensor] = deque(maxlen=max(1, opts.kmeans_batches))
    quantised, restarted, usage = False, 0, 0.0
    flows: list[float] = []
    quantise_step = None
    start = time.perf_counter()
    last_step_s, stopped_by = 0.0, "steps"
    bar = tqdm(range(opts.steps), desc="train D-AR tokenizer", disable=not progress)
    for step in bar:
        elapsed = time.perf_counter() - start
        if opts.time_budget_s and elapsed + last_step_s > opts.time_budget_s:
            stopped_by = "time budget"
            break
        progress_frac = max(step / opts.steps, elapsed / opts.time_budget_s if opts.time_budget_s else 0.0)
        if not quantised and progress_frac >= opts.ae_warmup and recent:
            with torch.no_grad():
                codebook.copy_(_spherical_kmeans(torch.cat(list(recent)), n_codes, 10, gen))
            opt.state.pop(codebook, None)
            quantised, quantise_step = True, step
            log(f"tokenizer: quantisation on at step {step} (codebook from k-means on {len(recent)} batches)")
        lr = schedule(step, elapsed, opts)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        images, _ = make_batch(range(step * opts.batch_size, (step + 1) * opts.batch_size), "train")
        x = images_to_tensor(images)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = tokenizer_losses(encoder, tokenizer, x, quantised, gen, opts.commitment, opts.noise_only_share)
        loss = losses.flow + losses.codebook
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        for optimizer in optimizers:
            optimizer.step()
        flows.append(float(losses.flow.detach()))
        if not quantised:
            recent.append(losses.vectors[torch.randperm(len(losses.vectors), generator=gen)[:2048]])
        else:
            counts += torch.bincount(losses.ids.flatten(), minlength=n_codes)
            if (step + 1 - quantise_step) % opts.restart_every == 0:
                usage = float((counts > 0).float().mean())
                if progress_frac < opts.restart_until:
                    restarted += _restart_dead_codes(tokenizer, counts, losses.vectors, opt, gen)
                counts.zero_()
        last_step_s = time.perf_counter() - start - elapsed
        if step % 10 == 0:
            bar.set_postfix(flow=f"{np.mean(flows[-20:]):.4f}", lr=f"{lr:.1e}", usage=f"{usage:.2f}")
    bar.close()
    encoder.eval()
    tokenizer.eval()
    seconds = time.perf_counter() - start
    if stopped_by != "steps":
        log(f"tokenizer: time budget of {opts.time_budget_s:.0f} s reached after {len(flows)} steps")
    return {"steps": len(flows), "stopped_by": stopped_by, "time_budget_s": opts.time_budget_s, "bf16": bf16,
            "batch_size": opts.batch_size, "images_seen": len(flows) * opts.batch_size,
            "quantised_from_step": quantise_step, "restarted_codes": restarted,
            "codebook_usage_last_window": round(usage, 4), "train_seconds": round(seconds, 1),
            "final_flow_loss": float(np.mean(flows[-50:])) if flows else math.nan,
            "flow_loss_curve": [round(float(np.mean(flows[i:i + 50])), 4) for i in range(0, len(flows), 50)]}
