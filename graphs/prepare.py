"""`prepare`: check → simplify → (fp16) → TensorRT op-support report, written into the package.

Outputs go to `graphs/<name>.<precision>.onnx` inside the package and are recorded in the manifest
under `prepared["<name>.<precision>"]`, next to (never instead of) the exported graphs: the fp32
exports stay the reference every later step is compared with, and the onnxruntime backend keeps
running them. Each entry says where the file came from (source file and sha256), what every pass did
and measured, the I/O dtypes (an fp16 entry has fp16 KV-cache I/O: `kv_cache_dtype`), and the op
report for the target TensorRT. The manifest is rewritten atomically (`Manifest.write`), which also
re-hashes the new files.

FP16 applies to the decoder graphs (prefill, decode). The VQ decoder runs once per image, off the
per-step critical path, and its GroupNorm/attention stack is the FP16-fragile kind, so it is prepared
at fp32 whatever the requested precision; an engine for it is built from `vq_decoder.fp32`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dartrt.runtime.contract import (
    ALL_GRAPHS,
    CONDITIONS,
    D_AR_DECODER_GRAPHS,
    D_AR_FAMILY,
    D_AR_GRAPHS,
    DECODER_GRAPHS,
    VELOCITY,
)
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import sha256_file
from dartrt.runtime.manifest import Manifest

from .check import check_graph, io_specs
from .compare import compare_graphs
from .feeds import Feed, decode_trace, graph_inputs, greedy_rollout, random_feed
from .fp16 import Fp16Policy, convert_fp16
from .simplify import simplify_graph
from .trt_support import DEFAULT_TRT, UNSUPPORTED, load_op_table, report, summarize

PRECISIONS = ("fp32", "fp16")
PREPARED_DIR = "graphs"
# Sequence-level FP16 check: greedy tokens of the fp16 pair against the fp32 pair, this many steps.
SEQUENCE_CHECK_STEPS = 64


@dataclass
class PreparedGraph:
    """One prepared graph: its manifest key, file and the entry written for it."""

    key: str
    path: Path
    entry: dict


@dataclass
class PrepareReport:
    package: Path
    graphs: dict[str, PreparedGraph] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def unsupported(self) -> int:
        return sum(g.entry["trt_support"]["unsupported"] for g in self.graphs.values())


# Graphs that get an FP16 form: the AR pair, and D-AR's tokenizer graphs (the velocity network is the
# compute-bound part of a D-AR image). The VQ decoder stays fp32 (module doc).
FP16_GRAPHS = (*DECODER_GRAPHS, *D_AR_DECODER_GRAPHS)


def prepared_key(graph: str, precision: str) -> str:
    """Manifest key (and file stem) of a prepared graph: vq_decoder is always fp32."""
    return f"{graph}.{'fp32' if graph not in FP16_GRAPHS else precision}"


def package_graphs(manifest: Manifest) -> tuple[str, ...]:
    """The graphs a package has by its family: a D-AR package's AR pair and tokenizer graphs, else ALL_GRAPHS."""
    return D_AR_GRAPHS if manifest.data.get("family") == D_AR_FAMILY else ALL_GRAPHS


def _feeds(manifest: Manifest, graphs: tuple[str, ...]) -> dict[str, list[Feed]]:
    """Real decoder step inputs (from a short fp32 trace) and valid random VQ inputs."""
    feeds: dict[str, list[Feed]] = {}
    if any(g in DECODER_GRAPHS for g in graphs):
        trace = decode_trace(manifest, rows=2)
        feeds.update(trace)
    if "vq_decoder" in graphs:
        specs = graph_inputs(manifest.graph("vq_decoder").path)
        feeds["vq_decoder"] = [random_feed(manifest, "vq_decoder", specs, rows=r, seed=r) for r in (1, 2)]
    if any(g in D_AR_DECODER_GRAPHS for g in graphs):
        from .d_ar_feeds import tokenizer_trace

        feeds.update(tokenizer_trace(manifest, rows=2))
    return feeds


def _sequence_check(manifest: Manifest, files: dict[str, Path], steps: int) -> dict:
    """Share of identical greedy tokens, fp16 pair against the exported fp32 pair (class rows + null)."""
    n_classes = int(manifest.data["model"]["num_classes"])
    classes = np.array([c % n_classes for c in range(3)] + [n_classes], dtype=np.int64)
    ref = greedy_rollout(manifest, manifest.graph("prefill").path, manifest.graph("decode").path, classes,
                         n_steps=steps)
    got = greedy_rollout(manifest, files["prefill"], files["decode"], classes, n_steps=steps)
    same = ref.tokens == got.tokens
    first = int(np.argmin(same.all(0))) if not same.all() else None
    return {"rows": len(classes), "steps": int(same.shape[1]), "tokens_identical": round(float(same.mean()), 6),
            "first_divergent_step": first}


def prepare_package(pkg: Path, precision: str, *, graphs: tuple[str, ...], trt: str, policy: Fp16Policy,
                    log) -> PrepareReport:
    """Run the passes on the package folder ``pkg`` in place and record them in its manifest."""
    start = time.perf_counter()
    manifest = Manifest.load(pkg)
    table = load_op_table(trt)
    feeds = _feeds(manifest, graphs)
    out_dir = pkg / PREPARED_DIR
    out_dir.mkdir(exist_ok=True)
    result = PrepareReport(pkg)
    work = Path(tempfile.mkdtemp(dir=pkg, prefix=".prepare-"))
    try:
        for name in graphs:
            source = manifest.graph(name).path
            key = prepared_key(name, precision)
            target = out_dir / f"{key}.onnx"
            checked = check_graph(source)
            fp16 = key.endswith(".fp16")
            simplified = work / f"{name}.slim.onnx" if fp16 else target
            slim = simplify_graph(source, simplified, feeds[name])
            log(f"  {name}: {'simplified ' if slim.kept else 'kept as exported: '}{slim.reason}")
            entry: dict = {"file": target.relative_to(pkg).as_posix(), "source": source.name,
                           "source_sha256": sha256_file(source), "precision": key.split(".")[-1],
                           "check": checked.to_dict(), "simplify": slim.to_dict()}
            if fp16:
                converted = convert_fp16(simplified, target, feeds[name], policy)
                entry["fp16"] = converted.to_dict()
                drift = compare_graphs(source, target, feeds[name])
                entry["fp16"]["drift_vs_fp32"] = drift.to_dict()
                if "logits" in drift.max_abs:
                    log(f"  {name}: fp16 logits max-abs {drift.max_abs['logits']:.3g}, KL {drift.logits_kl:.3g}, "
                        f"top-1 agreement {drift.top1_agreement:.4f} on {drift.feeds} real step inputs")
                else:  # D-AR's tokenizer graphs: no logits, the worst output is what drifts
                    log(f"  {name}: fp16 max-abs {drift.worst:.3g} on {drift.feeds} real inputs")
            check_graph(target)
            inputs, outputs = io_specs(target)
            kv = [io["dtype"] for io in inputs if io["name"].startswith("past_key_values.")]
            entry.update({"inputs": inputs, "outputs": outputs, "kv_cache_dtype": kv[0] if kv else None})
            rows = report(target, trt=trt)
            summary = summarize(rows)
            entry["trt_support"] = {"target": f"TensorRT {table['tensorrt_major_minor']}",
                                    "source": table["source"]["operators"], **summary}
            level = "" if summary[UNSUPPORTED] == 0 else "  WARNING:"
            log(f"{level}  {name}: TensorRT {trt} op support: {summary['supported']} supported, "
                f"{summary['restricted']} restricted, {summary[UNSUPPORTED]} unsupported")
            result.graphs[key] = PreparedGraph(key, target, entry)
        if precision == "fp16" and all(g in graphs for g in DECODER_GRAPHS):
            files = {g: result.graphs[prepared_key(g, "fp16")].path for g in DECODER_GRAPHS}
            seq = _sequence_check(manifest, files, SEQUENCE_CHECK_STEPS)
            result.graphs[prepared_key("decode", "fp16")].entry["fp16"]["sequence_check"] = seq
            log(f"  fp16 greedy tokens identical to fp32: {seq['tokens_identical']:.4f} "
                f"({seq['rows']} rows × {seq['steps']} steps)")
        if precision == "fp16" and all(g in graphs for g in D_AR_DECODER_GRAPHS):
            from .d_ar_feeds import image_check

            files = {g: result.graphs[prepared_key(g, "fp16")].path for g in D_AR_DECODER_GRAPHS}
            check = image_check(manifest, files[CONDITIONS], files[VELOCITY])
            result.graphs[prepared_key(VELOCITY, "fp16")].entry["fp16"]["image_check"] = check
            log(f"  fp16 tokenizer graphs: decoded images {check['psnr_db']:.1f} dB PSNR against fp32 "
                f"({check['images']} images, max-abs {check['max_abs']:.3g})")
        manifest = Manifest.load(pkg)  # its files as they are now (unchanged ones are not hashed again)
        prepared = {**(manifest.data.get("prepared") or {}), **{key: g.entry for key, g in result.graphs.items()}}
        manifest.write({**manifest.data, "prepared": prepared})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def prepare(pkg_dir: str | Path, precision: str = "fp32", out: str | Path | None = None, *,
            graphs: tuple[str, ...] | None = None, trt: str = DEFAULT_TRT, policy: Fp16Policy | None = None,
            log=print) -> PrepareReport:
    """check → simplify → (fp16) → op-support report for ``graphs`` of the package at ``pkg_dir``.

    With ``out``, the package is first copied to that new folder and prepared there (the source
    package is left untouched); the copy is renamed into place only when every pass succeeded.
    """
    if precision not in PRECISIONS:
        raise DartrtError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)} "
                          "(int8 graphs come from calibration/, as Q/DQ ONNX)")
    policy = policy or Fp16Policy()
    pkg = Path(pkg_dir)
    have = package_graphs(Manifest.load(pkg))  # refuse a damaged package before copying or writing anything
    graphs = have if graphs is None else tuple(graphs)
    unknown = [g for g in graphs if g not in have]
    if unknown:
        raise DartrtError(f"unknown graph {unknown[0]!r}: use any of {', '.join(have)}")
    if out is None:
        return prepare_package(pkg, precision, graphs=tuple(graphs), trt=trt, policy=policy, log=log)
    out = Path(out)
    if out.exists():
        raise DartrtError(f"{out} already exists; choose a new folder for the prepared package")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        shutil.copytree(pkg, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
        report_ = prepare_package(tmp, precision, graphs=tuple(graphs), trt=trt, policy=policy, log=log)
        tmp.chmod(0o755)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report_.package = out
    for g in report_.graphs.values():
        g.path = out / g.entry["file"]
    return report_
