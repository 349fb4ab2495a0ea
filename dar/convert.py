"""`dartrt convert llamagen`: LlamaGen c2i `.pt` files → our checkpoint format."""

from __future__ import annotations

from pathlib import Path

from dartrt.runtime.errors import DartrtError

from .checkpoint import save_checkpoint, vq_config_for
from .config import get_preset
from .importers import import_llamagen_gpt, import_llamagen_vq
from .model import build_model


def convert_llamagen(gpt_path: str | Path, vq_path: str | Path, preset: str, out: str | Path) -> None:
    cfg = get_preset(preset)
    if cfg.family != "llamagen":
        raise DartrtError(f"--model {preset} is not a LlamaGen preset (GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-3B)")
    model = build_model(cfg, "meta").to_empty(device="cpu")
    import_llamagen_gpt(gpt_path, model)
    from .rope import rope_tables

    model.rope_cos, model.rope_sin = rope_tables(cfg)
    vq_cfg, image_size = vq_config_for(cfg)
    vq = import_llamagen_vq(vq_path, vq_cfg)
    save_checkpoint(out, model.eval(), vq.eval(), image_size)
