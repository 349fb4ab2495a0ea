"""Importers for LlamaGen checkpoints (VQ tokenizer and c2i GPT) with strict, readable checks.

Why not just ``load_state_dict(strict=True)``: its error lists every problem in a multi-line blob,
and it crashes with a raw torch error on a corrupt file. A user pointing ``dartrt`` at the wrong
checkpoint should get one line naming the file and the first offending key. We therefore clean the
checkpoint (DDP/FSDP/``torch.compile`` wrappers, a stale ``freqs_cis``), check keys and shapes
ourselves, and only then load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dartrt.dar.vq import VQConfig, VQDecoder, build_vq_decoder
from dartrt.runtime.errors import DartrtError

__all__ = [
    "DartrtError",
    "VQ_IGNORED_PREFIXES",
    "clean_state_dict",
    "import_llamagen_gpt",
    "import_llamagen_vq",
    "load_checked",
    "load_checkpoint",
]

StateDict = dict[str, torch.Tensor]
PathOrSd = str | os.PathLike[str] | Mapping[str, Any]

# Wrapper keys LlamaGen's own loaders accept: DDP ("model"), DeepSpeed ("module"), Lightning-style.
_NESTING_KEYS = ("model", "module", "state_dict")
# Prefixes added by torch.compile and DDP; possibly stacked (``module._orig_mod.x``).
_STRIP_PREFIXES = ("_orig_mod.", "module.")
# Keys that are derived state, not weights.
_DROP_KEYS = frozenset({"freqs_cis"})
# Keys of a full VQ checkpoint that the decode path does not use.
VQ_IGNORED_PREFIXES = ("encoder.", "quant_conv.", "quantize.codebook_used")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def clean_state_dict(sd: Mapping[str, Any], source: str = "checkpoint") -> StateDict:
    """Unwrap DDP/DeepSpeed nesting, strip ``_orig_mod.``/``module.`` prefixes, drop ``freqs_cis``.

    A raw (FSDP) dict passes through. Non-tensor values or a key clash after stripping raise
    :class:`DartrtError` naming ``source``.
    """
    if not isinstance(sd, Mapping):
        raise DartrtError(f"{source}: expected a dict of tensors, got {type(sd).__name__}")
    for key in _NESTING_KEYS:
        inner = sd.get(key)
        if isinstance(inner, Mapping):
            sd = inner
            break
    out: StateDict = {}
    for raw_key, value in sd.items():
        if not isinstance(raw_key, str):
            raise DartrtError(f"{source}: non-string key {raw_key!r}")
        key = _strip(raw_key)
        if key in _DROP_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise DartrtError(f"{source}: value of '{raw_key}' is {type(value).__name__}, not a tensor")
        if key in out:
            raise DartrtError(f"{source}: duplicate key '{key}' after stripping wrapper prefixes")
        out[key] = value
    return out


def load_checkpoint(path_or_sd: PathOrSd) -> tuple[StateDict, str]:
    """Read a checkpoint (``torch.load`` with ``weights_only=True``) or accept a dict; returns (clean sd, name).

    Any failure to read (missing, truncated, not a pickle, unsafe pickle) becomes one-line
    :class:`DartrtError` naming the file.
    """
    if isinstance(path_or_sd, Mapping):
        return clean_state_dict(path_or_sd, "state dict"), "state dict"
    name = f"checkpoint {Path(path_or_sd).name}"
    try:
        obj = torch.load(os.fspath(path_or_sd), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DartrtError(f"{name}: file not found ({path_or_sd})") from None
    except Exception as exc:  # noqa: BLE001 - every reader failure maps to the same user error
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0][:160] if text else "no message"
        raise DartrtError(f"{name} is not a PyTorch checkpoint of tensors that can be read safely "
                          f"({type(exc).__name__}: {reason})") from None
    if not isinstance(obj, Mapping):
        raise DartrtError(f"{name}: expected a dict of tensors, got {type(obj).__name__}")
    return clean_state_dict(obj, name), name


def _shape(t: torch.Tensor | torch.Size) -> str:
    return "[" + ",".join(str(d) for d in (t if isinstance(t, torch.Size) else t.shape)) + "]"


def load_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], source_name: str = "checkpoint") -> nn.Module:
    """Load ``sd`` into ``model`` after checking keys and shapes against ``model.state_dict()``.

    Non-persistent buffers are not in ``state_dict()`` and so are neither required nor accepted.
    The first problem found (missing, then unexpected, then shape) raises a one-line
    :class:`DartrtError` naming the key. Works on a meta-device model (weights are assigned).
    """
    expected = model.state_dict()
    for key in expected:
        if key not in sd:
            raise DartrtError(f"{source_name}: missing key '{key}'")
    for key in sd:
        if key not in expected:
            raise DartrtError(f"{source_name}: unexpected key '{key}'")
    for key, ref in expected.items():
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise DartrtError(
                f"{source_name}: shape mismatch for '{key}': checkpoint {_shape(sd[key])} vs model {_shape(ref)}"
            )
    on_meta = any(t.device.type == "meta" for t in expected.values())
    with torch.no_grad():
        casted = {k: v.to(expected[k].dtype) for k, v in sd.items()}
        model.load_state_dict(casted, strict=True, assign=on_meta)
    return model


def import_llamagen_vq(path_or_sd: PathOrSd, config: VQConfig | str = "VQ-16") -> VQDecoder:
    """Build a :class:`VQDecoder` for ``config`` and fill it from a LlamaGen VQ checkpoint.

    Encoder-side keys (``encoder.*``, ``quant_conv.*``) and ``quantize.codebook_used`` are dropped;
    everything else must match the decode path exactly.
    """
    sd, name = load_checkpoint(path_or_sd)
    decode_sd = {k: v for k, v in sd.items() if not k.startswith(VQ_IGNORED_PREFIXES)}
    decoder = build_vq_decoder(config)
    load_checked(decoder, decode_sd, name)
    return decoder.eval()


def import_llamagen_gpt(path_or_sd: PathOrSd, model: nn.Module) -> nn.Module:
    """Fill ``model`` (whose parameter names are LlamaGen's GPT names) from a LlamaGen c2i checkpoint."""
    sd, name = load_checkpoint(path_or_sd)
    return load_checked(model, sd, name)
