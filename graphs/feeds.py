"""Step inputs for checking graphs: valid random feeds, and feeds recorded from a real decode trace.

A decoder step is only meaningful on consistent inputs: `write_index` must be < T_max, `positions` must
be rows of the model's own RoPE position table, and the KV caches should hold what earlier steps wrote.
Polygraphy's and AutoCast's default data loaders fill every input with uniform noise (a negative
write index makes ORT's TensorScatter fail), so every pass here feeds these instead. Numpy and
onnxruntime only: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from dartrt.runtime.contract import (
    BATCH_DIM,
    DECODE,
    DIRECTION,
    INPUT_IDS,
    LOGITS,
    MODULATION,
    POSITIONS,
    PREFILL,
    PRESENT,
    SEQ_DIM,
    TOKEN_GRID,
    WRITE_INDEX,
    StepTables,
    is_cache,
    past_name,
    step_feed,
)
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.sessions import REFERENCE, open_session, run_named

Feed = dict[str, np.ndarray]
NP_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
            onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_}


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its name, numpy dtype and shape (symbolic dims as their names)."""

    name: str
    dtype: type
    shape: tuple


def graph_inputs(path: str | Path) -> list[InputSpec]:
    """The inputs of an ONNX file, read without loading its weights."""
    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in init:
            continue
        tt = value.type.tensor_type
        if tt.elem_type not in NP_TYPES:
            raise DartrtError(f"{Path(path).name}: input {value.name} has unsupported element type {tt.elem_type}")
        shape = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim)
        specs.append(InputSpec(value.name, NP_TYPES[tt.elem_type], shape))
    return specs


def cast_feed(feed: Feed, specs: list[InputSpec]) -> Feed:
    """The same feed in the dtypes a (possibly re-typed, e.g. FP16-cache) graph declares."""
    return {s.name: np.ascontiguousarray(feed[s.name], dtype=s.dtype) for s in specs if s.name in feed}


def random_feed(manifest: Manifest, graph: str, specs: list[InputSpec], *, rows: int = 2, seq: int = 1,
                write: int = 1, seed: int = 0) -> Feed:
    """Valid inputs with random content for ``graph`` (prefill, decode or vq_decoder): real position
    rows at ``write``, caches ~N(0, 0.5²). Prefill always writes its one class token at slot 0."""
    info = manifest.info
    tables = StepTables.native(info)
    prefill = graph == PREFILL
    if prefill:
        seq, write = 1, 0
    if not 0 <= write <= info.seq_len - seq:
        raise DartrtError(f"write index {write} with {seq} tokens does not fit T_max {info.seq_len}")
    rng = np.random.default_rng(seed)
    feed: Feed = {}
    for s in specs:
        dims = [rows if d == BATCH_DIM else seq if d == SEQ_DIM else d for d in s.shape]
        if any(not isinstance(d, int) for d in dims):
            raise DartrtError(f"input {s.name} has a symbolic dim this checker cannot size: {s.shape}")
        if s.name == INPUT_IDS:
            high = info.num_classes + 1 if prefill else info.vocab_size
            feed[s.name] = rng.integers(0, high, dims)
        elif s.name == POSITIONS:
            feed[s.name] = tables.at(write, dims[0], dims[1])[0]
        elif s.name == DIRECTION:
            feed[s.name] = tables.at(write, dims[0], dims[1])[1]
        elif s.name == WRITE_INDEX:
            feed[s.name] = np.full(dims, write, dtype=np.int64)
        elif s.name == TOKEN_GRID:
            codes = int(manifest.data.get("vq", {}).get("codebook_size", info.vocab_size))
            feed[s.name] = rng.integers(0, codes, dims)
        elif is_cache(s.name) or s.name == MODULATION:
            feed[s.name] = rng.standard_normal(dims).astype(np.float32) * 0.5
        else:
            raise DartrtError(f"input {s.name} is not a dartrt step input; cannot make a feed for it")
    return cast_feed(feed, specs)


@dataclass
class Rollout:
    """A greedy generation through a prefill/decode pair: tokens [R, n] and the recorded feeds."""

    tokens: np.ndarray
    feeds: dict[str, list[Feed]]


def greedy_rollout(manifest: Manifest, prefill: str | Path, decode: str | Path, classes: np.ndarray, *,
                   n_steps: int | None = None, record: tuple[int, ...] = ()) -> Rollout:
    """Greedy (argmax, no CFG) generation with the graphs at ``prefill``/``decode`` on the ORT CPU EP.

    Inputs are cast to each graph's declared dtypes, so an FP16-cache pair keeps its caches in fp16
    between steps as the runtime would. The feeds of the decode steps listed in ``record`` (and the
    prefill feed) are returned, which is what makes them *real* step inputs for other passes.
    """
    info = manifest.info
    tables = StepTables.native(info)
    n_steps = info.seq_len - 1 if n_steps is None else min(n_steps, info.seq_len - 1)
    rows = len(classes)
    sessions = {PREFILL: open_session(prefill, REFERENCE), DECODE: open_session(decode, REFERENCE)}
    specs = {PREFILL: graph_inputs(prefill), DECODE: graph_inputs(decode)}
    feed = random_feed(manifest, PREFILL, specs[PREFILL], rows=rows)
    feed[INPUT_IDS] = np.asarray(classes, dtype=np.int64)[:, None]
    for name in feed:
        if is_cache(name):
            feed[name] = np.zeros_like(feed[name])
    recorded: dict[str, list[Feed]] = {PREFILL: [feed], DECODE: []}
    out = run_named(sessions[PREFILL], feed)
    modulation = out.get(MODULATION)
    tokens = [out[LOGITS][:, -1].argmax(-1)]
    for t in range(1, n_steps + 1):
        step: Feed = {**step_feed(tokens[-1][:, None], *tables.at(t, rows), t), **_caches(out)}
        if modulation is not None:
            step[MODULATION] = modulation
        step = cast_feed(step, specs[DECODE])
        if t in record:
            recorded[DECODE].append({k: v.copy() for k, v in step.items()})
        out = run_named(sessions[DECODE], step)
        tokens.append(out[LOGITS][:, -1].argmax(-1))
    return Rollout(np.stack(tokens, axis=1), recorded)


def _caches(outputs: dict[str, np.ndarray]) -> Feed:
    """A step's present caches, named as the next step's past inputs."""
    return {past_name(n): v for n, v in outputs.items() if n.startswith(f"{PRESENT}.")}


def decode_trace(manifest: Manifest, *, rows: int = 2, steps: tuple[int, ...] = (1, 2, 3, 8),
                 seed: int = 0) -> dict[str, list[Feed]]:
    """Feeds recorded from the package's own fp32 prefill + greedy decode (ORT CPU): real class rows
    (half conditional, half the null class), real positions, and caches the model itself wrote.

    Returns {"prefill": [its feed], "decode": [the feed of each step in ``steps``]}. Only up to
    max(steps) decode steps run, so the trace stays cheap on big models.
    """
    info = manifest.info
    steps = tuple(sorted({s for s in steps if 1 <= s < info.seq_len}))
    rng = np.random.default_rng(seed)
    cond = rng.integers(0, info.num_classes, (rows + 1) // 2)
    classes = np.concatenate([cond, np.full(rows - len(cond), info.num_classes)])
    rollout = greedy_rollout(manifest, manifest.graph(PREFILL).path, manifest.graph(DECODE).path, classes,
                             n_steps=max(steps, default=0), record=steps)
    return rollout.feeds
