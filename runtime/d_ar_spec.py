"""The ``d_ar`` entry of a D-AR package's manifest, read and checked (numpy only).

The exporter (`dartrt.exporter.d_ar`) writes the decoder's sampler out in full: the groups, the token range
of every step, the shifted time grid as float32 values, AB2's coefficients, data_std, the image shape and
the conditions cache. The runtime takes them from here, never from a formula of its own, so a package is
the one definition of how its images are decoded. `DARSpec.from_manifest` is called when a package opens
(`dartrt.runtime.manifest`), so a damaged or mismatched entry is one line naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import DartrtError

FAMILY = "d-ar"


def _int(entry: dict, key: str, where: str, low: int = 1) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DartrtError(f"{where}: d_ar.{key} must be an integer >= {low}, got {value!r}")
    return value


def _float(entry: dict, key: str, where: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DartrtError(f"{where}: d_ar.sampler.{key} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DARSpec:
    """What the host-side decoder needs to know about a D-AR package."""

    codebook_size: int
    num_tokens: int
    num_groups: int
    tokens_per_step: int
    steps: int
    channels: int
    height: int
    width: int
    cond_dim: int
    cond_layers: int
    cond_heads: int
    cond_head_dim: int
    time_grid: np.ndarray  # [steps + 1] float32, s_0 = 0 … s_steps = 1
    step_tokens: tuple[tuple[int, int], ...]  # the token range [begin, end) of every step
    ab2: tuple[float, float]  # d_i = a·v_i − b·v_(i−1)
    data_std: float

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    @property
    def cache_shape(self) -> tuple[int, int, int]:
        """[heads, slots, head_dim] of one conditions-cache tensor (rows come first)."""
        return self.cond_heads, self.num_tokens, self.cond_head_dim

    def tokens_needed(self, steps: int) -> int:
        """Tokens that must exist before ``steps`` steps can run (the conditions are causal)."""
        return max((end for _, end in self.step_tokens[:steps]), default=0)

    def check_group(self, group) -> int:
        """A preview group k in 1..steps (k = steps is the final image); one line otherwise."""
        if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or not 1 <= int(group) <= self.steps:
            raise DartrtError(f"preview group {group!r} is out of range: use 1 to {self.steps}")
        return int(group)

    @classmethod
    def from_manifest(cls, data: dict, where: str = "manifest") -> DARSpec:
        if data.get("family") != FAMILY:
            raise DartrtError(f"{where}: not a D-AR package (family {data.get('family')!r}); its images come from "
                              "a VQ decoder: use `dartrt generate`")
        entry = data.get("d_ar")
        if not isinstance(entry, dict):
            raise DartrtError(f"{where}: a D-AR package needs a 'd_ar' entry; re-export the package")
        sampler = entry.get("sampler")
        image = entry.get("image")
        cache = entry.get("cond_cache")
        for key, value in (("sampler", sampler), ("image", image), ("cond_cache", cache)):
            if not isinstance(value, dict):
                raise DartrtError(f"{where}: d_ar.{key} is missing or not an object; re-export the package")
        steps = _int(entry, "denoising_steps", where)
        n, per = _int(entry, "num_tokens", where), _int(entry, "tokens_per_step", where)
        grid = sampler.get("time_grid")
        if not isinstance(grid, list) or len(grid) != steps + 1 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in grid):
            raise DartrtError(f"{where}: d_ar.sampler.time_grid must list {steps + 1} numbers")
        times = np.asarray(grid, dtype=np.float32)
        if times[0] != 0.0 or times[-1] != 1.0 or not np.all(np.diff(times) > 0):
            raise DartrtError(f"{where}: d_ar.sampler.time_grid must rise from 0 to 1, got {grid}")
        ranges = sampler.get("step_tokens")
        if not isinstance(ranges, list) or len(ranges) != steps or not all(
                isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
                and 0 <= r[0] and r[1] - r[0] == per and r[1] <= n for r in ranges):
            raise DartrtError(f"{where}: d_ar.sampler.step_tokens must give {steps} ranges of {per} tokens in "
                              f"[0, {n}]")
        ab2 = sampler.get("ab2")
        if not isinstance(ab2, list) or len(ab2) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ab2):
            raise DartrtError(f"{where}: d_ar.sampler.ab2 must be two numbers, got {ab2!r}")
        spec = cls(codebook_size=_int(entry, "codebook_size", where), num_tokens=n,
                   num_groups=_int(entry, "num_groups", where), tokens_per_step=per, steps=steps,
                   channels=_int(image, "channels", where), height=_int(image, "height", where),
                   width=_int(image, "width", where), cond_dim=_int(entry, "cond_dim", where),
                   cond_layers=_int(cache, "layers", where, low=0), cond_heads=_int(cache, "heads", where),
                   cond_head_dim=_int(cache, "head_dim", where), time_grid=times,
                   step_tokens=tuple((int(b), int(e)) for b, e in ranges),
                   ab2=(float(ab2[0]), float(ab2[1])), data_std=_float(sampler, "data_std", where))
        model = data.get("model") or {}
        if model.get("vocab_size") != spec.codebook_size:
            raise DartrtError(f"{where}: the GPT's vocabulary ({model.get('vocab_size')}) and the tokenizer's codebook "
                              f"({spec.codebook_size}) differ: not a D-AR pair; re-export the package")
        grid_size = model.get("grid_size")
        if not isinstance(grid_size, int) or grid_size * grid_size != spec.num_tokens:
            raise DartrtError(f"{where}: the GPT generates {grid_size}² tokens, the tokenizer decodes "
                              f"{spec.num_tokens}: not a D-AR pair; re-export the package")
        if data.get("image_size") != spec.height:
            raise DartrtError(f"{where}: image_size {data.get('image_size')} differs from d_ar.image "
                              f"({spec.height}x{spec.width})")
        return spec
