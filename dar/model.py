"""The family's decoder: a Llama-style transformer with a static KV cache.

Parameter names are LlamaGen's (``cls_embedding.embedding_table``, ``layers.{i}.attention.wqkv``, …)
so its checkpoints load unchanged. DAR adds AdaLN (``adaLN_modulation`` per block, ``final_modulation``,
``dir_embedding``) and the frozen-codebook embedding (``tok_codebook`` + ``tok_mlp``).

One step function serves prefill, decode and export: it takes the caches [B, H, T_max, D], writes the
new keys/values at ``write_index`` and attends over all T_max slots under the mask j <= write_index + s.
While exporting, the cache write becomes ONNX ``TensorScatter`` and the attention ONNX ``Attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dartrt.runtime.orders import NUM_DIRECTIONS

from .config import ModelConfig
from .rope import apply_rope, gather_cos_sin, rope_tables

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (LlamaGen's form); ``affine=False`` for DAR's AdaLN-modulated norms."""

    def __init__(self, dim: int, eps: float, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm exports as one ONNX RMSNormalization (opset 23), which TensorRT maps to its
        # normalization layer with FP32 statistics; the FP16 pass can keep it whole.
        out = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x)
        return out * self.weight if self.weight is not None else out


def kv_write(cache: torch.Tensor, new: torch.Tensor, write_index: torch.Tensor) -> torch.Tensor:
    """Write new [B, H, S, D] into cache [B, H, T, D] at slots write_index[b] + s.

    Eager mode writes in place (the reference keeps one static cache). Export emits ONNX
    ``TensorScatter`` (opset 24), whose output the runtime aliases to the input buffer.
    """
    if torch.onnx.is_in_onnx_export():
        return torch.onnx.ops.symbolic(
            "TensorScatter", (cache, new, write_index), {"axis": -2, "mode": "linear"},
            dtype=cache.dtype, shape=cache.shape, version=24,
        )
    b, h, s, d = new.shape
    slots = write_index[:, None] + torch.arange(s, device=new.device)
    return cache.scatter_(2, slots[:, None, :, None].expand(b, h, s, d), new)


def attention_mask(write_index: torch.Tensor, seq: int, t_max: int) -> torch.Tensor:
    """Bool [B, 1, S, T]: key j is visible to new token s iff j <= write_index[b] + s."""
    q_pos = write_index[:, None] + torch.arange(seq, device=write_index.device)
    keys = torch.arange(t_max, device=write_index.device)
    return (keys[None, None, :] <= q_pos[:, :, None]).unsqueeze(1)


def candidate_mask(write_index: torch.Tensor | None, count: int, t_max: int, rows: int) -> torch.Tensor:
    """Bool [R, 1, C, T + C] for C candidate queries of one last token (docs/oar.md): each sees the cached
    slots j < write_index[r] (none when ``write_index`` is None: the class token) and, among the C new
    keys, only its own. Built from aranges, so C stays a dynamic dimension when exported."""
    cand = torch.arange(count, device=write_index.device if write_index is not None else None)
    own = (cand[:, None] == cand[None, :])[None, None].expand(rows, 1, count, count)
    if write_index is None:
        return own
    keys = torch.arange(t_max, device=write_index.device)
    cached = (keys[None, :] < write_index[:, None])[:, None, None, :].expand(rows, 1, count, t_max)
    return torch.cat([cached, own], dim=-1)


def commit_candidate(caches: KVCache, rows: KVCache, choice: torch.Tensor, write_index: torch.Tensor) -> KVCache:
    """Write each row's chosen candidate K/V (rows[i] [R, H, C, D], ``choice`` [R]) into the caches at slot
    write_index[r]: a gather and the same `kv_write` a step uses (TensorScatter when exported)."""
    out: KVCache = []
    for (cache_k, cache_v), (k, v) in zip(caches, rows):
        index = choice[:, None, None, None].expand(k.shape[0], k.shape[1], 1, k.shape[3])
        out.append((kv_write(cache_k, k.gather(2, index), write_index),
                    kv_write(cache_v, v.gather(2, index), write_index)))
    return out


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.wqkv = nn.Linear(cfg.d_model, 3 * cfg.inner_dim, bias=False)
        self.wo = nn.Linear(cfg.inner_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                write_index: torch.Tensor | None, cache: tuple[torch.Tensor, torch.Tensor] | None):
        b, s, _ = x.shape
        q, k, v = self.wqkv(x).view(b, s, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = k, v
        if cache is not None and write_index is None:  # candidates: read the cache, return the new rows
            keys, values = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        elif cache is not None:
            k = keys = kv_write(cache[0], k, write_index)
            v = values = kv_write(cache[1], v, write_index)
        # mask None is the plain causal pass: is_causal lets torch pick its fused (flash) CPU kernel, which
        # an explicit mask rules out; training is ~2x faster for it.
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None,
                                           scale=1.0 / math.sqrt(self.head_dim))
        return self.wo(y.transpose(1, 2).reshape(b, s, -1)), (k, v)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm Llama block; with AdaLN the norms are modulated and each branch gated."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.adaln = cfg.adaln
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps, affine=not cfg.adaln)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, affine=not cfg.adaln)
        if cfg.adaln:
            self.adaLN_modulation = nn.Linear(cfg.d_model, 6 * cfg.d_model, bias=cfg.adaln_bias)

    def forward(self, x, cos, sin, mask, write_index, cache, mod: torch.Tensor | None):
        if not self.adaln:
            a, cache = self.attention(self.attention_norm(x), cos, sin, mask, write_index, cache)
            h = x + a
            return h + self.feed_forward(self.ffn_norm(h)), cache
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        a, cache = self.attention(self.attention_norm(x) * (1 + scale1) + shift1, cos, sin, mask,
                                  write_index, cache)
        h = x + gate1 * a
        return h + gate2 * self.feed_forward(self.ffn_norm(h) * (1 + scale2) + shift2), cache


class LabelEmbedder(nn.Module):
    """num_classes + 1 rows; the last is the null class used by CFG (LlamaGen's layout)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, class_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(class_ids)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.cls_embedding = LabelEmbedder(cfg.num_classes, d)
        if cfg.token_embedding == "learned":
            self.tok_embeddings = nn.Embedding(cfg.vocab_size, d)
        else:
            self.register_buffer("tok_codebook", torch.zeros(cfg.vocab_size, cfg.codebook_dim))
            self.tok_mlp = nn.Sequential(nn.Linear(cfg.codebook_dim, d), nn.SiLU(), nn.Linear(d, d))
        if cfg.adaln:
            self.dir_embedding = nn.Embedding(NUM_DIRECTIONS, d)
            self.final_modulation = nn.Linear(d, 2 * d, bias=cfg.adaln_bias)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(d, cfg.norm_eps, affine=not cfg.adaln)
        self.output = nn.Linear(d, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    # ---- embeddings and conditioning -------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cfg.token_embedding == "learned":
            return self.tok_embeddings(ids)
        vec = F.embedding(ids, self.tok_codebook)
        if self.cfg.codebook_l2norm:
            vec = F.normalize(vec, dim=-1)
        return self.tok_mlp(vec.to(self.tok_mlp[0].weight.dtype))

    @property
    def modulation_width(self) -> int:
        return (6 * self.cfg.n_layer + 2) * self.cfg.d_model

    def _modulate(self, cond: torch.Tensor) -> torch.Tensor:
        """c [..., d] → every layer's (shift, scale, gate)×2 and the final (shift, scale): [..., M]."""
        c = F.silu(cond)
        parts = [layer.adaLN_modulation(c) for layer in self.layers] + [self.final_modulation(c)]
        return torch.cat(parts, dim=-1)

    def modulation_table(self, class_ids: torch.Tensor) -> torch.Tensor:
        """AdaLN for all 9 directions of each row's class, [B, 9, M]: c_t takes only 9 values per
        class, so it is computed once per image and gathered by direction at every step (saving W_mod,
        about half a block's per-token FLOPs and a third of DAR-B's weight reads)."""
        cond = self.cls_embedding(class_ids)[:, None, :] + self.dir_embedding.weight[None]
        return self._modulate(cond)

    # ---- the step ----------------------------------------------------------------------------------
    def forward_step(self, h: torch.Tensor, positions: torch.Tensor, direction: torch.Tensor,
                     write_index: torch.Tensor, caches: KVCache,
                     modulation: torch.Tensor | None) -> tuple[torch.Tensor, KVCache]:
        """h [B, S, d] at indices write_index + s, with per-row positions [B, S, 4] and direction [B, S]
        → logits [B, S, V] (fp32) and updated caches."""
        b, s, _ = h.shape
        cos, sin = gather_cos_sin(self.rope_cos, self.rope_sin, positions, self.cfg.rope)  # [B, S, D/2]
        mask = attention_mask(write_index, s, caches[0][0].shape[2])
        # Per row: each row's S directions pick rows of its own [9, M] table (one GatherElements).
        mod = (torch.gather(modulation, 1, direction[..., None].expand(-1, -1, modulation.shape[-1]))
               if self.cfg.adaln else None)  # [B, S, M]
        return self._blocks(h, cos, sin, mask, write_index, caches, self._split_modulation(mod))

    def forward_candidates(self, h: torch.Tensor, positions: torch.Tensor, direction: torch.Tensor,
                           write_index: torch.Tensor | None, caches: KVCache | None,
                           modulation: torch.Tensor | None) -> tuple[torch.Tensor, KVCache]:
        """The last token h [R, 1, d] as C candidate queries (OAR's scoring, docs/oar.md): candidate c gets
        positions [R, C, 4] = (its cell, c) and direction [R, C], attends to the cached slots < write_index
        (nothing for the class token: ``caches`` None) and to its own key only. Returns logits [R, C, V] and,
        per layer, the candidates' K/V rows [R, H, C, D], which `commit_candidate` writes without a second
        forward: the last token's K/V depend on which cell comes next, so each candidate has its own."""
        rows, count = direction.shape
        h = h.expand(rows, count, h.shape[-1])
        cos, sin = gather_cos_sin(self.rope_cos, self.rope_sin, positions, self.cfg.rope)
        t_max = caches[0][0].shape[2] if caches is not None else 0
        mask = candidate_mask(write_index if caches is not None else None, count, t_max, rows)
        mod = (torch.gather(modulation, 1, direction[..., None].expand(-1, -1, modulation.shape[-1]))
               if self.cfg.adaln else None)
        return self._blocks(h, cos, sin, mask, None, caches, self._split_modulation(mod))

    def decode_candidates(self, token_ids, positions, direction, write_index, caches, modulation):
        """The last image token token_ids [R, 1] at slot write_index as C candidates → (logits, rows)."""
        return self.forward_candidates(self.embed_tokens(token_ids), positions, direction, write_index, caches,
                                       modulation)

    def _split_modulation(self, mod: torch.Tensor | None) -> list[torch.Tensor | None]:
        """[..., M] → one [..., 6d] chunk per layer and the final [..., 2d] (Nones without AdaLN).

        split (not slicing) keeps the backward a single concat instead of one zero-filled grad per layer."""
        d, n_layer = self.cfg.d_model, self.cfg.n_layer
        return list(mod.split([6 * d] * n_layer + [2 * d], dim=-1)) if mod is not None else [None] * (n_layer + 1)

    def _blocks(self, h, cos, sin, mask, write_index, caches, mods: list[torch.Tensor | None]):
        """The layers, final norm and head; ``mods`` holds each layer's AdaLN chunk and the final one."""
        new_caches: KVCache = []
        for i, layer in enumerate(self.layers):
            cache = caches[i] if caches is not None else None
            h, kv = layer(h, cos, sin, mask, write_index, cache, mods[i])
            new_caches.append(kv)
        h = self.norm(h)
        if mods[-1] is not None:
            shift, scale = mods[-1].chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        return self.output(h).float(), new_caches

    def prefill(self, class_ids, positions, direction, write_index, caches):
        """The class prefix: class_ids [B, P] → (logits, caches, modulation table or None)."""
        modulation = self.modulation_table(class_ids[:, 0]) if self.cfg.adaln else None
        h = self.cls_embedding(class_ids)
        logits, caches = self.forward_step(h, positions, direction, write_index, caches, modulation)
        return logits, caches, modulation

    def decode(self, token_ids, positions, direction, write_index, caches, modulation):
        """Image tokens token_ids [B, S] at indices write_index + s → (logits, caches)."""
        return self.forward_step(self.embed_tokens(token_ids), positions, direction, write_index,
                                 caches, modulation)

    def new_cache(self, batch: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """Static per-layer caches [B, H, T_max, D] with T_max = the sequence length."""
        ref = self.output.weight
        shape = (batch, self.cfg.n_head, self.cfg.seq_len, self.cfg.head_dim)
        kw = dict(dtype=dtype or ref.dtype, device=device or ref.device)
        return [(torch.zeros(shape, **kw), torch.zeros(shape, **kw)) for _ in range(self.cfg.n_layer)]

    # ---- training / reference: one causal pass, no cache ----------------------------------------
    def forward_full(self, class_ids: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
                     direction: torch.Tensor, gather_modulation: bool = False) -> torch.Tensor:
        """Teacher-forced logits [B, N, V] for the class token plus tokens [B, N-1], in one causal
        pass; positions [N, 4] and direction [N] for one order shared by the batch, or [B, N, 4] and
        [B, N] for one order per sequence (any-order training). By default AdaLN is computed per token
        (not gathered): the independent path the cache is checked against. Training gathers it from the
        9-row table, which is a third fewer FLOPs."""
        h = torch.cat([self.cls_embedding(class_ids)[:, None], self.embed_tokens(tokens)], dim=1)
        n = h.shape[1]
        positions, direction = positions[..., :n, :], direction[..., :n]
        cos, sin = gather_cos_sin(self.rope_cos, self.rope_sin, positions, self.cfg.rope)
        mods = self._split_modulation(None)
        if self.cfg.adaln and gather_modulation:
            # A one-hot matmul, not an index: its backward is a matmul instead of a scatter-add. One per
            # layer chunk of the [B, 9, M] table: gathering the whole table first made one [B, N, M]
            # tensor (M = 38 d, 240 MB at the demo's batch of 32) whose backward concat cost more than
            # the per-layer matmuls. Per chunk, a compiled demo step is 1.19x faster (1.55 s against
            # 1.84 s, medians of 4 alternating pairs in one run; 2-core AVX2 CPU, fp32).
            onehot = F.one_hot(direction, NUM_DIRECTIONS).to(h.dtype)
            pattern = "sk,bkm->bsm" if direction.dim() == 1 else "bsk,bkm->bsm"
            mods = [torch.einsum(pattern, onehot, chunk)
                    for chunk in self._split_modulation(self.modulation_table(class_ids))]
        elif self.cfg.adaln:
            dirs = self.dir_embedding(direction)
            cond = self.cls_embedding(class_ids)[:, None] + (dirs[None] if direction.dim() == 1 else dirs)
            mods = self._split_modulation(self._modulate(cond))
        logits, _ = self._blocks(h, cos, sin, None, None, None, mods)
        return logits


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int | None = 0) -> Transformer:
    """A model with LlamaGen's init (normal std 0.02, zero-free); ``device='meta'`` allocates nothing."""
    if seed is not None and str(device) != "meta":
        torch.manual_seed(seed)
    with torch.device(device):
        model = Transformer(cfg)
    if str(device) != "meta":
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if cfg.token_embedding == "codebook_mlp":
            model.tok_codebook.normal_()
        model.rope_cos, model.rope_sin = rope_tables(cfg)
    return model.eval()
