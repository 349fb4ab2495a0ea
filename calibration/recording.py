"""Record the decoder graphs' real inputs while the torch reference generates images.

Why traces and not random tensors: INT8 activation ranges are only as good as the activations they
were measured on. The decoder's activations depend on the class, on the position in the scan order,
on the CFG half (the null-class rows drift far from the cond rows late in the sequence) and, through
attention, on the KV cache as it really is at that step. So the reference generates images exactly as
the runtime does (`runtime.scheduler.sample_tokens`, model-default CFG and sampling, seeded), and a
recording `TorchBackend` copies the graph inputs of the planned calls on the way through.

**What is sampled (`TracePlan.stratified`).** N decode calls, stratified over the G*G-1 decode steps
(one step drawn uniformly from each of N equal strata, so every part of the sequence is covered
whatever N is), each from its own image; images cycle through the classes (N >= classes covers every
class) and are randomly permuted against the strata so that class and position are not correlated.
Each call keeps both CFG rows of its image (cond, null). Prefill is recorded once per class covered:
its inputs depend on nothing else (empty caches, a fixed position).

**How many (the size trade-off).** The KV cache dominates a decode sample: rows × layers × 2 × H ×
fill × D float32, with fill = write_index (the slots beyond are zeros and are not stored, see
`traceset`). For the bundled demo (6 layers, H=2, D=64, T=256) a full cache is 1.5 MiB per row, so a
stratified sample averages ≈ 1.5 MiB (2 rows, half full), plus the AdaLN table (0.33 MiB per image):

    N = 32 → ≈ 59 MiB, 64 → ≈ 117 MiB, 128 → ≈ 235 MiB, 256 → ≈ 470 MiB

(`size_table`; an earlier demo with 2.25 MiB per row measured 177 MiB on disk for 64 samples against
180 estimated). What the quantizer needs is one range per activation tensor, and on an earlier
trained demo the INT8 graph calibrated from
an evenly spread 16, 32 or 64 of the same samples scored alike (teacher-forced guided top-1
0.951 / 0.945 / 0.940, KL 0.010 / 0.012 / 0.012 with ``max``; 0.936 / 0.935 / 0.934 with
``entropy``: differences within the noise of 10 images). So N is set by *coverage*, not by range
convergence: `DEFAULT_DECODE_SAMPLES = 64` is one sample per 4 positions and every demo class ~6
times (128 rows per tensor). More buys nothing measurable and costs package size and the time every
`Package.open` spends hashing it (+0.3 s at 64); 32 would do for the demo. For LlamaGen-XL-size
models 64 samples would be ~10 GB: pass ``--samples 8``–``16`` there (`record_traces` refuses more
than 2 GiB unless told).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dartrt.dar.checkpoint import Checkpoint
from dartrt.dar.config import ModelConfig
from dartrt.dar.reference import reference_checkpoint
from dartrt.dar.torch_backend import TorchBackend
from dartrt.runtime.contract import DECODER_GRAPHS, MODULATION, PAST, graph_io, step_feed
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write_json, sha256_file
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.scheduler import build_request, sample_tokens

from .store import TRACES_DIR, update_calibration_entry
from .traceset import (
    TRACES_FORMAT,
    TRACES_VERSION,
    Sample,
    load_traces,
    pack,
    save_npz,
    traces_dir,
    verify_traces,
)

DEFAULT_DECODE_SAMPLES = 64
ROWS = 2  # one image with CFG: its cond row and its null-class row
MAX_TRACE_BYTES = 2 << 30  # refuse beyond this unless told (`max_bytes`)


def graph_inputs(cfg: ModelConfig, graph: str) -> list[str]:
    """The input names of ``graph``, in graph order (the graph contract's)."""
    return list(graph_io(graph, cfg.n_layer, cfg.adaln).inputs)


def estimate_bytes(cfg: ModelConfig, n_decode: int) -> int:
    """Expected size of the decode traces: half-full caches on average, plus one AdaLN table per image."""
    per_slot = ROWS * cfg.n_layer * 2 * cfg.n_head * cfg.head_dim * 4
    mod = ROWS * 9 * (6 * cfg.n_layer + 2) * cfg.d_model * 4 if cfg.adaln else 0
    return int(n_decode * (per_slot * cfg.seq_len / 2 + mod))


@dataclass(frozen=True)
class TracePlan:
    """Which calls to record: image → class, (image, decode step) pairs, and the prefill images."""

    image_classes: tuple[int, ...]
    decode: tuple[tuple[int, int], ...]
    prefill_images: tuple[int, ...]
    seed: int

    @classmethod
    def stratified(cls, num_classes: int, seq_len: int, n_decode: int, seed: int = 0) -> "TracePlan":
        if isinstance(n_decode, bool) or int(n_decode) != n_decode or n_decode < 1:
            raise DartrtError(f"--samples must be an integer >= 1, got {n_decode}")
        if seq_len < 2:
            raise DartrtError("the model has no decode steps (sequence length < 2)")
        rng = np.random.default_rng([int(seed), 1])
        n = int(n_decode)
        if n >= num_classes:
            classes = [j % num_classes for j in range(n)]
        else:  # fewer samples than classes (1000-class models): spread them over the class range
            classes = [(j * num_classes) // n for j in range(n)]
        steps = 1 + np.floor((np.arange(n) + rng.random(n)) * (seq_len - 1) / n).astype(np.int64)
        images = rng.permutation(n)
        decode = tuple(sorted((int(img), int(t)) for img, t in zip(images, steps)))
        first_of_class: dict[int, int] = {}
        for img, c in enumerate(classes):
            first_of_class.setdefault(c, img)
        return cls(tuple(classes), decode, tuple(sorted(first_of_class.values())), int(seed))

    @property
    def classes_covered(self) -> list[int]:
        return sorted(set(self.image_classes))


class RecordingBackend(TorchBackend):
    """The fp32 torch reference, copying the graph inputs of the planned calls as they happen.

    It follows `sample_tokens`' batching: batch b holds images [b·bs, (b+1)·bs), its rows are the cond
    rows then the null rows. Inputs are captured *before* the call (the eager cache is updated in
    place), the reference logits after it."""

    def __init__(self, ckpt: Checkpoint, plan: TracePlan, batch_size: int) -> None:
        super().__init__(ckpt, dtype=torch.float32, device="cpu")
        self.plan = plan
        self.batch_size = batch_size
        self.names = {g: graph_inputs(ckpt.config, g) for g in DECODER_GRAPHS}
        self.samples: dict[str, list[Sample]] = {"prefill": [], "decode": []}
        self._by_step: dict[int, list[int]] = {}
        for img, t in plan.decode:
            self._by_step.setdefault(t, []).append(img)
        self._prefill = set(plan.prefill_images)
        self._batch = -1
        self._images = 0

    def _local(self, image: int) -> np.ndarray | None:
        local = image - self._batch * self.batch_size
        if not 0 <= local < self._images:
            return None
        return np.array([local, local + self._images])

    def prefill(self, class_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray) -> np.ndarray:
        self._batch += 1
        if len(class_ids) % 2:
            raise DartrtError("trace recording needs CFG rows (cond + null); got an odd row count")
        self._images = len(class_ids) // 2
        logits = super().prefill(class_ids, positions, direction)
        for img in sorted(self._prefill):
            rows = self._local(img)
            if rows is None:
                continue
            inputs = {**step_feed(np.asarray(class_ids)[rows][:, None], positions[rows], direction[rows], 0),
                      **self.cache_feed(PAST, rows, 0)}
            self.samples["prefill"].append(Sample(inputs, img, self.plan.image_classes[img], 0, 0, logits[rows]))
        return logits

    def step(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
             write_index: int) -> np.ndarray:
        pending = []
        for img in self._by_step.get(int(write_index), ()):
            rows = self._local(img)
            if rows is None:
                continue
            inputs = {**step_feed(np.asarray(token_ids)[rows], positions[rows], direction[rows], write_index),
                      **self.cache_feed(PAST, rows, int(write_index))}
            if self.modulation is not None:
                inputs[MODULATION] = self.modulation[rows].float().numpy().copy()
            pending.append((img, rows, inputs))
        logits = super().step(token_ids, positions, direction, write_index)
        for img, rows, inputs in pending:
            self.samples["decode"].append(
                Sample(inputs, img, self.plan.image_classes[img], int(write_index), int(write_index), logits[rows]))
        return logits


@dataclass
class TraceSummary:
    """What was recorded, for the CLI and the package manifest."""

    counts: dict[str, int]
    bytes: dict[str, int]
    classes: list[int]
    steps: list[int]
    seconds: float
    replay_max_abs: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"counts": self.counts, "bytes": self.bytes, "classes": self.classes,
                "decode_steps": {"min": min(self.steps), "max": max(self.steps), "distinct": len(set(self.steps))},
                "seconds": round(self.seconds, 1), "replay_max_abs": self.replay_max_abs}


def checkpoint_for_package(pkg: str | Path, source: str | None = None) -> Checkpoint:
    """The torch checkpoint a package was exported from (`dartrt.dar.reference`); `verify_traces` later
    proves the recorded traces really replay through the package."""
    return reference_checkpoint(Manifest.read(pkg), source)


def _coverage(steps: list[int], seq_len: int, bins: int = 8) -> list[int]:
    """Samples per eighth of the sequence: the stratification at a glance."""
    hist, _ = np.histogram(steps, bins=bins, range=(1, seq_len))
    return [int(h) for h in hist]


def record_traces(pkg: str | Path, ckpt: Checkpoint, n_decode: int = DEFAULT_DECODE_SAMPLES, seed: int = 0,
                  batch_size: int = 32, cfg: float | None = None, max_bytes: int = MAX_TRACE_BYTES,
                  verify: bool = True, log=print) -> TraceSummary:
    """Generate with the reference, record the planned calls, and write ``calibration/traces/``."""
    pkg = Path(pkg)
    config = ckpt.config
    manifest = Manifest.read(pkg).data
    if manifest["model"] != config.to_dict():
        raise DartrtError(f"the checkpoint {ckpt.source} does not match the package's model config; pass the "
                          "checkpoint the package was exported from (--source)")
    estimate = estimate_bytes(config, n_decode)
    if estimate > max_bytes:
        raise DartrtError(f"{n_decode} decode samples of {config.name} would take ~{estimate / 2**20:.0f} MiB of "
                          f"traces (> {max_bytes / 2**20:.0f} MiB); lower --samples")
    plan = TracePlan.stratified(config.num_classes, config.seq_len, n_decode, seed)
    start = time.perf_counter()
    backend = RecordingBackend(ckpt, plan, batch_size)
    scale = backend.info.default_cfg if cfg is None else float(cfg)
    request = build_request(backend, list(plan.image_classes), cfg=scale, seed=seed, batch_size=batch_size)
    if not request.cfg.enabled:
        request = build_request(backend, list(plan.image_classes), cfg=2.0, seed=seed, batch_size=batch_size)
        scale = 2.0  # the null rows are half of what the runtime feeds: they must be calibrated too
    with torch.inference_mode():
        sample_tokens(backend, request)
    seconds = time.perf_counter() - start
    folder = traces_dir(pkg)
    folder.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for graph, samples in backend.samples.items():
        names = backend.names[graph]
        path = folder / f"{graph}.npz"
        save_npz(path, pack(samples, names))
        steps = [s.step for s in samples]
        graphs[graph] = {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                         "samples": len(samples), "inputs": names, "rows_per_sample": ROWS,
                         "classes": sorted({s.class_id for s in samples}),
                         "steps": sorted(set(steps)), "steps_per_eighth": _coverage(steps, config.seq_len)}
    info = backend.info
    meta = {
        "format": TRACES_FORMAT, "version": TRACES_VERSION, "model": config.name, "source": ckpt.source,
        "seed": int(seed), "images": len(plan.image_classes), "classes": plan.classes_covered,
        "cache_shape": [config.n_head, config.seq_len, config.head_dim],
        "row_layout": "per sample: [cond row, null-class row] of one image (the runtime's CFG halves)",
        "generation": {"cfg": scale, "cfg_schedule": info.default_cfg_schedule, "order": info.order,
                       "temperature": info.default_temperature, "top_k": info.default_top_k,
                       "top_p": info.default_top_p, "batch_size": batch_size},
        "stratification": "one decode step drawn uniformly from each of N equal strata of steps 1..G*G-1",
        "caches": "slots >= write_index are zeros in the reference and are not stored (rebuilt on load)",
        "graphs": graphs, "recorded_seconds": round(seconds, 1),
        "producer": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
    }
    atomic_write_json(folder / "manifest.json", meta)
    summary = TraceSummary({g: v["samples"] for g, v in graphs.items()}, {g: v["bytes"] for g, v in graphs.items()},
                           plan.classes_covered, [s.step for s in backend.samples["decode"]], seconds)
    if verify:
        for graph in graphs:
            spec = manifest["graphs"][graph]
            summary.replay_max_abs[graph] = verify_traces(load_traces(pkg, graph), pkg / spec["file"])
    update_calibration_entry(pkg, "traces", {"manifest": f"{TRACES_DIR}/manifest.json", **summary.to_dict()})
    log(f"  traces: {summary.counts['prefill']} prefill + {summary.counts['decode']} decode samples, "
        f"{sum(summary.bytes.values()) / 2**20:.1f} MiB, {len(summary.classes)} classes, decode steps "
        f"{min(summary.steps)}..{max(summary.steps)}, recorded in {seconds:.1f}s")
    return summary


def size_table(cfg: ModelConfig, counts=(32, 64, 128, 256)) -> list[tuple[int, float]]:
    """(N, MiB) for the docstring's trade-off, for any model."""
    return [(n, estimate_bytes(cfg, n) / 2**20) for n in counts]


__all__ = ["DEFAULT_DECODE_SAMPLES", "RecordingBackend", "TracePlan", "TraceSummary", "checkpoint_for_package",
           "estimate_bytes", "graph_inputs", "record_traces", "size_table"]
