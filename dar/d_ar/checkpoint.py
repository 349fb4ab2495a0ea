"""A converted D-AR model in our format, and ``convert_d_ar`` (the `dartrt convert d-ar` command).

Same rules as ``dar/checkpoint.py`` (safetensors and JSON only, atomic writes): a folder with
``model.safetensors`` (the GPT), ``tokenizer.safetensors`` (the tokenizer's decode path) and ``config.json``
with ``"family": "d-ar"``, the GPT's ``model`` config and the ``tokenizer`` config. The config is written
last, so a folder with a config is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write

from ..checkpoint import FORMAT, VERSION, read_tensors
from ..config import ModelConfig
from ..importers import load_checked
from ..model import Transformer, build_model
from ..rope import rope_tables
from .config import TokenizerConfig
from .importer import import_gpt, import_tokenizer
from .tokenizer import DARTokenizer, build_tokenizer

FAMILY = "d-ar"


@dataclass
class DARCheckpoint:
    """D-AR loaded: the AR model (LlamaGen GPT with 1D RoPE) and the tokenizer's decode path."""

    model: Transformer
    tokenizer: DARTokenizer
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    @property
    def image_size(self) -> int:
        return self.tokenizer.cfg.image_size


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_d_ar_checkpoint(folder: str | Path, model: Transformer, tokenizer: DARTokenizer) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "family": FAMILY, "image_size": tokenizer.cfg.image_size,
            "model": model.cfg.to_dict(), "tokenizer": tokenizer.cfg.to_dict()}
    gpt, tok = _tensors(model), _tensors(tokenizer)
    atomic_write(folder / "model.safetensors", lambda p: save_file(gpt, p))
    atomic_write(folder / "tokenizer.safetensors", lambda p: save_file(tok, p))
    atomic_write(folder / "config.json", lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))


def load_d_ar_checkpoint(folder: str | Path) -> DARCheckpoint:
    folder = Path(folder)
    cfg_path = folder / "config.json"
    try:
        meta = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise DartrtError(f"checkpoint file missing: {cfg_path}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DartrtError(f"cannot parse {cfg_path}: {exc}") from None
    if not isinstance(meta, Mapping) or meta.get("format") != FORMAT or meta.get("family") != FAMILY:
        raise DartrtError(f"{cfg_path} is not a dartrt D-AR checkpoint config")
    if meta.get("version") != VERSION:
        raise DartrtError(f"{cfg_path}: checkpoint version {meta.get('version')} is not supported (want {VERSION})")
    try:
        cfg = ModelConfig.from_dict(meta["model"])
        tok_cfg = TokenizerConfig.from_dict(meta["tokenizer"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DartrtError(f"{cfg_path}: bad config ({exc})") from None
    model = build_model(cfg, "meta")
    load_checked(model, read_tensors(folder / "model.safetensors"), str(folder / "model.safetensors"))
    model.rope_cos, model.rope_sin = rope_tables(cfg)
    tokenizer = build_tokenizer(tok_cfg, "meta")
    load_checked(tokenizer, read_tensors(folder / "tokenizer.safetensors"), str(folder / "tokenizer.safetensors"))
    return DARCheckpoint(model.eval(), tokenizer.eval(), str(folder))


def convert_d_ar(tokenizer_source: str | os.PathLike[str] | Mapping[str, Any],
                 gpt_source: str | os.PathLike[str] | Mapping[str, Any], preset: str,
                 out: str | Path | None, gpt_weights: str = "model") -> DARCheckpoint:
    """Import the public tokenizer and GPT checkpoints, check that they pair, and write them to ``out``
    (nothing is written if ``out`` is None). Returns what was converted, with notes on the GPT's shape."""
    tokenizer = import_tokenizer(tokenizer_source)
    model, notes = import_gpt(gpt_source, preset, tokenizer.cfg, weights=gpt_weights)
    if out is not None:
        save_d_ar_checkpoint(out, model, tokenizer)
    return DARCheckpoint(model, tokenizer, f"{tokenizer_source} + {gpt_source}", notes)
