"""Token ids → images with D-AR's tokenizer: whole, as a preview, or streamed as the tokens arrive.

``StreamingDecoder`` is the shape the runtime will take later: tokens come in any chunking (one per AR
step, or a group at a time); the conditions transformer runs on each new chunk against its own KV cache;
as soon as the tokens of the next step exist, that step's velocity call runs and its preview is ready. The
state it keeps between calls is the condition caches, the conditions computed so far, and the sampler's
(x, v_prev): nothing is recomputed.

The noise is always an explicit input (x_0, [n, 3, H, W] float32); ``make_noise`` draws it from a seed.
"""

from __future__ import annotations

import torch

from dartrt.runtime.errors import DartrtError

from .sampler import (
    FlowSampler,
    check_groups,
    check_noise,
    make_noise,
    preview_from_scratch,
    step_token_ranges,
    tokens_needed,
)
from .tokenizer import DARTokenizer


def _check_ids(tokenizer: DARTokenizer, ids: torch.Tensor, need: int) -> torch.Tensor:
    cfg = tokenizer.cfg
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype not in (torch.int32, torch.int64):
        shape = list(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise DartrtError(f"token ids must be an integer tensor [n, tokens], got {shape}")
    if not need <= ids.shape[1] <= cfg.num_tokens:
        raise DartrtError(f"got {ids.shape[1]} tokens per image; this needs {need} to {cfg.num_tokens}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= cfg.codebook_size):
        raise DartrtError(f"token ids must lie in [0, {cfg.codebook_size}), got {int(ids.min())}..{int(ids.max())}")
    return ids.long()


def _noise(tokenizer: DARTokenizer, noise: torch.Tensor | None, seed: int, batch: int) -> torch.Tensor:
    if noise is None:
        noise = make_noise(tokenizer.cfg, batch, seed)
    ref = tokenizer.decoder_embedding.weight
    return check_noise(tokenizer.cfg, noise, batch).to(device=ref.device, dtype=ref.dtype)


@torch.no_grad()
def decode(tokenizer: DARTokenizer, ids: torch.Tensor, noise: torch.Tensor | None = None,
           seed: int = 0) -> torch.Tensor:
    """All tokens [n, num_tokens] → images [n, 3, H, W], float, about [-1, 1] (x / data_std)."""
    cfg = tokenizer.cfg
    ids = _check_ids(tokenizer, ids, cfg.num_tokens)
    cond = tokenizer.conditions(ids)
    sampler = FlowSampler(tokenizer.velocity, _noise(tokenizer, noise, seed, ids.shape[0]), cfg)
    for begin, end in step_token_ranges(cfg):
        sampler.advance(cond[:, begin:end])
    return sampler.image()


@torch.no_grad()
def preview(tokenizer: DARTokenizer, ids: torch.Tensor, groups: int, noise: torch.Tensor | None = None,
            seed: int = 0) -> torch.Tensor:
    """The public ``clip_steps = groups`` image, recomputed from scratch (``groups`` velocity calls). ``ids``
    may be a prefix: only the tokens the first ``groups`` steps read are needed."""
    cfg = tokenizer.cfg
    check_groups(cfg, groups)
    ids = _check_ids(tokenizer, ids, tokens_needed(cfg, groups))
    cond = tokenizer.conditions(ids)
    ranges = step_token_ranges(cfg)
    return preview_from_scratch(tokenizer.velocity, lambda i: cond[:, ranges[i][0]:ranges[i][1]],
                                _noise(tokenizer, noise, seed, ids.shape[0]), cfg, groups)


class StreamingDecoder:
    """Feed tokens as they are generated; every step runs as soon as its tokens exist."""

    def __init__(self, tokenizer: DARTokenizer, batch: int, noise: torch.Tensor | None = None, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.cfg = tokenizer.cfg
        self.batch = batch
        self.ranges = step_token_ranges(self.cfg)
        self.sampler = FlowSampler(tokenizer.velocity, _noise(tokenizer, noise, seed, batch), self.cfg)
        self.caches = tokenizer.new_condition_cache(batch)
        ref = tokenizer.decoder_embedding.weight
        self._cond = torch.zeros(batch, self.cfg.num_tokens, self.cfg.cond_dim, dtype=ref.dtype, device=ref.device)
        self.tokens_seen = 0

    @property
    def cond(self) -> torch.Tensor:
        """The conditions of the tokens pushed so far, [batch, tokens_seen, cond_dim]."""
        return self._cond[:, : self.tokens_seen]

    @property
    def steps_done(self) -> int:
        return self.sampler.step

    @torch.no_grad()
    def push(self, ids: torch.Tensor) -> list[int]:
        """Append ids [batch, S]; returns the group counts k whose previews became ready (often none)."""
        if not (isinstance(ids, torch.Tensor) and ids.ndim == 2 and ids.shape[0] == self.batch):
            raise DartrtError(f"push takes token ids [{self.batch}, S], got "
                              f"{list(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        room = self.cfg.num_tokens - self.tokens_seen
        if ids.shape[1] > room:
            raise DartrtError(f"{ids.shape[1]} more tokens exceed the {self.cfg.num_tokens} per image "
                              f"({self.tokens_seen} already pushed)")
        if ids.shape[1]:
            ids = _check_ids(self.tokenizer, ids, 0)
            write_index = torch.full((self.batch,), self.tokens_seen, dtype=torch.long, device=ids.device)
            cond, self.caches = self.tokenizer.conditions_step(ids, write_index, self.caches)
            self._cond[:, self.tokens_seen : self.tokens_seen + ids.shape[1]] = cond
            self.tokens_seen += ids.shape[1]
        ready = []
        while not self.sampler.done and self.ranges[self.sampler.step][1] <= self.tokens_seen:
            begin, end = self.ranges[self.sampler.step]
            self.sampler.advance(self.cond[:, begin:end])
            ready.append(self.sampler.step)
        return ready

    def preview(self) -> torch.Tensor:
        """The image after the groups decoded so far (the final image once all have run)."""
        return self.sampler.preview()

    def image(self) -> torch.Tensor:
        return self.sampler.image()
