"""OAR's second stage on the any-order demo (docs/oar.md): the orders the model prefers on
training images, and the fine-tune on them (`dartrt oar-finetune`).

**Order extraction, teacher-forced.** For a training image's token grid the model walks the grid: with
cells 1..t painted with their true tokens, every free cell l is scored as the next position by a query
from the last painted token whose next cell is l (its 4D-RoPE "next" half and its direction id follow l),
attending to the painted prefix and to itself (OAR's rule). The cell
with the highest score is taken next, its key/value row (computed with that next cell) is committed to
the cache, and its TRUE token is fed (teacher forcing). The score is, by default, the confidence the
adaptive sampler uses: the largest probability of the cell's predicted distribution ("confidence");
"likelihood" scores the probability of the cell's true token instead. One batched forward per step over
all candidates of all images (`candidate_logits`): sum over steps of the free cells, 32,896 queries per
256-cell image, against the prefix cache, which is read and never copied per candidate.

**Fine-tune.** `train_dar` on (image, its extracted order) pairs, with a share of random permutations of
the same images kept so the model stays an any-order model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dartrt.models import recorded_path
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_copy, atomic_write_json, atomic_write_npz
from dartrt.runtime.orders import START

from ..model import Transformer
from ..rope import apply_rope, gather_cos_sin
from .train_dar import TrainDAROptions, order_tables, train_dar

RULES = ("confidence", "likelihood")


# ---- scoring every free cell -----------------------------------------------------------------------------
def candidate_logits(model: Transformer, h: torch.Tensor, positions: torch.Tensor, direction: torch.Tensor,
                     table: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], filled: int
                     ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The last input h [R, d] queried once per candidate next cell: positions [R, C, 4], direction [R, C],
    the rows' AdaLN tables [R, 9, M], and per layer the cached keys/values [R, H, T, D] of which the first
    ``filled`` slots are the prefix. Each candidate attends to the prefix and to its own key only.

    Returns the candidates' logits [R, C, V] and per layer their key/value rows [R, H, C, D] (the row of
    the chosen cell is what a step would have cached). The same arithmetic as `Transformer.forward_step`
    (checked against `forward_full` along the chosen order), except that the prefix is shared by the C
    queries of a row as a matrix product instead of being copied C times into a masked cache."""
    cfg = model.cfg
    if not cfg.adaln:
        raise DartrtError("order extraction needs an any-order DAR (AdaLN with direction embeddings)")
    rows, count = direction.shape
    n_head, head_dim = cfg.n_head, cfg.head_dim
    cos, sin = gather_cos_sin(model.rope_cos, model.rope_sin, positions, cfg.rope)  # [R, C, D/2]
    mods = model._split_modulation(torch.gather(table, 1, direction[..., None].expand(-1, -1, table.shape[-1])))
    x = h[:, None, :].expand(rows, count, h.shape[-1])
    scale = 1.0 / math.sqrt(head_dim)
    new_rows = []
    for i, layer in enumerate(model.layers):
        shift1, scale1, gate1, shift2, scale2, gate2 = mods[i].chunk(6, dim=-1)
        attention = layer.attention
        qkv = attention.wqkv(layer.attention_norm(x) * (1 + scale1) + shift1)
        q, k, v = qkv.view(rows, count, 3, n_head, head_dim).permute(2, 0, 3, 1, 4)  # [R, H, C, D] each
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        own = (q * k).sum(-1, keepdim=True) * scale  # [R, H, C, 1]
        if filled:
            prefix = q @ keys[i][:, :, :filled].transpose(-1, -2) * scale  # [R, H, C, T]
            weights = torch.softmax(torch.cat([prefix, own], dim=-1), dim=-1)
            y = weights[..., :filled] @ values[i][:, :, :filled] + weights[..., filled:] * v
        else:  # the class token: its own key is all there is
            y = v
        a = attention.wo(y.transpose(1, 2).reshape(rows, count, n_head * head_dim))
        mid = x + gate1 * a
        x = mid + gate2 * layer.feed_forward(layer.ffn_norm(mid) * (1 + scale2) + shift2)
        new_rows.append((k, v))
    x = model.norm(x)
    shift, fscale = mods[-1].chunk(2, dim=-1)
    return model.output(x * (1 + fscale) + shift).float(), new_rows


def _direction_to(cur: torch.Tensor, cells_rc: torch.Tensor) -> torch.Tensor:
    """Direction ids [B, C] of steps from cur [B, 2] to each of cells_rc [B, C, 2] (`direction_ids`' rule)."""
    step = torch.sign(cells_rc - cur[:, None, :])
    code = (step[..., 0] + 1) * 3 + (step[..., 1] + 1)
    return code - (code > 4).long()


@torch.no_grad()
def extract_orders(model: Transformer, grids: np.ndarray, labels: np.ndarray, rule: str = "confidence",
                   batch_size: int = 32, deadline: float | None = None, log=None) -> tuple[np.ndarray, dict]:
    """The order ``model`` prefers for each token grid [B, G, G] (class ``labels`` [B]), teacher-forced:
    at each step the free cell with the highest ``rule`` score is next (module doc). Returns the orders
    [B', G*G] as flat cells r*G + c (B' < B when ``deadline``, a `time.perf_counter` value, stops it between
    batches) and statistics: the true tokens' mean NLL along the chosen orders, the mean confidence."""
    if rule not in RULES:
        raise DartrtError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    n = model.cfg.grid_size ** 2
    orders, nll, confidence = [], [], []
    for first in range(0, len(grids), batch_size):
        if deadline is not None and first and time.perf_counter() > deadline:
            break
        tokens = torch.from_numpy(np.asarray(grids[first:first + batch_size], dtype=np.int64).reshape(-1, n))
        classes = torch.from_numpy(np.asarray(labels[first:first + batch_size], dtype=np.int64))
        order, stats = _extract_batch(model, tokens, classes, rule)
        orders.append(order.numpy())
        nll.append(stats[0])
        confidence.append(stats[1])
        if log is not None:
            log(f"orders extracted for {first + len(tokens)} images")
    if not orders:
        return np.zeros((0, n), dtype=np.int64), {}
    return np.concatenate(orders), {"images": int(sum(len(o) for o in orders)), "rule": rule,
                                    "nll_along_order": round(float(np.mean(np.concatenate(nll))), 4),
                                    "mean_confidence": round(float(np.mean(np.concatenate(confidence))), 4)}


def _extract_batch(model: Transformer, tokens: torch.Tensor, classes: torch.Tensor, rule: str):
    cfg = model.cfg
    g, n = cfg.grid_size, cfg.grid_size ** 2
    b = len(tokens)
    table = model.modulation_table(classes)
    shape = (b, cfg.n_head, n, cfg.head_dim)
    keys = [torch.zeros(shape) for _ in model.layers]
    values = [torch.zeros(shape) for _ in model.layers]
    h = model.cls_embedding(classes)
    cur = torch.full((b, 2), g, dtype=torch.long)
    free = torch.ones(b, n, dtype=torch.bool)
    order = torch.empty(b, n, dtype=torch.long)
    nll = torch.empty(b, n)
    conf = torch.empty(b, n)
    batch_rows = torch.arange(b)
    for t in range(n):
        cells = free.nonzero()[:, 1].view(b, n - t)  # each row's free cells, ascending
        rc = torch.stack([cells // g, cells % g], dim=-1)
        positions = torch.cat([cur[:, None, :].expand(-1, n - t, -1), rc], dim=-1)
        direction = torch.full_like(cells, START) if t == 0 else _direction_to(cur, rc)
        logits, rows = candidate_logits(model, h, positions, direction, table, keys, values, t)
        logp = torch.log_softmax(logits, dim=-1)  # [B, C, V]
        truth = tokens.gather(1, cells)  # [B, C]
        true_logp = logp.gather(-1, truth[..., None])[..., 0]
        score = logp.max(dim=-1).values if rule == "confidence" else true_logp
        pick = score.argmax(dim=-1)  # [B]
        cell = cells[batch_rows, pick]
        order[:, t] = cell
        nll[:, t] = -true_logp[batch_rows, pick]
        conf[:, t] = logp.max(dim=-1).values[batch_rows, pick].exp()
        for i, (k, v) in enumerate(rows):  # commit the chosen candidate's key/value row at slot t
            keys[i][:, :, t] = k[batch_rows, :, pick]
            values[i][:, :, t] = v[batch_rows, :, pick]
        free[batch_rows, cell] = False
        cur = torch.stack([cell // g, cell % g], dim=-1)
        h = model.embed_tokens(tokens[batch_rows, cell])  # teacher forcing: the true token is painted
    return order, (nll.mean(dim=1).numpy(), conf.mean(dim=1).numpy())


@torch.no_grad()
def order_nll(model: Transformer, grids: np.ndarray, labels: np.ndarray, orders: np.ndarray,
              batch_size: int = 64) -> float:
    """Mean teacher-forced NLL (nats per token) of token grids [B, G, G] read in per-image orders [B, G*G]
    (flat cells), in one causal pass per batch."""
    g = model.cfg.grid_size
    flat = torch.from_numpy(np.asarray(grids, dtype=np.int64).reshape(len(grids), -1))
    cells = torch.from_numpy(np.array(orders, dtype=np.int64))  # a writable copy
    total = 0.0
    for i in range(0, len(flat), batch_size):
        c = cells[i:i + batch_size]
        tok = flat[i:i + batch_size].gather(1, c)
        pos, dirs = order_tables(c, g)
        logits = model.forward_full(torch.from_numpy(np.asarray(labels[i:i + batch_size], dtype=np.int64)),
                                    tok[:, :-1], pos, dirs)
        total += float(F.cross_entropy(logits.transpose(1, 2), tok, reduction="sum"))
    return total / flat.numel()


# ---- the command ------------------------------------------------------------------------------------------
@dataclass
class OARRecipe:
    images: int = 2000  # at most this many training images (from index 0) get their orders extracted
    rule: str = "confidence"  # the extraction score (module doc)
    extract_batch: int = 32
    # Shares of the budget: the extraction stops between batches once its share is spent, the fine-tune
    # then trains until the whole budget is spent (less 10 s for saving).
    extract_share: float = 0.5
    # Muon + AdamW as the demo, a lower peak rate (a fine-tune of a converged model), a quarter of the
    # sequences in random permutations of the same images so the model keeps any order.
    finetune: TrainDAROptions = field(default_factory=lambda: TrainDAROptions(
        steps=20000, batch_size=32, lr=5e-4, warmup=20, compile=True, optimizer="muon", random_order_share=0.25))
    threads: int = 2
    budget_minutes: float | None = 15.0  # the whole command; None: no clock (all images, finetune.steps)


QUICK = OARRecipe(images=4, extract_batch=2, finetune=TrainDAROptions(steps=3, batch_size=2, warmup=1,
                                                                     random_order_share=0.25),
                  budget_minutes=None)


def oar_finetune(source: str | Path, out: str | Path, recipe: OARRecipe | None = None, progress: bool = True,
                 log=print) -> dict:
    """Extract ``source``'s preferred orders on training images and fine-tune it on them into ``out``
    (an any-order demo folder: weights, VQ, classifier and ``vq_encoder.safetensors`` are copied along)."""

    from ..checkpoint import load_checkpoint, save_checkpoint
    from .anyorder import ENCODER_FILE, cpu_description, load_tokenizer
    from .classifier import CONFIG_FILE, WEIGHTS_FILE
    from .train import SAVE_RESERVE_S, tokenize

    recipe = recipe or OARRecipe()
    source, out = Path(source), Path(out)
    if recipe.rule not in RULES:
        raise DartrtError(f"rule must be one of {', '.join(RULES)}, got {recipe.rule!r}")
    torch.set_num_threads(recipe.threads)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(source)
    if not ckpt.config.any_order:
        raise DartrtError(f"{source} was not trained for any order (config any_order is false); OAR's fine-tune "
                          "starts from an any-order model (dartrt train-demo --any-order)")
    if not (source / ENCODER_FILE).is_file():
        raise DartrtError(f"{source} has no {ENCODER_FILE} to tokenise training images with")
    model = ckpt.model.float().eval()
    grids, labels = tokenize(load_tokenizer(source), recipe.images)
    timings = {"tokenize": time.perf_counter() - t0}
    budget_s = recipe.budget_minutes * 60 if recipe.budget_minutes is not None else None
    deadline = t0 + recipe.extract_share * budget_s if budget_s else None
    t = time.perf_counter()
    orders, extraction = extract_orders(model, grids, labels, recipe.rule, recipe.extract_batch, deadline,
                                        log if progress else None)
    timings["extract"] = time.perf_counter() - t
    grids, labels = grids[:len(orders)], labels[:len(orders)]
    log(f"extracted {len(orders)} orders in {timings['extract']:.0f} s ({timings['extract'] / len(orders):.2f} s "
        f"per image); NLL along them {extraction['nll_along_order']:.3f}")
    # Where the extracted orders stand against fixed ones, on the same images, before the fine-tune.
    before = _order_report(model, grids, labels, orders)
    log(f"NLL per token before the fine-tune: {before}")

    phase = recipe.finetune
    if budget_s:
        left = budget_s - (time.perf_counter() - t0) - SAVE_RESERVE_S
        if left < 30:
            raise DartrtError(f"the OAR budget leaves {max(left, 0):.0f} s for the fine-tune; raise --budget-minutes "
                              "or lower the extraction share")
        phase = dataclasses.replace(phase, time_budget_s=round(min(left, phase.time_budget_s or left), 1))
    model, ft_log = train_dar(ckpt.config, None, grids, labels, phase, progress=progress, model=model, log=log,
                              orders=orders)
    timings["finetune"] = ft_log["train_seconds"]
    after = _order_report(model, grids, labels, orders)
    log(f"NLL per token after the fine-tune: {after}")
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    if "oar" not in cfg.name:
        cfg.name = f"{cfg.name}-oar"
    save_checkpoint(out, model, ckpt.vq, ckpt.image_size)
    if out.resolve() != source.resolve():
        for name in (CONFIG_FILE, WEIGHTS_FILE, ENCODER_FILE):
            atomic_copy(source / name, out / name)
    atomic_write_npz(out / "oar_orders.npz", compressed=True, orders=orders.astype(np.int16),
                     labels=labels.astype(np.int16))
    timings["total"] = time.perf_counter() - t0
    report = {"recipe": asdict(recipe), "source": recorded_path(source), "extraction": extraction,
              "nll_per_token_before": before, "nll_per_token_after": after, "finetune": ft_log,
              "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
              "torch_threads": torch.get_num_threads(), "cpu": cpu_description()}
    atomic_write_json(out / "oar_log.json", report)
    return report


def _order_report(model: Transformer, grids: np.ndarray, labels: np.ndarray, orders: np.ndarray) -> dict:
    """NLL per token of (up to 256 of) the images read in their extracted orders, the native order and
    one random permutation each."""
    from dartrt.runtime.orders import make_order

    m = min(len(grids), 256)
    g = model.cfg.grid_size
    native = make_order(model.cfg.order, g)
    native_cells = np.broadcast_to(native[:, 0] * g + native[:, 1], (m, g * g))
    rng = np.random.default_rng(0)
    random_cells = np.stack([rng.permutation(g * g) for _ in range(m)])
    was_training = model.training
    model.eval()
    report = {name: round(order_nll(model, grids[:m], labels[:m], cells), 4)
              for name, cells in (("extracted", orders[:m]), (model.cfg.order, native_cells),
                                  ("random", random_cells))}
    model.train(was_training)
    return report
