"""D-AR's decoder ODE: one velocity call per step, each conditioned on one group of tokens.

The public sampler (``SequentialDiffusionDecoder.sample``, showlab/D-AR), step for step:

- times t_i = i / steps for i < steps, then 1; shifted s = t / (t + shift·(1 − t)) (shift 2: s = t / (2 − t)),
  in float32;
- x_0 = noise [B, 3, H, W] (a standard normal draw); step i calls v_i = f(x_i, s_i, cond of step i);
- step 0 is Euler, x_1 = x_0 + (s_1 − s_0)·v_0; later steps are Adams–Bashforth 2 with the fixed
  coefficients of a uniform grid although the shifted steps are not uniform:
  x_{i+1} = x_i + (s_{i+1} − s_i)·(1.5·v_i − 0.5·v_{i−1});
- the image is x · (1 / data_std) (data_std 0.6). No guidance in the decoder.
- Step i is conditioned on tokens [b_i, b_i + tokens_per_step) with b_i = min(N − tokens_per_step,
  int(⌊t_i·G + ½⌋ / G · N)): group i when steps = groups.

A preview after k steps is the public ``clip_steps = k``: the same x_0 and the grid cut to [s_0 … s_{k−1}, 1],
so its last step goes straight to s = 1 with the v_{k−1} the full run computes anyway. A preview therefore
costs no velocity call: it is x_{k−1} + (1 − s_{k−1})·d_{k−1}, d being the step's Euler/AB2 direction.
``FlowSampler`` keeps (x, v_prev) between steps and gives every preview without restarting;
``preview_from_scratch`` recomputes one the public way, and is what the stream is checked against.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dartrt.runtime.errors import DartrtError

from .config import TokenizerConfig

Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Adams–Bashforth 2: d_i = 1.5·v_i − 0.5·v_{i−1}, fixed as in the public code.
AB2_CURRENT, AB2_PREVIOUS = 1.5, 0.5


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    return t / (t + shift * (1 - t))


def raw_times(steps: int) -> list[float]:
    """t_i = i / steps for the steps' start times (Python floats, as the public code builds them)."""
    return [i / steps for i in range(steps)]


def time_grid(cfg: TokenizerConfig) -> torch.Tensor:
    """The shifted grid s_0 … s_steps (s_steps = 1) in float32, [steps + 1]."""
    t = torch.tensor(raw_times(cfg.denoising_steps) + [1.0], dtype=torch.float32)
    return shift_time(t, cfg.time_shift)


def step_token_ranges(cfg: TokenizerConfig) -> list[tuple[int, int]]:
    """For every step, the token range [begin, end) its conditions come from (the public formula)."""
    ranges = []
    n, per = cfg.num_tokens, cfg.tokens_per_step
    for t in raw_times(cfg.denoising_steps):
        begin = min(n - per, int(math.floor(t * cfg.num_groups + 0.5) / cfg.num_groups * n))
        ranges.append((begin, begin + per))
    return ranges


def tokens_needed(cfg: TokenizerConfig, steps: int) -> int:
    """How many tokens must exist before ``steps`` steps can run (causality: a prefix is enough)."""
    return max(end for _, end in step_token_ranges(cfg)[:steps])


def make_noise(cfg: TokenizerConfig, batch: int, seed: int = 0, size: int | None = None) -> torch.Tensor:
    """x_0 [batch, C, H, W] float32 from a seeded CPU generator (the decoder's only randomness)."""
    size = size or cfg.image_size
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(batch, cfg.channels, size, size, generator=gen, dtype=torch.float32)


def check_noise(cfg: TokenizerConfig, noise: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    if not isinstance(noise, torch.Tensor) or noise.ndim != 4 or noise.shape[1] != cfg.channels:
        shape = list(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise DartrtError(f"noise must be [n, {cfg.channels}, H, W], got {shape}")
    if noise.shape[2] % cfg.patch_size or noise.shape[3] % cfg.patch_size:
        raise DartrtError(f"noise of {noise.shape[2]}x{noise.shape[3]} px is not a multiple of the patch "
                          f"size {cfg.patch_size}")
    if batch is not None and noise.shape[0] != batch:
        raise DartrtError(f"noise holds {noise.shape[0]} images for {batch} token rows")
    return noise


class FlowSampler:
    """The ODE state between steps: x at s_step, the previous velocity, and what the last preview needs.

    ``advance(cond)`` runs one step (one velocity call); ``preview()`` then gives the image the public code
    would give for ``clip_steps = step`` (no extra call); after the last step it is the final image."""

    def __init__(self, velocity: Velocity, noise: torch.Tensor, cfg: TokenizerConfig) -> None:
        self.velocity = velocity
        self.cfg = cfg
        self.grid = time_grid(cfg).to(noise.device)
        self.x = noise
        self.v_prev: torch.Tensor | None = None
        self.step = 0
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # x_{k-1}, d_{k-1}, 1 - s_{k-1}

    @property
    def steps(self) -> int:
        return self.cfg.denoising_steps

    @property
    def done(self) -> bool:
        return self.step == self.steps

    def advance(self, cond: torch.Tensor) -> None:
        if self.done:
            raise DartrtError(f"all {self.steps} decoder steps have run")
        s = self.grid[self.step]
        v = self.velocity(self.x, s.repeat(self.x.shape[0]), cond)
        d = v if self.v_prev is None else AB2_CURRENT * v - AB2_PREVIOUS * self.v_prev
        self._last = (self.x, d, self.grid[-1] - s)
        self.x = self.x + (self.grid[self.step + 1] - s) * d
        self.v_prev = v
        self.step += 1

    def preview(self) -> torch.Tensor:
        """The image after the steps run so far, [B, C, H, W] (x / data_std)."""
        if self._last is None:
            raise DartrtError("no decoder step has run yet: a preview needs at least one group")
        x_prev, d, to_end = self._last
        return self.to_image(x_prev + to_end * d)

    def image(self) -> torch.Tensor:
        if not self.done:
            raise DartrtError(f"only {self.step} of {self.steps} decoder steps have run")
        return self.to_image(self.x)

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 / self.cfg.data_std)


def check_groups(cfg: TokenizerConfig, groups: int) -> int:
    if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= cfg.denoising_steps:
        raise DartrtError(f"preview group {groups!r} is out of range: use 1 to {cfg.denoising_steps}")
    return groups


def preview_from_scratch(velocity: Velocity, cond_of_step: Callable[[int], torch.Tensor], noise: torch.Tensor,
                         cfg: TokenizerConfig, groups: int) -> torch.Tensor:
    """The public ``clip_steps = groups`` decode, literally: grid [s_0 … s_{k−1}, 1], Euler then AB2."""
    check_groups(cfg, groups)
    schedule = shift_time(torch.tensor(raw_times(cfg.denoising_steps)[:groups] + [1.0], dtype=torch.float32),
                          cfg.time_shift).to(noise.device)
    step_size = schedule[1:] - schedule[:-1]
    x, v_prev = noise, None
    for i in range(groups):
        v = velocity(x, schedule[i].repeat(x.shape[0]), cond_of_step(i))
        x = x + step_size[i] * (v if v_prev is None else AB2_CURRENT * v - AB2_PREVIOUS * v_prev)
        v_prev = v
    return x * (1.0 / cfg.data_std)
