"""The package manifest, its one owner: the schema, reading it (checked), and writing it (hashed).

A package is copied between machines and edited by later steps (graph passes, calibration, engine
builds), so the runtime trusts nothing it has not hashed: each file the manifest lists must exist with
the recorded size and sha256, and each graph must point at a listed file. Every failure is one
`DartrtError` line that names the file, so a user sees which file to re-export instead of an ONNX
parse error. `Manifest` is the typed view every other module reads; a command opens it once and passes
it on (hashes are remembered per file, see `dartrt.runtime.fileio.sha256_file`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .backend import ModelInfo
from .errors import DartrtError
from .fileio import atomic_write_text, read_json_object, sha256_file

FORMAT = "dartrt-package"
# 2: the manifest carries its own checksum (``integrity``) and the export check records its tolerance rule.
# 3: positions [R, S, 4] and direction [R, S] per row in the step graphs (every row may follow its own order).
FORMAT_VERSION = 3
INTEGRITY = "integrity"
MANIFEST_NAME = "manifest.json"
# Data no backend runs: at open these are size-checked only (hashing the ~100+ MB of calibration traces
# on every `generate` would dominate start-up). calibration.traceset hashes each trace file when it loads it.
SIZE_ONLY_PREFIXES = ("calibration/traces/",)


def manifest_checksum(data: dict) -> str:
    """sha256 of the manifest's content without its own ``integrity`` entry, in a canonical JSON form:
    the files are hashed in ``files``, and this covers everything else (the model entry, the graphs'
    I/O, the defaults), so a hand edit is caught when the package opens instead of failing later."""
    import hashlib

    body = {k: v for k, v in data.items() if k != INTEGRITY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _is_hidden(rel: Path) -> bool:
    """Temp files (ours and the exporters' ``.name.tmp``) start with '.', in any folder level."""
    return any(part.startswith(".") for part in rel.parts)


def package_files(pkg_dir: str | Path) -> list[str]:
    """Every file of the package except manifest.json and hidden temp files, as sorted posix paths."""
    root = Path(pkg_dir)
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.as_posix() != MANIFEST_NAME and not _is_hidden(rel):
            out.append(rel.as_posix())
    return sorted(out)


def write_manifest(pkg_dir: str | Path, manifest: dict) -> dict:
    """Stamp format/version, hash every file into ``files``, and write manifest.json atomically.

    Returns the dict written. The caller's dict is not modified.
    """
    root = Path(pkg_dir)
    if not root.is_dir():
        raise DartrtError(f"package folder not found: {root}")
    data = {"format": FORMAT, "format_version": FORMAT_VERSION}
    data.update({k: v for k, v in manifest.items() if k not in ("format", "format_version", "files")})
    data["files"] = {rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
                     for rel in package_files(root)}
    data.setdefault("engines", {})
    data.pop(INTEGRITY, None)
    data[INTEGRITY] = {"sha256": manifest_checksum(data),
                       "covers": "this file's JSON without this entry (sorted keys, compact separators)"}
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write_text(root / MANIFEST_NAME, text)
    return data


def _check_header(path: Path, data: dict) -> None:
    if data.get("format") != FORMAT:
        raise DartrtError(f"{path} is not a dartrt package manifest (format {data.get('format')!r}, want {FORMAT!r})")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise DartrtError(f"{path}: package format_version {version!r} is not supported (this dartrt reads "
                          f"version {FORMAT_VERSION}); re-export it: dartrt export SOURCE -o {path.parent} --force")
    stamp = data.get(INTEGRITY)
    if not isinstance(stamp, dict) or stamp.get("sha256") != manifest_checksum(data):
        raise DartrtError(f"{path} was changed after dartrt wrote it (its checksum does not match); re-export the "
                          "package, or re-run the step that wrote it")
    for key in ("model", "graphs", "files", "image_size"):
        if key not in data:
            raise DartrtError(f"{path} has no {key!r} entry; the manifest is incomplete, re-export the package")
    try:
        ModelInfo.from_config(data["model"], data["image_size"])
    except DartrtError as exc:
        raise DartrtError(f"{path}: {exc}") from None
    if data.get("family") == "d-ar":  # D-AR's decoder entry has its own reader (runtime.d_ar_spec)
        from .d_ar_spec import DARSpec

        DARSpec.from_manifest(data, str(path))


def _check_files(root: Path, files: dict, verify_hashes: bool) -> None:
    if not isinstance(files, dict):
        raise DartrtError(f"{root / MANIFEST_NAME}: 'files' must be an object of name -> {{sha256, bytes}}")
    for rel, meta in files.items():
        path = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise DartrtError(f"{root / MANIFEST_NAME} lists {rel!r}, which is outside the package folder")
        if not path.is_file():
            raise DartrtError(f"package file missing: {path} (listed in the manifest)")
        try:
            want_size, want_hash = int(meta["bytes"]), str(meta["sha256"])
        except (KeyError, TypeError, ValueError):
            raise DartrtError(f"{root / MANIFEST_NAME}: entry for {rel} needs 'sha256' and 'bytes'") from None
        size = path.stat().st_size
        if size != want_size:
            what = "truncated" if size < want_size else "larger than recorded"
            raise DartrtError(f"package file {path} is {what} ({size} bytes, manifest says {want_size}); "
                              "re-export the package")
        if verify_hashes and not rel.startswith(SIZE_ONLY_PREFIXES) and sha256_file(path) != want_hash:
            raise DartrtError(f"package file {path} is corrupt or was modified (sha256 mismatch)")


def _check_graphs(root: Path, graphs: dict, files: dict) -> None:
    if not isinstance(graphs, dict):
        raise DartrtError(f"{root / MANIFEST_NAME}: 'graphs' must be an object")
    for name, graph in graphs.items():
        file = graph.get("file") if isinstance(graph, dict) else None
        if not file:
            raise DartrtError(f"{root / MANIFEST_NAME}: graph {name!r} names no file")
        if file not in files:
            raise DartrtError(f"{root / MANIFEST_NAME}: graph {name!r} file {file} is not listed in 'files'")


def is_package(folder: str | Path) -> bool:
    """Whether ``folder`` holds a dartrt package manifest (by its header; its files are not checked)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def load_manifest(pkg_dir: str | Path, verify_hashes: bool = True, check_files: bool = True) -> dict:
    """Read and check a package's manifest; sizes always, sha256 when ``verify_hashes`` (except for the
    SIZE_ONLY_PREFIXES data, which its reader hashes). ``check_files=False`` checks the manifest alone:
    for a writer that replaces listed files before it rewrites the manifest (calibration), so that a run
    interrupted in between does not lock the next one out."""
    root = Path(pkg_dir)
    if not root.is_dir():
        raise DartrtError(f"package folder not found: {root}")
    path = root / MANIFEST_NAME
    data = read_json_object(path, "is missing: not an exported dartrt package (run `dartrt export`)",
                            "the manifest is damaged, re-export the package")
    _check_header(path, data)
    if check_files:
        _check_files(root, data["files"], verify_hashes)
    _check_graphs(root, data["graphs"], data["files"])
    return data


@dataclass(frozen=True)
class GraphSpec:
    """One graph of the package: its file and the I/O names/dtypes/shapes the exporter recorded."""

    name: str
    path: Path
    inputs: tuple[dict, ...]
    outputs: tuple[dict, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(io["name"] for io in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(io["name"] for io in self.outputs)


@dataclass(frozen=True)
class Manifest:
    """A typed view of a checked manifest dict (the dict stays the source of truth)."""

    root: Path
    data: dict

    @classmethod
    def load(cls, pkg_dir: str | Path, verify_hashes: bool = True) -> Manifest:
        """The package at ``pkg_dir``, every listed file checked (see `load_manifest`)."""
        return cls(Path(pkg_dir), load_manifest(pkg_dir, verify_hashes))

    @classmethod
    def read(cls, pkg_dir: str | Path) -> Manifest:
        """The manifest alone, its files not checked: for steps that are about to rewrite the package."""
        return cls(Path(pkg_dir), load_manifest(pkg_dir, check_files=False))

    def write(self, data: dict | None = None) -> Manifest:
        """Write ``data`` (default: this manifest's) with every file re-hashed; the new view."""
        return Manifest(self.root, write_manifest(self.root, self.data if data is None else data))

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.from_config(self.data["model"], int(self.data["image_size"]))  # checked at load

    @property
    def source(self) -> str:
        """What the package was exported from: a checkpoint folder or ``preset NAME (random weights)``."""
        return str(self.data.get("source") or "")

    @property
    def precision(self) -> str:
        return str(self.data.get("precision", "fp32"))

    @property
    def kv_cache(self) -> dict:
        return dict(self.data.get("kv_cache") or {})

    @property
    def adaln_width(self) -> int | None:
        mod = self.data.get("adaln_modulation")
        return int(mod["width"]) if mod else None

    def graph(self, name: str) -> GraphSpec:
        graphs = self.data["graphs"]
        if name not in graphs:
            raise DartrtError(f"{self.root / MANIFEST_NAME} has no {name!r} graph "
                              f"(it has {', '.join(graphs) or 'none'}); re-export the package")
        g = graphs[name]
        return GraphSpec(name, self.root / g["file"], tuple(g.get("inputs", ())), tuple(g.get("outputs", ())))
