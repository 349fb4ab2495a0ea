"""Our checkpoint format: a folder with ``config.json``, ``model.safetensors`` and ``vq.safetensors``.

safetensors holds tensors only (no pickle), and config.json holds everything needed to rebuild the
modules, so a checkpoint loads without running any code from the file. Every write is atomic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dartrt.models import DEMO
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write, atomic_write_json

from .config import ModelConfig, get_preset
from .importers import load_checked
from .model import Transformer, build_model
from .vq import VQ_PRESETS, VQConfig, VQDecoder, VQEncoder, build_vq_decoder

FORMAT = "dartrt-checkpoint"
VERSION = 1
BUNDLED = DEMO
ENCODER_FILE = "vq_encoder.safetensors"  # optional: the VQ's encode path (editing from images)


@dataclass
class Checkpoint:
    """A loaded model: the decoder, its VQ decoder and the image size they produce."""

    model: Transformer
    vq: VQDecoder
    image_size: int
    source: str
    vq_encoder: VQEncoder | None = None  # editing from images (vq_encoder.safetensors), when the VQ kept one

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg


def save_checkpoint(folder: str | Path, model: Transformer, vq: VQDecoder, image_size: int,
                    vq_encoder: VQEncoder | None = None, store_fp16: bool = False) -> None:
    """``vq_encoder`` (optional) is written as vq_encoder.safetensors, for editing from images.
    ``store_fp16`` stores the model's float32 weights as float16 (half the file; loading casts them back to
    the model's dtype, `importers.load_checked`): what keeps a second bundled model under 5 MiB."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "image_size": int(image_size),
            "model": model.cfg.to_dict(), "vq": vq.config.to_dict()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if store_fp16:
        tensors = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(tensors, p))
    vq_tensors = {k: v.detach().contiguous().cpu() for k, v in vq.state_dict().items()}
    atomic_write(folder / "vq.safetensors", lambda p: save_file(vq_tensors, p))
    if vq_encoder is not None:
        enc_tensors = {k: v.detach().contiguous().cpu() for k, v in vq_encoder.weights().items()}
        atomic_write(folder / ENCODER_FILE, lambda p: save_file(enc_tensors, p))
    atomic_write_json(folder / "config.json", meta)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or one DartrtError line naming the file."""
    if not path.is_file():
        raise DartrtError(f"checkpoint file missing: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DartrtError(f"cannot read {path}: {exc}") from None


def load_checkpoint(folder: str | Path) -> Checkpoint:
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not folder.is_dir():
        raise DartrtError(f"checkpoint folder not found: {folder}")
    try:
        meta = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise DartrtError(f"checkpoint file missing: {cfg_path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DartrtError(f"cannot parse {cfg_path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DartrtError(f"{cfg_path} is not a dartrt checkpoint config")
    if meta.get("version") != VERSION:
        raise DartrtError(f"{cfg_path}: checkpoint version {meta.get('version')} is not supported (want {VERSION})")
    if meta.get("family") == "d-ar":
        raise DartrtError(f"{folder} is a D-AR checkpoint (GPT + diffusion tokenizer), not a DAR/LlamaGen one; load "
                          "it with dartrt.dar.d_ar.load_d_ar_checkpoint (dartrt export and generate take the folder)")
    try:
        cfg = ModelConfig.from_dict(meta["model"])
        vq_cfg = VQConfig.from_dict(meta["vq"])
        image_size = int(meta["image_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DartrtError(f"{cfg_path}: bad config ({exc})") from None
    model = build_model(cfg, "meta")
    model = model.to_empty(device="cpu")
    load_checked(model, read_tensors(folder / "model.safetensors"), str(folder / "model.safetensors"))
    model.rope_cos, model.rope_sin = _rope(cfg)
    vq = build_vq_decoder(vq_cfg, "meta").to_empty(device="cpu")
    load_checked(vq, read_tensors(folder / "vq.safetensors"), str(folder / "vq.safetensors"))
    encoder = None
    if (folder / ENCODER_FILE).is_file():
        encoder = VQEncoder(vq_cfg, quantize=vq.quantize)
        weights = {**read_tensors(folder / ENCODER_FILE), **{f"quantize.{k}": v for k, v in
                                                              vq.quantize.state_dict().items()}}
        load_checked(encoder, weights, str(folder / ENCODER_FILE))
        encoder.eval()
    return Checkpoint(model.eval(), vq.eval(), image_size, str(folder), encoder)


def _rope(cfg: ModelConfig):
    from .rope import rope_tables

    return rope_tables(cfg)


def vq_config_for(cfg: ModelConfig) -> tuple[VQConfig, int]:
    """The tokenizer that matches a preset: VQ-16 for the full-size family (256 px), else a tiny VQ."""
    if cfg.vocab_size == 16384 and cfg.codebook_dim == 8:
        vq = VQ_PRESETS["VQ-16"]
    elif cfg.vocab_size == 512 and cfg.grid_size == 16:
        vq = VQ_PRESETS["VQ-demo"]
    else:
        vq = VQConfig(codebook_size=cfg.vocab_size, codebook_dim=cfg.codebook_dim, z_channels=32, ch=16,
                      ch_mult=(1, 2), num_res_blocks=1, norm_groups=8)
    return vq, cfg.grid_size * vq.downsample


def preset_source(name: str) -> str:
    """How a preset with random weights is recorded as a package's source (`dar.reference` parses it)."""
    return f"preset {name} (random weights)"


def random_checkpoint(preset: str, seed: int = 0) -> Checkpoint:
    """A preset with random weights (and a VQ whose codebook is the model's frozen codebook)."""
    cfg = get_preset(preset)
    model = build_model(cfg, seed=seed)
    vq_cfg, image_size = vq_config_for(cfg)
    torch.manual_seed(seed + 1)
    vq = build_vq_decoder(vq_cfg).eval()
    if cfg.token_embedding == "codebook_mlp":
        with torch.no_grad():
            model.tok_codebook.copy_(vq.quantize.embedding.weight)
    return Checkpoint(model, vq, image_size, preset_source(preset))


def resolve_source(source: str | None) -> Checkpoint:
    """SOURCE of the CLI: a checkpoint folder, a preset name (random weights), or None (bundled)."""
    if source is None:
        if not (BUNDLED / "config.json").is_file():
            raise DartrtError(f"the bundled demo model is missing at {BUNDLED}; run `dartrt train-demo`")
        return load_checkpoint(BUNDLED)
    if Path(source).exists():
        return load_checkpoint(source)
    from .config import PRESETS

    if source in PRESETS:
        return random_checkpoint(source)
    raise DartrtError(f"{source!r} does not exist: give a package folder (what `dartrt export` writes), a checkpoint "
                      f"folder (config.json + safetensors) or a preset ({', '.join(PRESETS)})")
