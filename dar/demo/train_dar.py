"""Train the bundled demo DAR on VQ tokens of the procedural shapes, in the model's scan order (or, for an
any-order model, each sequence in its own order: see ``TrainDAROptions.random_order_share``)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dartrt.runtime.orders import START, direction_ids, gather_from_grid, make_order, positions_table

from ..config import ModelConfig
from ..model import Transformer, build_model


@dataclass
class TrainDAROptions:
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 60
    grad_clip: float = 1.0
    bf16: bool = True  # CPU autocast to bf16, only where oneDNN runs bf16 natively (see cpu_runs_bf16)
    compile: bool = False  # torch.compile the training forward (needs a C++ compiler; falls back to eager)
    optimizer: str = "adamw"  # or "muon": torch.optim.Muon on the blocks' matrices (see make_optimizer)
    muon_lr: float | None = None  # Muon's peak learning rate; None: ``lr``. Same schedule, scaled.
    seed: int = 0
    # Wall-clock cap in seconds (compilation included); ``steps`` is then an upper bound. See `schedule`.
    time_budget_s: float | None = None
    # Any-order training (docs/oar.md): the share of sequences, in [0, 1], drawn in a uniformly
    # random permutation of the grid; the rest keep the model's native order (or the per-image orders given
    # to `train_dar`). Each sequence carries its own order through the 4D RoPE's current + next cells and the
    # direction ids. 0 (the demo's recipe) trains the native order only, on the unchanged code path.
    random_order_share: float = 0.0


def schedule(step: int, elapsed_s: float, opts: TrainDAROptions) -> float:
    """The learning rate of ``step``: linear warmup over ``opts.warmup`` steps, then a cosine to zero over
    the run's progress. Progress is step / steps, or, with a time budget, whichever of that and
    elapsed / budget is further along.

    Why time: the demo's budget is 45 minutes in all, and the 2-core machines it trains on differ (AVX2
    against AVX-512) and drift (the same 6 x 128 step measured 0.57 to 0.87 s in one session on one
    machine). A fixed step count overruns on a slow machine and leaves time unused on a fast one; a
    schedule on the budget's fraction anneals to zero as the time runs out, wherever it runs (budgeted
    training, Li et al., ICLR 2020). The price is that the step count, and so the model, depends on
    the machine: the log records the steps done."""
    progress = step / opts.steps
    if opts.time_budget_s:
        progress = max(progress, elapsed_s / opts.time_budget_s)
    warm = min(1.0, (step + 1) / opts.warmup)
    return opts.lr * warm * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def order_tables(cells: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan orders as flat cells ``cells`` [B, N] (r*G + c, in visiting order) → 4D-RoPE positions [B, N, 4]
    and direction ids [B, N]: row by row what `positions_table(order, G, "4d")` and `direction_ids(order)`
    give, in torch, for the per-sequence orders of any-order training (tests check the equality)."""
    rc = torch.stack([cells // grid, cells % grid], dim=-1)  # [B, N, 2]
    cur = torch.cat([torch.full_like(rc[:, :1], grid), rc[:, :-1]], dim=1)  # the class token: sentinel G
    step = torch.sign(rc[:, 1:] - rc[:, :-1])  # [B, N-1, 2], never (0, 0) in a permutation
    code = (step[..., 0] + 1) * 3 + (step[..., 1] + 1)  # 0..8 with 4 the absent (0, 0): KING_MOVES' order
    dirs = torch.cat([torch.full_like(code[:, :1], START), code - (code > 4).long()], dim=1)
    return torch.cat([cur, rc], dim=-1), dirs


def init_for_training(model: Transformer) -> None:
    """DiT-style: AdaLN projections start at zero, so every block starts as the identity."""
    with torch.no_grad():
        for layer in model.layers:
            layer.adaLN_modulation.weight.zero_()
            layer.adaLN_modulation.bias.zero_()
        model.final_modulation.weight.zero_()
        model.final_modulation.bias.zero_()


def cpu_runs_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX-512 and newer).

    Why: bf16 autocast is what makes the demo budget (0.83 s per eager step on an AVX-512 EPYC), but
    on an AVX2-only CPU the same step took 30.9 s against 3.1 s in fp32: without native kernels bf16 is
    emulated, ten times slower than not using it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class _TrainingForward:
    """model.forward_full, compiled by Inductor when ``enabled``.

    Why: on the 2-core CPU the demo trains on, eager mode spends about a third of a step in small
    elementwise kernels (RoPE, AdaLN modulation, casts); Inductor fuses them, and a step ran 1.3x faster
    (0.64 vs 0.83 s, batch 32, bf16 autocast). Compilation fails only at the first call (for example
    without a C++ compiler), so calls are guarded and the run falls back to eager with one line."""

    def __init__(self, model: Transformer, enabled: bool, log=print) -> None:
        self.eager = model.forward_full
        self.compiled = torch.compile(model.forward_full) if enabled else None
        self.log = log

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # any compiler failure means: train in eager
                first_line = (str(exc).splitlines() or [""])[0][:120]
                self.log(f"torch.compile unavailable ({type(exc).__name__}: {first_line}); training in eager mode")
                self.compiled = None
        return self.eager(*args, **kwargs)


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                       eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation (same coefficients, steps and
    normalisation), in fp32 instead of its hard-coded bf16."""
    a, b, c = ns_coefficients
    x = grad.float()
    if grad.size(0) > grad.size(1):
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if grad.size(0) > grad.size(1) else x


class Fp32Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz in fp32, for CPUs without native bf16.

    Why: the stock iteration casts to bf16, which an AVX2 CPU emulates; on the demo DAR's 30 matrices
    a Muon step took 3.78 s there against 0.092 s in fp32 (2 threads), longer than the training step
    itself. PyTorch has no option for the dtype, so the step swaps its module's Newton-Schulz function
    for ``newton_schulz_fp32`` while it runs (tests check the swap takes effect)."""

    @torch.no_grad()
    def step(self, closure=None):
        with mock.patch.object(torch.optim._muon, "_zeropower_via_newtonschulz", newton_schulz_fp32):
            return super().step(closure)


def make_optimizer(model: Transformer, opts: TrainDAROptions) -> list[torch.optim.Optimizer]:
    """AdamW (betas 0.9/0.95, no decay on vectors), or Muon for the attention and feed-forward matrices
    with AdamW for the rest. Embeddings and the head stay with AdamW as Muon's authors advise; AdaLN
    (zero-initialised) and the token MLP stay there too, a choice that was not compared.

    Why Muon is offered: the demo's DAR is compute-bound on a 2-core CPU, so what it learns per step is
    what the budget buys. ``adjust_lr_fn="match_rms_adamw"`` scales Muon's update to AdamW's RMS, so
    both share one learning rate and schedule. Measured (650 steps, AVX2, docs/demo-model.md): loss 0.90 against
    AdamW's 1.03 and 48.4 % against 38.6 % class accuracy. PyTorch's Newton-Schulz runs in bf16, which
    an AVX2 CPU emulates (4.8 s per optimizer step on one thread), so without native bf16 the matrices get
    ``Fp32Muon`` instead."""
    if opts.optimizer not in ("adamw", "muon"):
        raise ValueError(f"optimizer must be 'adamw' or 'muon', got {opts.optimizer!r}")
    hidden, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            is_hidden = p.ndim == 2 and name.startswith("layers.") and (
                ".attention." in name or ".feed_forward." in name)
            (hidden if opts.optimizer == "muon" and is_hidden else rest).append(p)
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW(
        [{"params": [p for p in rest if p.ndim >= 2], "weight_decay": opts.weight_decay},
         {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.95))]
    if hidden:
        muon = torch.optim.Muon if cpu_runs_bf16() else Fp32Muon
        optimizers.append(muon(hidden, lr=opts.muon_lr or opts.lr, weight_decay=opts.weight_decay,
                               adjust_lr_fn="match_rms_adamw"))
    return optimizers


def set_learning_rates(optimizers: list[torch.optim.Optimizer], lr: float, opts: TrainDAROptions) -> None:
    """The schedule's ``lr`` for AdamW; Muon gets it scaled by ``muon_lr / lr``, so both follow one
    warmup and cosine. Measured (docs/demo-model.md): Muon at 4x AdamW's 2.5e-3 ended 0.012 nats lower in a proxy of
    900 steps but 0.07 higher over the recipe's 3,100, so the recipe keeps one rate."""
    for opt in optimizers:
        scale = (opts.muon_lr or opts.lr) / opts.lr if isinstance(opt, torch.optim.Muon) else 1.0
        for group in opt.param_groups:
            group["lr"] = lr * scale


def train_dar(cfg: ModelConfig, codebook: torch.Tensor | None, token_grids: np.ndarray, labels: np.ndarray,
              opts: TrainDAROptions, progress: bool = True,
              model: Transformer | None = None, log=print,
              orders: np.ndarray | None = None) -> tuple[Transformer, dict]:
    """token_grids [N, G, G] int64 with class labels [N]; returns the model and its training log.

    With ``model`` the run continues from its weights (a warm restart of the LR schedule): the demo
    recipe trains in phases. ``orders`` [N, G*G] (flat cells r*G + c, one scan order per image, e.g. the
    orders OAR extracts) replaces the native order of those images; with it or a ``random_order_share``
    above 0 every sequence carries its own order (`_AnyOrderBatches`)."""
    torch.manual_seed(opts.seed)
    if model is None:
        model = build_model(cfg, seed=opts.seed)
        if cfg.token_embedding == "codebook_mlp":  # a learned embedding (D-AR's GPT) needs no codebook
            with torch.no_grad():
                model.tok_codebook.copy_(codebook)
        if cfg.adaln:
            init_for_training(model)
    model.train()
    order = make_order(cfg.order, cfg.grid_size)
    any_order = _AnyOrderBatches(cfg, order, token_grids, orders, opts) if (
        orders is not None or opts.random_order_share > 0) else None
    seqs = torch.from_numpy(gather_from_grid(token_grids, order).astype(np.int64))
    labels_t = torch.from_numpy(labels.astype(np.int64))
    pos = torch.from_numpy(positions_table(order, cfg.grid_size, cfg.rope))
    dirs = torch.from_numpy(direction_ids(order))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizers = make_optimizer(model, opts)
    gen = torch.Generator().manual_seed(opts.seed)
    forward = _TrainingForward(model, opts.compile, log)
    bf16 = opts.bf16 and cpu_runs_bf16()
    if opts.bf16 and not bf16:
        log("this CPU has no native bf16 (oneDNN); training the DAR in fp32 (bf16 would be ~10x slower)")
    losses: list[float] = []
    kind_losses: dict[str, list[float]] = {"given": [], "random": []}  # any-order: per kind of order
    start = time.perf_counter()
    last_step_s, stopped_by = 0.0, "steps"
    bar = tqdm(range(opts.steps), desc="train DAR", disable=not progress)
    for step in bar:
        elapsed = time.perf_counter() - start
        if opts.time_budget_s and elapsed + last_step_s > opts.time_budget_s:  # the next step would overrun
            stopped_by = "time budget"
            break
        lr = schedule(step, elapsed, opts)
        set_learning_rates(optimizers, lr, opts)
        idx = torch.randint(0, len(seqs), (opts.batch_size,), generator=gen)
        tokens, classes = seqs[idx], labels_t[idx].clone()
        drop = torch.rand(opts.batch_size, generator=gen) < cfg.class_dropout
        classes[drop] = cfg.num_classes  # the null class, learned for CFG
        if any_order is not None:
            tokens, pos, dirs, random_rows = any_order.batch(idx, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(classes, tokens[:, :-1], pos, dirs, gather_modulation=True)
        if any_order is None:
            loss = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), tokens.reshape(-1))
        else:
            per_row = F.cross_entropy(logits.float().transpose(1, 2), tokens, reduction="none").mean(dim=1)
            loss = per_row.mean()
            for kind, rows in (("random", random_rows), ("given", ~random_rows)):
                if rows.any():
                    kind_losses[kind].append(float(per_row.detach()[rows].mean()))
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
        for opt in optimizers:
            opt.step()
        losses.append(float(loss.detach()))
        last_step_s = time.perf_counter() - start - elapsed
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.1e}")
    bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    if stopped_by != "steps":
        log(f"DAR: time budget of {opts.time_budget_s:.0f} s reached after {len(losses)} of {opts.steps} steps")
    record = {"steps": len(losses), "stopped_by": stopped_by, "time_budget_s": opts.time_budget_s,
              "compiled": forward.compiled is not None, "bf16": bf16, "batch_size": opts.batch_size,
              "sequences_seen": len(losses) * opts.batch_size,
              "train_seconds": round(seconds, 1), "final_loss": float(np.mean(losses[-50:])),
              "loss_curve": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, len(losses), 50)]}
    if any_order is not None:
        record["random_order_share"] = opts.random_order_share
        record["given_orders"] = "per image" if orders is not None else f"native ({cfg.order})"
        for kind, values in kind_losses.items():
            if values:  # the last 50 batches' mean, and the curve in chunks of 50 batches that had that kind
                record[f"final_loss_{kind}_order"] = float(np.mean(values[-50:]))
                record[f"loss_curve_{kind}_order"] = [round(float(np.mean(values[i:i + 50])), 4)
                                                      for i in range(0, len(values), 50)]
    return model, record


class _AnyOrderBatches:
    """Batches for any-order training: each sequence's tokens read in its own order, with its positions
    [B, N, 4] and directions [B, N] (`order_tables`).

    A sequence takes a uniformly random permutation with probability ``opts.random_order_share``, otherwise
    its image's given order (``orders``) or the model's native one. Random permutations are what the
    any-order models OAR starts from train on (as σ-GPT and RAR do); DAR's next-cell RoPE and direction
    embedding already tell the model where the next token goes, so no new parameters are needed."""

    def __init__(self, cfg: ModelConfig, native: np.ndarray, token_grids: np.ndarray, orders: np.ndarray | None,
                 opts: TrainDAROptions) -> None:
        if not 0.0 <= opts.random_order_share <= 1.0:
            raise ValueError(f"random_order_share must be in [0, 1], got {opts.random_order_share}")
        if cfg.rope != "4d" or not cfg.adaln:
            raise ValueError("any-order training needs 4D RoPE and AdaLN direction embeddings (the next cell "
                             f"is an input); this model has rope={cfg.rope!r}, adaln={cfg.adaln}")
        self.grid, self.share = cfg.grid_size, opts.random_order_share
        self.flat = torch.from_numpy(np.asarray(token_grids, dtype=np.int64).reshape(len(token_grids), -1))
        n = self.flat.shape[1]
        self.native = torch.from_numpy(native[:, 0] * self.grid + native[:, 1])
        self.given = None
        if orders is not None:
            given = np.asarray(orders, dtype=np.int64)
            if given.shape != self.flat.shape:
                raise ValueError(f"orders must be [images, {n}] flat cells, got {list(given.shape)}")
            if not (np.sort(given, axis=1) == np.arange(n)).all():
                raise ValueError("every given order must be a permutation of the grid's cells")
            self.given = torch.from_numpy(given)

    def batch(self, idx: torch.Tensor, gen: torch.Generator):
        b, n = len(idx), self.flat.shape[1]
        cells = self.given[idx].clone() if self.given is not None else self.native.expand(b, n).clone()
        random_rows = torch.rand(b, generator=gen) < self.share
        if random_rows.any():
            cells[random_rows] = torch.argsort(torch.rand(int(random_rows.sum()), n, generator=gen), dim=1)
        tokens = self.flat[idx].gather(1, cells)
        pos, dirs = order_tables(cells, self.grid)
        return tokens, pos, dirs, random_rows
