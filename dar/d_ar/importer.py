"""Import the public D-AR checkpoints (showlab/D-AR) unchanged: the tokenizer and the GPT.

What the public files hold, and what we take from them:

- Tokenizer (``D-AR-tokenizer_v1.pt``, or a trainer checkpoint): a dict with ``model`` and/or ``ema`` state
  dicts (the public loader ``dar_tool.load_visual_tokenizer`` prefers ``ema``; so do we), optionally the
  trainer's ``config`` (it overrides the default config, tokenizer_v1 here, as it does publicly), plus
  training state we ignore. Keys are the public ``VQModel``'s; the encoder side is dropped, every
  decode-path key must be present with its exact shape.
- GPT (``D-AR-L-360K.pt``, ``D-AR-XL-360K.pt``): LlamaGen's c2i GPT layout. The public sampler
  (``autoregressive/sample/sample_c2i.py``) loads ``model`` (else ``module``, ``state_dict``, the raw dict)
  and never ``ema``; so do we by default (``weights="ema"`` picks the EMA copy). Depth and widths come from
  the state dict: the ``--model`` preset only names the family member and supplies the head count.

Both: ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes are stripped; files are read without
executing pickled code (safe_load.py). Every problem is one line naming the file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dartrt.runtime.errors import DartrtError

from ..config import ModelConfig, get_preset
from ..importers import clean_state_dict, load_checked
from ..model import Transformer, build_model
from ..rope import rope_tables
from .config import TokenizerConfig, from_public_config, get_tokenizer_preset
from .safe_load import plain_config, read_pt
from .tokenizer import DARTokenizer, build_tokenizer

Source = str | os.PathLike[str] | Mapping[str, Any]
StateDict = dict[str, torch.Tensor]

# Keys of a full tokenizer checkpoint that the decode path does not use (encoder, training-only heads).
TOKENIZER_IGNORED_PREFIXES = (
    "encoder_layers.", "patchify.", "query_embedding.", "query_linear.", "quant_in_conv.",
    "quantize.codebook_used", "diff_decoder.net.repa_out.",
)
GPT_PRESETS = ("GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-3B")
_LAYER = re.compile(r"^layers\.(\d+)\.")


def identify(sd: Mapping[str, Any]) -> str:
    """Which kind of checkpoint a cleaned state dict is: d-ar-tokenizer, llamagen-vq, gpt or unknown."""
    keys = set(sd)
    if "quant_out_conv.weight" in keys and any(k.startswith("diff_decoder.net.") for k in keys):
        return "d-ar-tokenizer"
    if "post_quant_conv.weight" in keys or any(k.startswith("decoder.conv_") for k in keys):
        return "llamagen-vq"
    if "tok_embeddings.weight" in keys or any(k.startswith("cls_embedding.") for k in keys):
        return "gpt"
    return "unknown"


_KIND_NAMES = {"d-ar-tokenizer": "a D-AR tokenizer", "llamagen-vq": "a LlamaGen VQ tokenizer",
               "gpt": "a GPT (AR model)", "unknown": "of no known kind"}


def _wrong_family(name: str, kind: str, want: str, hint: str = "") -> DartrtError:
    return DartrtError(f"{name}: this checkpoint is {_KIND_NAMES[kind]}, not {want}{hint}")


def _pick_weights(obj: Mapping[str, Any], name: str, order: tuple[str, ...]) -> Mapping[str, Any]:
    """The first of ``order`` the checkpoint holds as a mapping, else its tensor entries (a raw state dict)."""
    for key in order:
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise DartrtError(f"{name}: no weights found (no {', '.join(repr(k) for k in order)} entry and no tensors)")
    return tensors


# ---- tokenizer -------------------------------------------------------------------------------------------
def tokenizer_config_of(obj: Mapping[str, Any], name: str, default: TokenizerConfig | None = None) -> TokenizerConfig:
    """The stored ``config`` (a dict or the trainer's Config object; its ``model`` section) if any, else
    ``default`` (tokenizer_v1)."""
    if "config" not in obj:
        return default if default is not None else get_tokenizer_preset("tokenizer_v1")
    config = plain_config(obj["config"], name)
    return from_public_config(config.get("model", config), name)


def import_tokenizer(source: Source, default_config: TokenizerConfig | None = None,
                     weights: str = "auto") -> DARTokenizer:
    """A public tokenizer checkpoint → :class:`DARTokenizer` (eval mode, weights in fp32).

    ``weights``: ``auto`` (``ema``, else ``model``, as the public loader), ``ema`` or ``model``."""
    obj, name = read_pt(source)
    order = {"auto": ("ema", "model"), "ema": ("ema",), "model": ("model",)}.get(weights)
    if order is None:
        raise DartrtError(f"weights must be auto, ema or model, got {weights!r}")
    if weights != "auto" and not isinstance(obj.get(weights), Mapping):
        raise DartrtError(f"{name}: no {weights!r} entry")
    sd = clean_state_dict(_pick_weights(obj, name, order + ("module", "state_dict")), name)
    kind = identify(sd)
    if kind != "d-ar-tokenizer":
        raise _wrong_family(name, kind, "a D-AR tokenizer",
                            " (did you swap --tokenizer and --gpt?)" if kind == "gpt" else "")
    cfg = tokenizer_config_of(obj, name, default_config)
    if "config" in obj and not isinstance(source, Mapping):
        cfg.name = Path(source).stem
    decode_sd = {k: v for k, v in sd.items() if not k.startswith(TOKENIZER_IGNORED_PREFIXES)}
    tokenizer = build_tokenizer(cfg, "meta")
    load_checked(tokenizer, decode_sd, name)
    return tokenizer.eval()


# ---- GPT -------------------------------------------------------------------------------------------------
def _shape(sd: Mapping[str, torch.Tensor], key: str, name: str, ndim: int) -> tuple[int, ...]:
    if key not in sd:
        raise DartrtError(f"{name}: missing key '{key}'")
    shape = tuple(sd[key].shape)
    if len(shape) != ndim:
        raise DartrtError(f"{name}: '{key}' has shape {list(shape)}, expected {ndim} dimensions")
    return shape


def gpt_config_from_state_dict(sd: Mapping[str, torch.Tensor], preset: str, num_tokens: int,
                               name: str = "checkpoint") -> tuple[ModelConfig, list[str]]:
    """D-AR's AR model for ``preset``, with depth and widths read from ``sd``; returns the config and a note
    for every value that differs from the preset.

    The config is LlamaGen's GPT with 1D RoPE over the index (the class token at position 0 turns by the
    identity: D-AR's ``precompute_freqs_cis_1d`` has no zero rows), raster order over ``num_tokens`` = G²."""
    if preset not in GPT_PRESETS:
        raise DartrtError(f"--model {preset} is not a GPT preset ({', '.join(GPT_PRESETS)})")
    base = get_preset(preset)
    grid = math.isqrt(num_tokens)
    if grid * grid != num_tokens:
        raise DartrtError(f"the tokenizer's {num_tokens} tokens are not a square number; dartrt's AR "
                          "configs hold G*G tokens")
    if any(k.startswith("cls_embedding.cap_proj") for k in sd):
        raise DartrtError(f"{name}: a text-conditional (t2i) GPT; only class-conditional ones are supported")
    vocab, d = _shape(sd, "tok_embeddings.weight", name, 2)
    rows, _ = _shape(sd, "cls_embedding.embedding_table.weight", name, 2)
    layers = sorted({int(m.group(1)) for k in sd if (m := _LAYER.match(k))})
    if not layers:
        raise DartrtError(f"{name}: no 'layers.N.*' keys")
    if layers != list(range(len(layers))):
        missing = sorted(set(range(layers[-1] + 1)) - set(layers))[0]
        raise DartrtError(f"{name}: missing key 'layers.{missing}.attention.wqkv.weight'")
    qkv, _ = _shape(sd, "layers.0.attention.wqkv.weight", name, 2)
    if qkv != 3 * d:
        raise DartrtError(f"{name}: 'layers.0.attention.wqkv.weight' has {qkv} rows, not 3 x {d}: grouped "
                          "key/value heads are not supported")
    ffn, _ = _shape(sd, "layers.0.feed_forward.w1.weight", name, 2)
    if d == base.d_model:
        n_head = base.n_head
    elif d % base.head_dim == 0:
        n_head = d // base.head_dim
    else:
        raise DartrtError(f"{name}: width {d} is not a multiple of {preset}'s head size {base.head_dim}")
    cfg = ModelConfig(
        name=f"D-AR {preset}", family="d-ar", n_layer=len(layers), d_model=d, n_head=n_head,
        head_dim=d // n_head, vocab_size=vocab, num_classes=rows - 1, grid_size=grid, ffn_hidden=ffn,
        norm_eps=base.norm_eps, rope="1d", rope_base=base.rope_base, token_embedding="learned", adaln=False,
        order="raster", class_dropout=0.1, default_cfg=4.0, default_cfg_schedule="constant", default_top_k=0,
    )
    notes = [f"{label} {got} (the {preset} preset has {want})"
             for label, got, want in (("layers", cfg.n_layer, base.n_layer), ("width", d, base.d_model),
                                      ("heads", n_head, base.n_head), ("feed-forward", ffn, base.ffn_hidden),
                                      ("vocabulary", vocab, base.vocab_size),
                                      ("classes", cfg.num_classes, base.num_classes))
             if got != want]
    return cfg, notes


def import_gpt(source: Source, preset: str, tokenizer_cfg: TokenizerConfig,
               weights: str = "model") -> tuple[Transformer, list[str]]:
    """A public D-AR GPT checkpoint → our :class:`Transformer` (1D RoPE) and the notes of
    :func:`gpt_config_from_state_dict`. The GPT must pair with the tokenizer: its vocabulary is the
    tokenizer's codebook."""
    obj, name = read_pt(source)
    if weights not in ("model", "ema"):
        raise DartrtError(f"GPT weights must be model or ema, got {weights!r}")
    if weights == "ema" and not isinstance(obj.get("ema"), Mapping):
        raise DartrtError(f"{name}: no 'ema' entry")
    order = ("ema",) if weights == "ema" else ("model", "module", "state_dict")
    sd = clean_state_dict(_pick_weights(obj, name, order), name)
    kind = identify(sd)
    if kind != "gpt":
        raise _wrong_family(name, kind, "a GPT",
                            " (did you swap --tokenizer and --gpt?)" if kind == "d-ar-tokenizer" else "")
    cfg, notes = gpt_config_from_state_dict(sd, preset, tokenizer_cfg.num_tokens, name)
    if cfg.vocab_size != tokenizer_cfg.codebook_size:
        raise DartrtError(f"the tokenizer's codebook has {tokenizer_cfg.codebook_size} entries but the GPT's "
                          f"vocabulary ({name}) has {cfg.vocab_size}: they are not a pair")
    model = build_model(cfg, "meta")
    load_checked(model, sd, name)
    model.rope_cos, model.rope_sin = rope_tables(cfg)
    return model.eval(), notes
