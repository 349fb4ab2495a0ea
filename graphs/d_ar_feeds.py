"""Real inputs for a D-AR package's tokenizer graphs, recorded from the package's own fp32 decode.

As for the AR graphs (`graphs.feeds.decode_trace`), a rewriting pass (simplify, FP16) is judged on inputs the
model really sees: token ids from a greedy rollout of the package's GPT, the conditions cache those tokens
wrote, and the velocity graph's x at every time of the grid with the conditions of its group. The decode runs
through the runtime's own loop (`runtime.d_ar_decoder.DecoderStream`) over plain onnxruntime sessions
(`runtime.sessions`, reference profile) that record every feed. Numpy and onnxruntime only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dartrt.runtime.contract import (
    CONDITIONS,
    DECODE,
    PAST,
    PREFILL,
    VELOCITY,
    VELOCITY_OUT,
    cache_names,
    conditions_feed,
    past_name,
    velocity_feed,
)
from dartrt.runtime.d_ar_decoder import DecoderStream, image_noise
from dartrt.runtime.d_ar_spec import DARSpec
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.sessions import REFERENCE, open_session, run_named

from .feeds import Feed, cast_feed, graph_inputs, greedy_rollout


@dataclass
class RecordingGraphs:
    """`TokenizerGraphs` over plain sessions (numpy caches, no IOBinding) that keeps a copy of every feed."""

    conditions_path: Path
    velocity_path: Path
    spec: DARSpec
    name: str = "onnxruntime (recording)"
    feeds: dict[str, list[Feed]] = field(default_factory=lambda: {CONDITIONS: [], VELOCITY: []})

    def __post_init__(self) -> None:
        self.sessions = {CONDITIONS: open_session(self.conditions_path, REFERENCE),
                         VELOCITY: open_session(self.velocity_path, REFERENCE)}
        self.specs = {CONDITIONS: graph_inputs(self.conditions_path), VELOCITY: graph_inputs(self.velocity_path)}

    def new_cache(self, rows: int) -> dict[str, np.ndarray]:
        shape = (rows, *self.spec.cache_shape)
        return {name: np.zeros(shape, np.float32) for name in cache_names(self.spec.cond_layers, PAST)}

    def conditions(self, cache: dict[str, np.ndarray], ids: np.ndarray, write_index: int) -> np.ndarray:
        feed = cast_feed({**conditions_feed(ids, write_index), **cache}, self.specs[CONDITIONS])
        self.feeds[CONDITIONS].append({k: v.copy() for k, v in feed.items()})
        out = run_named(self.sessions[CONDITIONS], feed)
        cache.update({past_name(n): np.asarray(v, np.float32) for n, v in out.items() if n.startswith("present.")})
        return np.asarray(out["conditions"], np.float32)

    def velocity(self, x: np.ndarray, s, cond: np.ndarray) -> np.ndarray:
        feed = cast_feed(velocity_feed(x, s, cond), self.specs[VELOCITY])
        self.feeds[VELOCITY].append({k: v.copy() for k, v in feed.items()})
        return np.asarray(run_named(self.sessions[VELOCITY], feed)[VELOCITY_OUT], np.float32)


def greedy_tokens(manifest: Manifest, rows: int = 2, seed: int = 0) -> np.ndarray:
    """Greedy (no CFG) token sequences [rows, num_tokens] of the package's own fp32 GPT, for classes drawn
    with ``seed``."""
    info = manifest.info
    classes = np.random.default_rng(seed).integers(0, info.num_classes, rows)
    return greedy_rollout(manifest, manifest.graph(PREFILL).path, manifest.graph(DECODE).path, classes).tokens


def decode_with(spec: DARSpec, conditions: Path, velocity: Path, tokens: np.ndarray, seed: int = 0
                ) -> tuple[np.ndarray, dict[str, list[Feed]]]:
    """Decode ``tokens`` with the graph files given (fp32 or prepared); (images float, the recorded feeds)."""
    graphs = RecordingGraphs(conditions, velocity, spec)
    stream = DecoderStream(graphs, spec, image_noise(spec, seed, range(len(tokens))))
    for begin in range(0, spec.num_tokens, spec.tokens_per_step):
        stream.push(tokens[:, begin:begin + spec.tokens_per_step])
    return stream.image(), graphs.feeds


def tokenizer_trace(manifest: Manifest, rows: int = 2, seed: int = 0) -> dict[str, list[Feed]]:
    """Feeds of the conditions graph (one per group) and of the velocity graph (one per step) recorded while
    decoding the GPT's greedy tokens with the package's fp32 graphs."""
    spec = DARSpec.from_manifest(manifest.data, str(manifest.root))
    tokens = greedy_tokens(manifest, rows, seed)
    _, feeds = decode_with(spec, manifest.graph(CONDITIONS).path, manifest.graph(VELOCITY).path, tokens, seed)
    return feeds


def image_check(manifest: Manifest, conditions: Path, velocity: Path, rows: int = 2, seed: int = 0) -> dict:
    """Decode the GPT's greedy tokens with the package's fp32 tokenizer graphs and with ``conditions`` /
    ``velocity`` (an FP16 pair, say), from the same noise: how far the images drift (PSNR of the uint8 images,
    max-abs of the raw output)."""
    from dartrt.runtime.images import to_uint8
    from dartrt.runtime.metrics import max_abs, psnr_uint8

    spec = DARSpec.from_manifest(manifest.data, str(manifest.root))
    tokens = greedy_tokens(manifest, rows, seed)
    ref, _ = decode_with(spec, manifest.graph(CONDITIONS).path, manifest.graph(VELOCITY).path, tokens, seed)
    got, _ = decode_with(spec, conditions, velocity, tokens, seed)
    return {"images": rows, "psnr_db": round(psnr_uint8(to_uint8(ref), to_uint8(got)), 2),
            "max_abs": float(f"{max_abs(ref, got):.4g}"), "tokens": "greedy tokens of the fp32 GPT",
            "noise": f"image_noise(seed={seed})"}
