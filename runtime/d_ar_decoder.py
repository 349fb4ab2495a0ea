"""D-AR's decoder loop on the host, numpy only: tokens → conditions → one velocity call per group → pixels.

The two graphs (`TokenizerGraphs`: onnxruntime's in `runtime.d_ar_ort`, the torch reference's in
`dartrt.dar.d_ar.graphs`) do the heavy work; this module owns the ODE, so every backend decodes with the same
loop, as every backend samples tokens with the same scheduler. The sampler is the package's (`DARSpec`):

- x_0 = the noise [R, 3, H, W]; step i calls v_i = velocity(x_i, s_i, conditions of step i's tokens);
- step 0 is Euler, later steps Adams–Bashforth 2 with fixed coefficients (a, b) = (1.5, 0.5), as D-AR's
  public sampler: x_(i+1) = x_i + (s_(i+1) − s_i)·d_i, d_i = a·v_i − b·v_(i−1);
- the image is x_steps / data_std, a float in about [−1, 1] (``output="float"``), then uint8 pixels.

**Streaming.** `DecoderStream` takes tokens in any chunking (one per AR step, a group, all at once); each chunk
goes through the conditions graph against its own KV cache, and as soon as the tokens of the next step exist
that step's velocity call runs. State between calls: the conditions cache, the conditions so far, x, v_prev,
the step. Nothing is recomputed.

**Previews cost no velocity call.** The preview after k groups is the public ``clip_steps = k`` image: the same
x_0, the grid cut to [s_0 … s_(k−1), 1], so its last step jumps to s = 1 with the v_(k−1) the full run has
just computed: x_(k−1) + (1 − s_(k−1))·d_(k−1), one multiply-add on the host. The issue that asked for
previews budgeted one velocity call each; D-AR's own definition needs none, and this keeps it that way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from .d_ar_spec import DARSpec
from .errors import DartrtError

PreviewHook = Callable[[int, np.ndarray], None]  # (group k, preview [R, C, H, W] float)


class TokenizerGraphs(Protocol):
    """The tokenizer's conditions and velocity graphs on one backend. A conditions cache is an object the
    graphs hand out (`new_cache`), one per stream, so that several batches can be mid-stream at once."""

    name: str

    def new_cache(self, rows: int) -> object:
        """Zeroed conditions caches for a batch of ``rows``."""

    def conditions(self, cache: object, ids: np.ndarray, write_index: int) -> np.ndarray:
        """ids [R, S] int64 at slots write_index .. write_index+S-1 of ``cache`` (updated in place) →
        conditions [R, S, cond_dim] float32."""

    def velocity(self, x: np.ndarray, s: np.float32, cond: np.ndarray) -> np.ndarray:
        """x [R, C, H, W] float32 at time s, one group's conditions [R, P, cond_dim] → velocity [R, C, H, W]."""


def check_tokens(spec: DARSpec, tokens, need: int | None = None) -> np.ndarray:
    """Token ids as int64 [n, T] with T in [need, num_tokens] and every id inside the codebook; one line
    otherwise."""
    arr = np.asarray(tokens)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise DartrtError(f"tokens must be integer ids [n, {spec.num_tokens}], got {arr.dtype} {list(arr.shape)}")
    need = spec.num_tokens if need is None else need
    if not need <= arr.shape[1] <= spec.num_tokens:
        raise DartrtError(f"got {arr.shape[1]} tokens per image; this needs {need} to {spec.num_tokens}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= spec.codebook_size):
        raise DartrtError(f"token ids must lie in [0, {spec.codebook_size}) (the codebook), got "
                          f"{int(arr.min())}..{int(arr.max())}")
    if arr.shape[0] == 0:
        raise DartrtError("no token rows given")
    return np.ascontiguousarray(arr, dtype=np.int64)


def check_noise(spec: DARSpec, noise, rows: int) -> np.ndarray:
    """The decoder's x_0: float32 [rows, C, H, W] in D-AR's layout, finite; one line otherwise."""
    arr = np.asarray(noise)
    want = (rows, *spec.image_shape)
    if arr.shape != want:
        raise DartrtError(f"noise must be float32 {list(want)} (x_0 of the decoder, [n, 3, H, W]), "
                          f"got {arr.dtype} {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise DartrtError("noise must be finite floating-point numbers")
    return np.ascontiguousarray(arr, dtype=np.float32)


def image_noise(spec: DARSpec, seed: int, indices) -> np.ndarray:
    """x_0 of every image, each from its own Generator seeded by (seed, image index, 1), so the same seed gives
    the same image at every batch size and on every backend. The trailing 1 keeps this stream apart from the
    token sampler's Gumbel noise, which is seeded by (seed, image index)."""
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise DartrtError(f"seed must be an integer >= 0, got {seed}")
    return np.stack([np.random.default_rng([int(seed), int(i), 1]).standard_normal(spec.image_shape, dtype=np.float32)
                     for i in indices])


class DecoderStream:
    """The decoder of one batch, fed tokens as they come; see the module doc."""

    def __init__(self, graphs: TokenizerGraphs, spec: DARSpec, noise: np.ndarray, steps: int | None = None) -> None:
        """``steps``: stop after that many steps (a preview decode); default all of them."""
        self.graphs = graphs
        self.spec = spec
        self.steps = spec.steps if steps is None else spec.check_group(steps)
        self.rows = noise.shape[0]
        self.x = check_noise(spec, noise, self.rows).copy()
        self.v_prev: np.ndarray | None = None
        self.step = 0
        self._last: tuple[np.ndarray, np.ndarray, np.float32] | None = None  # x_(k-1), d_(k-1), 1 - s_(k-1)
        self.cond = np.zeros((self.rows, spec.num_tokens, spec.cond_dim), dtype=np.float32)
        self.tokens_seen = 0
        self.cache = graphs.new_cache(self.rows)

    @property
    def done(self) -> bool:
        return self.step == self.steps

    def push(self, ids: np.ndarray) -> list[int]:
        """Append token ids [rows, S]; returns the groups k (1-based) whose previews became ready."""
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[0] != self.rows:
            raise DartrtError(f"push takes token ids [{self.rows}, S], got {list(ids.shape)}")
        if ids.shape[1] > self.spec.num_tokens - self.tokens_seen:
            raise DartrtError(f"{ids.shape[1]} more tokens exceed the {self.spec.num_tokens} per image "
                              f"({self.tokens_seen} already pushed)")
        if ids.shape[1]:
            ids = check_tokens(self.spec, ids, need=0)
            begin = self.tokens_seen
            self.cond[:, begin:begin + ids.shape[1]] = self.graphs.conditions(self.cache, ids, begin)
            self.tokens_seen += ids.shape[1]
        ready = []
        while not self.done and self.spec.step_tokens[self.step][1] <= self.tokens_seen:
            self._advance()
            ready.append(self.step)
        return ready

    def _advance(self) -> None:
        spec, k = self.spec, self.step
        begin, end = spec.step_tokens[k]
        s = spec.time_grid[k]
        v = np.asarray(self.graphs.velocity(self.x, s, self.cond[:, begin:end]), dtype=np.float32)
        a, b = spec.ab2
        d = v if self.v_prev is None else a * v - b * self.v_prev
        self._last = (self.x, d, spec.time_grid[-1] - s)
        self.x = self.x + (spec.time_grid[k + 1] - s) * d
        self.v_prev = v
        self.step += 1

    def preview(self) -> np.ndarray:
        """The image after the steps run so far, float [rows, C, H, W] (the final image once all have run)."""
        if self._last is None:
            raise DartrtError("no decoder step has run yet: a preview needs at least one group")
        x_prev, d, to_end = self._last
        return self.to_image(x_prev + to_end * d)

    def image(self) -> np.ndarray:
        if self.step != self.spec.steps:
            raise DartrtError(f"only {self.step} of {self.spec.steps} decoder steps have run")
        return self.to_image(self.x)

    def to_image(self, x: np.ndarray) -> np.ndarray:
        return x * np.float32(1.0 / self.spec.data_std)


def decode_batch(graphs: TokenizerGraphs, spec: DARSpec, tokens: np.ndarray, noise: np.ndarray,
                 on_preview: PreviewHook | None = None, chunk: int | None = None) -> np.ndarray:
    """One batch of tokens [R, num_tokens] → images float [R, C, H, W]; ``on_preview(k, preview)`` after each
    group. ``chunk`` feeds the conditions graph that many tokens at a time (None: one group per call)."""
    stream = DecoderStream(graphs, spec, noise)
    chunk = chunk or spec.tokens_per_step
    for begin in range(0, tokens.shape[1], chunk):
        for group in stream.push(tokens[:, begin:begin + chunk]):
            if on_preview is not None:
                on_preview(group, stream.preview())
    return stream.image()
