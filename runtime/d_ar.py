"""Generation and decoding for D-AR packages (no torch): AR tokens, then the diffusion decoder, streamed.

``generate(package, class_ids, ...)``: the GPT's tokens come from the one token loop every backend shares
(`runtime.scheduler.sample_tokens`, raster = D-AR's 1D order); the decoder (`runtime.d_ar_decoder`) is fed
each token as the loop feeds it to the GPT, so a group's velocity call runs as soon as its tokens exist and
``on_preview(group, images)`` sees the coarse-to-fine previews while tokens are still being generated. With
several batches, the hook is called per batch with that batch's images (all of them when the request fits
one batch, as by default), and the last group of a batch completes once the token loop has returned.

``decode(package, tokens, ...)``: the decoder alone, on tokens from anywhere (`dartrt decode`).

Randomness: the tokens' Gumbel noise is the scheduler's, per image; the decoder's x_0 comes from a Generator
seeded by (seed, image index, 1) (`d_ar_decoder.image_noise`), so the same seed gives the same images at
every batch size and on every backend; ``noise=`` replaces it ([n, 3, H, W] float32, D-AR's own layout).

A token ``prefix`` ([P] for every image, or [n, P]) fixes the first P tokens and lets the GPT continue: with
D-AR's coarse-to-fine tokens this holds the layout of the image the prefix came from (zero-shot layout
control, after the D-AR paper). It works through the same loop: the forced steps return logits that only
the prefix token can win, whatever the sampling settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from .backend import Backend, ModelInfo
from .contract import CONDITIONS, VELOCITY
from .d_ar_decoder import DecoderStream, TokenizerGraphs, check_noise, check_tokens, image_noise
from .d_ar_spec import FAMILY, DARSpec
from .errors import DartrtError
from .images import to_uint8
from .manifest import Manifest
from .orders import make_order
from .scheduler import Request, StepCallback, build_request, sample_tokens

OUTPUTS = ("pil", "uint8", "float")
PreviewCallback = Callable[[int, list], None]
# A forced step's logits: the prefix token gets 0, every other token this. Finite, so CFG's u + w·(c − u)
# stays exact (c − u = 0), and far below any Gumbel draw or temperature scaling.
FORCED_OUT = np.float32(-1e30)


@dataclass
class DARBackend:
    """A D-AR package (or the torch reference) on one backend: the GPT as a scheduler `Backend`, and the
    tokenizer's two graphs for the decoder loop."""

    ar: Backend
    graphs: TokenizerGraphs
    spec: DARSpec
    precision: str = "fp32"
    family: ClassVar[str] = FAMILY

    @property
    def info(self) -> ModelInfo:
        return self.ar.info

    @property
    def name(self) -> str:
        return self.ar.name

    def prefill(self, class_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray) -> np.ndarray:
        return self.ar.prefill(class_ids, positions, direction)

    def step(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray, write_index: int
             ) -> np.ndarray:
        return self.ar.step(token_ids, positions, direction, write_index)

    def decode_vq(self, grids: np.ndarray) -> np.ndarray:
        raise DartrtError("a D-AR package has no VQ decoder: its tokens decode by diffusion (dartrt.runtime.decode)")


@dataclass
class DARResult:
    """What a D-AR generation or decode made. ``images`` and ``previews[k - 1]`` (after group k) are lists of
    PIL images (output "pil"), or arrays: uint8 [n, H, W, 3] ("uint8"), float [n, 3, H, W] ("float")."""

    images: list | np.ndarray
    class_ids: list[int]
    tokens: np.ndarray  # [n, num_tokens] int64
    noise: np.ndarray  # [n, 3, H, W] float32, the decoder's x_0
    previews: list = field(default_factory=list)


def is_d_ar_package(folder: str | Path) -> bool:
    """Whether ``folder``'s manifest says D-AR (the manifest is read, not checked)."""
    try:
        import json

        data = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("family") == FAMILY


def _precision_files(data: dict, precision: str | None, pkg) -> tuple[str, dict[str, Path], dict[str, Path]]:
    """(name, AR graph files, tokenizer graph files) of ``precision``: fp32, or fp16 from `graphs.prepare`
    (the AR pair, plus each tokenizer graph prepared at fp16)."""
    from .precisions import FP16, FP32, resolve_precision

    chosen = resolve_precision(data, precision, pkg)
    root = Path(pkg)
    ar = {g: root / f for g, f in chosen.graph_files.items()}
    tok: dict[str, Path] = {}
    if chosen.name == FP16:
        prepared = data.get("prepared") or {}
        for graph in (CONDITIONS, VELOCITY):
            entry = prepared.get(f"{graph}.{FP16}")
            if isinstance(entry, dict) and entry.get("file") in (data.get("files") or {}):
                tok[graph] = root / entry["file"]
    elif chosen.name != FP32 and chosen.source != "calibration":
        raise DartrtError(f"precision {chosen.name!r} is not available for D-AR packages")
    return chosen.name, ar, tok


def open_d_ar_package(pkg_dir: str | Path, backend: str = "auto", *, precision: str | None = None,
                      verify_hashes: bool = True, manifest: Manifest | None = None, **options) -> DARBackend:
    """A D-AR package on onnxruntime (auto/onnxruntime/onnxruntime-cpu/onnxruntime-cuda). ``options`` go to
    both sessions' builders (intra_op_threads, optimization, log_severity, cuda_tf32, spinning: off unless
    given); ``manifest``: the package's, already loaded and checked (`runtime.package.open_package_backend`
    passes it)."""
    devices = {"auto": "auto", "onnxruntime": "auto", "onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda"}
    if backend not in devices:
        raise DartrtError(f"backend {backend!r} does not run D-AR packages: use one of {', '.join(devices)}")
    if options.pop("graph_files", None):
        raise DartrtError("graph_files overrides are not supported for D-AR packages")
    manifest = manifest or Manifest.load(pkg_dir, verify_hashes)
    spec = DARSpec.from_manifest(manifest.data, str(manifest.root / "manifest.json"))
    name, ar_files, tok_files = _precision_files(manifest.data, precision, manifest.root)
    from dartrt.extras import require

    require(("onnxruntime",), f"the {backend} backend")
    from .d_ar_ort import OrtARBackend, OrtTokenizerGraphs

    device = options.pop("device", devices[backend])
    # The stream alternates the AR step and the tokenizer's graphs; with spinning workers each session's pool
    # took the cores from the next (runtime.sessions; measured in docs/d-ar.md, bench).
    options.setdefault("spinning", False)
    ar = OrtARBackend(manifest, device=device, graph_files=ar_files or None, **options)
    ar.precision = name
    if name != "fp32":
        ar.name = f"{ar.name}[{name}]"
    graphs = OrtTokenizerGraphs(manifest, spec, device=ar.device, graph_files=tok_files or None, **options)
    return DARBackend(ar, graphs, spec, precision=name)


def _engine(package, backend: str, precision: str | None) -> DARBackend:
    if isinstance(package, DARBackend):
        if precision is not None and precision != package.precision:
            raise DartrtError(f"the backend was opened at precision {package.precision!r}, not {precision!r}; "
                              "pass precision to open_d_ar_package instead")
        return package
    if isinstance(package, (str, os.PathLike)):
        return open_d_ar_package(os.fspath(package), backend, precision=precision)
    raise DartrtError(f"package must be a D-AR package folder or an opened DARBackend, got {type(package).__name__}")


def _convert(x: np.ndarray, output: str):
    if output == "float":
        return x
    pixels = to_uint8(x)
    return pixels if output == "uint8" else [Image.fromarray(p) for p in pixels]


def _check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise DartrtError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    return output


class _Previews:
    """Collects previews (when asked) and calls the user's hook, batch by batch."""

    def __init__(self, spec: DARSpec, n: int, keep: bool, hook: PreviewCallback | None, output: str) -> None:
        self.store = np.zeros((spec.steps, n, *spec.image_shape), dtype=np.float32) if keep else None
        self.hook, self.output = hook, output

    @property
    def wanted(self) -> bool:
        """Whether previews are kept or hooked at all (else a stream skips even the multiply-add)."""
        return self.store is not None or self.hook is not None

    def __call__(self, group: int, first: int, preview: np.ndarray) -> None:
        if self.store is not None:
            self.store[group - 1, first:first + len(preview)] = preview
        if self.hook is not None:
            self.hook(group, _convert(preview, self.output))

    def result(self) -> list:
        if self.store is None:
            return []
        return [_convert(p, self.output) for p in self.store] if self.output != "float" else list(self.store)


class _StreamingAR:
    """The GPT as the scheduler sees it, with every step's input tokens (the token sampled one step earlier)
    also handed to the decoder stream of the current batch; and with forced logits for a token prefix.

    Tokens are buffered until they complete the next decoder step's range and then go through the
    conditions graph in one call: a step cannot run before its last token anyway, and one call per group
    instead of one per token saved most of the streaming overhead (bench: 64 calls of one token cost more
    than the 8 velocity calls of the demo at batch 1)."""

    def __init__(self, engine: DARBackend, noise: np.ndarray, cfg_rows: bool, prefix: np.ndarray | None,
                 previews: _Previews) -> None:
        self.engine, self.noise, self.cfg_rows, self.prefix, self.previews = engine, noise, cfg_rows, prefix, previews
        self.info, self.name = engine.info, engine.name
        self.streams: list[tuple[int, DecoderStream]] = []
        self.pending: list[np.ndarray] = []  # tokens of the current batch not yet pushed, [rows, 1] each

    def _push(self, first: int, stream: DecoderStream, ids: np.ndarray) -> None:
        for group in stream.push(ids):
            if self.previews.wanted:
                self.previews(group, first, stream.preview())

    def _forced(self, logits: np.ndarray, token: int, first: int, rows: int) -> np.ndarray:
        if self.prefix is None or token >= self.prefix.shape[1]:
            return logits
        ids = self.prefix[first:first + rows, token]
        out = np.full_like(logits, FORCED_OUT)
        out[np.arange(len(logits)), np.concatenate([ids, ids]) if self.cfg_rows else ids] = 0.0
        return out

    def prefill(self, class_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray) -> np.ndarray:
        rows = len(class_ids) // 2 if self.cfg_rows else len(class_ids)
        first = self.streams[-1][0] + self.streams[-1][1].rows if self.streams else 0
        self.pending = []  # the previous batch's last tokens are pushed by finish()
        self.streams.append((first, DecoderStream(self.engine.graphs, self.engine.spec,
                                                  self.noise[first:first + rows])))
        return self._forced(self.engine.prefill(class_ids, positions, direction), 0, first, rows)

    def step(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray, write_index: int
             ) -> np.ndarray:
        first, stream = self.streams[-1]
        if stream.tokens_seen + len(self.pending) != int(write_index) - 1 or token_ids.shape[1] != 1:
            raise DartrtError("the D-AR stream expects one token per step, in order")
        self.pending.append(np.array(token_ids[:stream.rows]))
        spec = self.engine.spec
        if not stream.done and int(write_index) >= spec.step_tokens[stream.step][1]:
            self._push(first, stream, np.concatenate(self.pending, axis=1))
            self.pending = []
        return self._forced(self.engine.step(token_ids, positions, direction, write_index), int(write_index),
                            first, stream.rows)

    def finish(self, tokens: np.ndarray) -> np.ndarray:
        """Push what each stream has not seen yet (its last token); the images, float [n, C, H, W]."""
        for first, stream in self.streams:
            self._push(first, stream, tokens[first:first + stream.rows, stream.tokens_seen:])
        return np.concatenate([stream.image() for _, stream in self.streams])


def _check_prefix(spec: DARSpec, prefix, n: int) -> np.ndarray | None:
    if prefix is None:
        return None
    arr = check_tokens(spec, prefix, need=1)
    if arr.shape[0] == 1:
        arr = np.repeat(arr, n, axis=0)
    if arr.shape[0] != n:
        raise DartrtError(f"prefix holds {arr.shape[0]} rows for {n} images (give one row, or one per image)")
    return arr


def run_d_ar_request(engine: DARBackend, request: Request, on_step: StepCallback | None = None, *,
                     on_preview: PreviewCallback | None = None, previews: bool = False, noise=None, prefix=None,
                     output: str = "pil") -> DARResult:
    """Sample a validated (or merged) request's tokens and decode them, streamed (see the module doc).

    `generate` and `runtime.pipeline.run_request` (so `runtime.generate`, `dartrt generate` and `dartrt serve`)
    all end here for a D-AR package. Each image's x_0 is drawn from its own (seed, index), as its tokens' Gumbel
    noise is, unless ``noise`` gives them all."""
    _check_output(output)
    if not np.array_equal(request.order, make_order("raster", engine.info.grid_size)):
        raise DartrtError("D-AR's tokens are a 1D sequence (raster order): --order does not apply")
    spec = engine.spec
    rows = request.images
    n = len(rows)
    if noise is None:
        x0 = np.stack([image_noise(spec, row.seed, [row.index])[0] for row in rows])
    else:
        x0 = check_noise(spec, noise, n)
    collector = _Previews(spec, n, previews, on_preview, output)
    stream = _StreamingAR(engine, x0, request.cfg.enabled, _check_prefix(spec, prefix, n), collector)
    tokens = sample_tokens(stream, request, on_step)
    images = stream.finish(tokens)
    return DARResult(_convert(images, output), list(request.class_ids), tokens, x0, collector.result())


def generate_result(package, class_ids, *, n_per_class: int = 1, cfg: float | None = None,
                    cfg_schedule: str | None = None, order=None, seed: int = 0, temperature: float | None = None,
                    top_k: int | None = None, top_p: float | None = None, batch_size: int = 8,
                    backend: str = "auto", precision: str | None = None, on_step: StepCallback | None = None,
                    on_preview: PreviewCallback | None = None, previews: bool = False, noise=None, prefix=None,
                    output: str = "pil", **schedule_kw) -> DARResult:
    """`generate`, returning everything it made (`DARResult`)."""
    _check_output(output)
    engine = _engine(package, backend, precision)
    request = build_request(engine, class_ids, n_per_class=n_per_class, cfg=cfg, cfg_schedule=cfg_schedule,
                            order=order, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                            batch_size=batch_size, **schedule_kw)
    return run_d_ar_request(engine, request, on_step, on_preview=on_preview, previews=previews, noise=noise,
                            prefix=prefix, output=output)


def generate(package, class_ids, *, previews: bool = False, return_tokens: bool = False, **kwargs):
    """Generate D-AR images: ``n_per_class`` per class id (class-major), settings as `runtime.generate`.

    Returns the images (PIL by default; ``output="uint8"`` or ``"float"`` for arrays), then, when asked, the
    previews (a list over groups 1..G of the same kind) and the tokens [n, num_tokens]:
    ``images``, ``(images, previews)``, ``(images, tokens)`` or ``(images, previews, tokens)``.
    ``on_preview(group, images)`` is called as each group's previews become ready (see the module doc).
    """
    result = generate_result(package, class_ids, previews=previews, **kwargs)
    out = (result.images, *([result.previews] if previews else []), *([result.tokens] if return_tokens else []))
    return out[0] if len(out) == 1 else out


def decode_result(package, tokens, noise=None, seed: int = 0, previews: bool = False, output: str = "pil", *,
                  backend: str = "auto", precision: str | None = None, batch_size: int = 8,
                  on_preview: PreviewCallback | None = None, groups: int | None = None) -> DARResult:
    """`decode`, returning everything (`DARResult`; class ids are empty). ``groups``: stop after that many groups
    (1..steps) and return the preview there as the images; the tokens may then be a prefix."""
    _check_output(output)
    engine = _engine(package, backend, precision)
    spec = engine.spec
    steps = spec.steps if groups is None else spec.check_group(groups)
    ids = check_tokens(spec, tokens, need=spec.tokens_needed(steps))
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise DartrtError(f"batch_size must be an integer >= 1, got {batch_size}")
    n = len(ids)
    x0 = image_noise(spec, seed, range(n)) if noise is None else check_noise(spec, noise, n)
    collector = _Previews(spec, n, previews, on_preview, output)
    images = []
    for first in range(0, n, batch_size):
        stream = DecoderStream(engine.graphs, spec, x0[first:first + batch_size], steps)
        for begin in range(0, ids.shape[1], spec.tokens_per_step):
            if stream.done:
                break
            for group in stream.push(ids[first:first + batch_size, begin:begin + spec.tokens_per_step]):
                if collector.wanted:
                    collector(group, first, stream.preview())
        images.append(stream.preview() if steps < spec.steps else stream.image())
    kept = collector.result()[:steps] if previews else []
    return DARResult(_convert(np.concatenate(images), output), [], ids, x0, kept)


def decode(package, tokens, noise=None, seed: int = 0, previews: bool = False, output: str = "pil", **kwargs):
    """Decode D-AR token ids [n, num_tokens] (from anywhere) into images with the package's diffusion decoder.

    ``noise``: the decoder's x_0, float32 [n, 3, H, W] (default: drawn from ``seed`` per image, as
    `generate` draws it). ``output``: "pil" (default), "uint8" ([n, H, W, 3]) or "float" (the decoder's raw
    output [n, 3, H, W], before clamping to pixels, for parity work). With ``previews=True`` returns
    ``(images, previews)``, previews[k - 1] being the images after group k (the last equals the images).
    ``backend``, ``precision``, ``batch_size`` and ``on_preview`` as for `generate`.
    """
    result = decode_result(package, tokens, noise, seed, previews, output, **kwargs)
    return (result.images, result.previews) if previews else result.images


def preview(package, tokens, group: int, noise=None, seed: int = 0, output: str = "pil", **kwargs):
    """The image after ``group`` of the G groups (D-AR's ``clip_steps = group``), from the tokens those groups
    read: [n, T] with T at least the end of group ``group`` (a prefix is enough). Costs ``group`` velocity
    calls; a group outside 1..G is refused in one line."""
    return decode_result(package, tokens, noise, seed, False, output, groups=group, **kwargs).images
