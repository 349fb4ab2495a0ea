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
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.manifest import Manifest
from dartrt.runtime.orders import direction_ids, make_order, positions_table

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


class _Tables:
    """Positions and direction ids of the model's default scan order."""

    def __init__(self, manifest: Manifest) -> None:
        model = manifest.data["model"]
        grid = int(model["grid_size"])
        order = make_order(model["order"], grid)
        self.positions = positions_table(order, grid, model["rope"])
        self.directions = direction_ids(order)
        self.n_classes = int(model["num_classes"])
        self.vocab = int(model["vocab_size"])
        self.seq_len = grid * grid


def random_feed(manifest: Manifest, graph: str, specs: list[InputSpec], *, rows: int = 2, seq: int = 1,
                write: int = 1, seed: int = 0) -> Feed:
    """Valid inputs with random content for ``graph`` (prefill, decode or vq_decoder): real position
    rows at ``write``, caches ~N(0, 0.5²). Prefill always writes its one class token at slot 0."""
    tables = _Tables(manifest)
    prefill = graph == "prefill"
    if prefill:
        seq, write = 1, 0
    if not 0 <= write <= tables.seq_len - seq:
        raise DartrtError(f"write index {write} with {seq} tokens does not fit T_max {tables.seq_len}")
    rng = np.random.default_rng(seed)
    feed: Feed = {}
    for s in specs:
        dims = [rows if d == "batch" else seq if d == "seq" else d for d in s.shape]
        if any(not isinstance(d, int) for d in dims):
            raise DartrtError(f"input {s.name} has a symbolic dim this checker cannot size: {s.shape}")
        if s.name == "input_ids":
            high = tables.n_classes + 1 if prefill else tables.vocab
            feed[s.name] = rng.integers(0, high, dims)
        elif s.name == "positions":
            feed[s.name] = tables.positions[write:write + dims[0]]
        elif s.name == "direction":
            feed[s.name] = tables.directions[write:write + dims[0]]
        elif s.name == "write_index":
            feed[s.name] = np.full(dims, write, dtype=np.int64)
        elif s.name == "token_grid":
            codes = int(manifest.data.get("vq", {}).get("codebook_size", tables.vocab))
            feed[s.name] = rng.integers(0, codes, dims)
        elif s.name.startswith("past_key_values.") or s.name == "adaln_modulation":
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
    from .compare import cpu_session

    tables = _Tables(manifest)
    n_steps = tables.seq_len - 1 if n_steps is None else min(n_steps, tables.seq_len - 1)
    rows = len(classes)
    sessions = {"prefill": cpu_session(prefill), "decode": cpu_session(decode)}
    specs = {"prefill": graph_inputs(prefill), "decode": graph_inputs(decode)}
    feed = random_feed(manifest, "prefill", specs["prefill"], rows=rows)
    feed["input_ids"] = np.asarray(classes, dtype=np.int64)[:, None]
    for name in feed:
        if name.startswith("past_key_values."):
            feed[name] = np.zeros_like(feed[name])
    recorded: dict[str, list[Feed]] = {"prefill": [feed], "decode": []}
    out = _run(sessions["prefill"], feed)
    caches = {n.replace("present.", "past_key_values."): v for n, v in out.items() if n.startswith("present.")}
    modulation = out.get("adaln_modulation")
    tokens = [out["logits"][:, -1].argmax(-1)]
    for t in range(1, n_steps + 1):
        step: Feed = {"input_ids": tokens[-1][:, None].astype(np.int64), "positions": tables.positions[t:t + 1],
                      "direction": tables.directions[t:t + 1], "write_index": np.full(rows, t, dtype=np.int64),
                      **caches}
        if modulation is not None:
            step["adaln_modulation"] = modulation
        step = cast_feed(step, specs["decode"])
        if t in record:
            recorded["decode"].append({k: v.copy() for k, v in step.items()})
        out = _run(sessions["decode"], step)
        caches = {n.replace("present.", "past_key_values."): v for n, v in out.items() if n.startswith("present.")}
        tokens.append(out["logits"][:, -1].argmax(-1))
    return Rollout(np.stack(tokens, axis=1), recorded)


def _run(session, feed: Feed) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def decode_trace(manifest: Manifest, *, rows: int = 2, steps: tuple[int, ...] = (1, 2, 3, 8),
                 seed: int = 0) -> dict[str, list[Feed]]:
    """Feeds recorded from the package's own fp32 prefill + greedy decode (ORT CPU): real class rows
    (half conditional, half the null class), real positions, and caches the model itself wrote.

    Returns {"prefill": [its feed], "decode": [the feed of each step in ``steps``]}. Only up to
    max(steps) decode steps run, so the trace stays cheap on big models.
    """
    tables = _Tables(manifest)
    steps = tuple(sorted({s for s in steps if 1 <= s < tables.seq_len}))
    rng = np.random.default_rng(seed)
    cond = rng.integers(0, tables.n_classes, (rows + 1) // 2)
    classes = np.concatenate([cond, np.full(rows - len(cond), tables.n_classes)])
    rollout = greedy_rollout(manifest, manifest.graph("prefill").path, manifest.graph("decode").path, classes,
                             n_steps=max(steps, default=0), record=steps)
    return rollout.feeds
