"""The adaptive-order rungs (docs/oar.md), run by `dartrt verify` on a package with the candidates graph.

- ``adaptive:step``: the reference and the backend in lockstep through adaptive generations: every call
  (prefill, decode, and each candidates call, whose logits are [R, C, V] over every free cell) fed the
  same inputs, the reference's choices and tokens driving both, each call's logits within the step rule;
  the commit of the chosen row happens on both sides, so the backend's cache is its own all along;
- ``adaptive:greedy`` / ``adaptive:sampling``: each side generates on its own with the same seeds; the
  token grids and the orders (every cell's step) must be identical.
"""

from __future__ import annotations

import math

import numpy as np

from dartrt.runtime.adaptive import AdaptiveSettings, sample_adaptive
from dartrt.runtime.backend import Backend
from dartrt.runtime.metrics import Deviation, Tolerance

from .checks import Check, ParitySettings
from .rungs import Lockstep, _request


class AdaptiveLockstep(Lockstep):
    """`Lockstep` with the candidate calls: both sides score, the reference's logits are returned, and both
    commit the row the loop chose."""

    def score_candidates(self, token_ids, positions, direction, write_index):
        return self._record(self.ref.score_candidates(token_ids, positions, direction, write_index),
                            self.other.score_candidates(token_ids, positions, direction, write_index))

    def commit(self, choice, write_index):
        self.ref.commit(choice, write_index)
        self.other.commit(choice, write_index)


def adaptive_checks(reference, backend: Backend, settings: ParitySettings, tolerance: Tolerance) -> list[Check]:
    info = backend.info
    devs: list[Deviation] = []
    differ = {"greedy": [0, 0], "sampling": [0, 0]}  # cells whose token or step differs, cells compared
    first: dict[str, str] = {}
    calls = 0
    for seed in range(settings.seeds):
        classes = [(seed * settings.classes_per_seed + j) % info.num_classes for j in range(settings.classes_per_seed)]
        for mode in ("sampling", "greedy"):
            request = _request(backend, classes, seed, mode, None)
            lock = AdaptiveLockstep(reference, backend, tolerance)
            sample_adaptive(lock, request, AdaptiveSettings())
            devs += lock.deviations
            calls += len(lock.deviations)
            want = sample_adaptive(reference, request, AdaptiveSettings())
            got = sample_adaptive(backend, request, AdaptiveSettings())
            bad = (want.grids(info.grid_size) != got.grids(info.grid_size)).reshape(len(classes), -1) | \
                (want.cells != got.cells)
            differ[mode][0] += int(bad.sum())
            differ[mode][1] += int(bad.size)
            if bad.any() and mode not in first:
                img, t = np.argwhere(bad)[0]
                first[mode] = f"first at seed {seed}, class {classes[img]}, cell or step {t}"
    worst = max(devs, key=lambda d: d.ratio) if devs else Deviation(math.nan, math.nan)
    rows = [Check("adaptive:step", worst.max_abs, f"<= {worst.bound:.3g} ({tolerance.describe()})",
                  all(d.ok for d in devs) and bool(devs),
                  f"{calls} calls (prefill, candidates over every free cell) in lockstep, "
                  f"{settings.seeds} seeds x {settings.classes_per_seed} classes x greedy/sampling")]
    for mode, (bad, total) in differ.items():
        what = "top_k=1" if mode == "greedy" else "temperature 1, no top-k/top-p"
        detail = f"{bad} of {total} cells differ in token or step; {what}, every free cell scored"
        if mode in first:
            detail += f"; {first[mode]}"
        rows.append(Check(f"adaptive:{mode}", float(bad), "== 0 cells", bad == 0, detail))
    return rows
