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
from .config import TokenizerConfig, get_tokenizer_preset
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

    @property
    def family(self) -> str:
        """``"d-ar"``: what export and the CLI dispatch on (a DAR `Checkpoint` has no family attribute)."""
        return FAMILY

    def check(self) -> DARCheckpoint:
        check_pair(self.model.cfg, self.tokenizer.cfg, self.source)
        return self


def check_pair(gpt: ModelConfig, tok: TokenizerConfig, where: str = "checkpoint") -> None:
    """The GPT must speak the tokenizer's language: its vocabulary is the codebook, its sequence the tokens,
    and it must be D-AR's 1D member (index positions, raster order). One line naming what differs."""
    if gpt.vocab_size != tok.codebook_size:
        raise DartrtError(f"{where}: the tokenizer's codebook has {tok.codebook_size} entries but the GPT's "
                          f"vocabulary has {gpt.vocab_size}: they are not a pair")
    if gpt.seq_len != tok.num_tokens:
        raise DartrtError(f"{where}: the GPT generates {gpt.seq_len} tokens but the tokenizer decodes "
                          f"{tok.num_tokens}: they are not a pair")
    if gpt.rope != "1d" or gpt.order != "raster" or gpt.adaln:
        raise DartrtError(f"{where}: D-AR's GPT has 1D RoPE, raster order and no AdaLN; this one has rope "
                          f"{gpt.rope!r}, order {gpt.order!r}, adaln {gpt.adaln}")


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_d_ar_checkpoint(folder: str | Path, model: Transformer, tokenizer: DARTokenizer,
                         store_fp16: bool = False) -> None:
    """``store_fp16`` stores float32 weights as float16 (loading casts them back, `importers.load_checked`):
    what keeps a bundled demo's files under 5 MiB."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "family": FAMILY, "image_size": tokenizer.cfg.image_size,
            "model": model.cfg.to_dict(), "tokenizer": tokenizer.cfg.to_dict()}
    gpt, tok = _tensors(model), _tensors(tokenizer)
    if store_fp16:
        gpt, tok = ({k: v.half() if v.dtype == torch.float32 else v for k, v in t.items()} for t in (gpt, tok))
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
    check_pair(cfg, tok_cfg, str(cfg_path))
    tokenizer = build_tokenizer(tok_cfg, "meta")
    load_checked(tokenizer, read_tensors(folder / "tokenizer.safetensors"), str(folder / "tokenizer.safetensors"))
    return DARCheckpoint(model.eval(), tokenizer.eval(), str(folder))


def is_d_ar_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a dartrt checkpoint config of the D-AR family (its files are not checked)."""
    try:
        meta = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, Mapping) and meta.get("format") == FORMAT and meta.get("family") == FAMILY


# D-AR pairs with random weights, for tests and graph work: GPT config and tokenizer preset.
D_AR_PRESETS: dict[str, tuple[ModelConfig, str]] = {
    # 16 tokens in 4 groups (a 4x4 "grid" for the 1D GPT), codebook 64, 32 px images.
    "tiny-d-ar": (ModelConfig(name="tiny-d-ar", family=FAMILY, n_layer=2, d_model=64, n_head=4, vocab_size=64,
                              num_classes=10, grid_size=4, rope="1d", token_embedding="learned", adaln=False,
                              order="raster", default_cfg=2.0, default_cfg_schedule="linear"), "tiny"),
}


def d_ar_preset_source(name: str) -> str:
    """How a D-AR preset with random weights is recorded as a package's source (the DAR presets' form)."""
    return f"preset {name} (random weights)"


def random_d_ar_checkpoint(name: str, seed: int = 0) -> DARCheckpoint:
    """A D-AR preset pair with random weights: the GPT with seed ``seed``, the tokenizer with ``seed + 1``."""
    if name not in D_AR_PRESETS:
        raise DartrtError(f"unknown D-AR preset {name!r}: choose from {', '.join(D_AR_PRESETS)}")
    gpt_cfg, tok_preset = D_AR_PRESETS[name]
    model = build_model(ModelConfig.from_dict(gpt_cfg.to_dict()), seed=seed)
    tokenizer = build_tokenizer(get_tokenizer_preset(tok_preset), seed=seed + 1)
    return DARCheckpoint(model, tokenizer, d_ar_preset_source(name)).check()


def resolve_d_ar_source(source: str | None) -> DARCheckpoint | None:
    """SOURCE of the CLI if it is D-AR (a D-AR checkpoint folder or a D-AR preset name), else None."""
    if source is None:
        return None
    if Path(source).is_dir() and is_d_ar_checkpoint(source):
        return load_d_ar_checkpoint(source)
    if source in D_AR_PRESETS and not Path(source).exists():
        return random_d_ar_checkpoint(source)
    return None


def convert_d_ar(tokenizer_source: str | os.PathLike[str] | Mapping[str, Any],
                 gpt_source: str | os.PathLike[str] | Mapping[str, Any], preset: str,
                 out: str | Path | None, gpt_weights: str = "model") -> DARCheckpoint:
    """Import the public tokenizer and GPT checkpoints, check that they pair, and write them to ``out``
    (nothing is written if ``out`` is None). Returns what was converted, with notes on the GPT's shape."""
    tokenizer = import_tokenizer(tokenizer_source)
    model, notes = import_gpt(gpt_source, preset, tokenizer.cfg, weights=gpt_weights)
    check_pair(model.cfg, tokenizer.cfg, str(gpt_source) if not isinstance(gpt_source, Mapping) else "GPT")
    if out is not None:
        save_d_ar_checkpoint(out, model, tokenizer)
    return DARCheckpoint(model, tokenizer, f"{tokenizer_source} + {gpt_source}", notes)
