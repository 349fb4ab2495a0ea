"""The interface every inference backend implements (torch reference, onnxruntime, TensorRT).

A backend owns the per-image state of one batch (KV caches, AdaLN table) between ``prefill`` and the
last ``step``. The scheduler drives it with positions and directions taken from the scan order, so a
backend knows nothing about orders, CFG or sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import DartrtError


@dataclass(frozen=True)
class ModelInfo:
    """What the scheduler needs to know about a model (read from a config or a manifest)."""

    name: str
    num_classes: int
    vocab_size: int
    grid_size: int
    rope: str
    order: str
    image_size: int
    default_cfg: float = 4.0
    default_cfg_schedule: str = "constant"
    default_top_k: int = 0
    default_top_p: float = 1.0
    default_temperature: float = 1.0
    class_names: tuple = ()
    any_order: bool = False  # trained on random orders: may choose its own (order="adaptive", editing)

    @property
    def seq_len(self) -> int:
        return self.grid_size * self.grid_size

    @classmethod
    def from_config(cls, cfg: dict, image_size: int) -> ModelInfo:
        """The info of a model config dict (a checkpoint's or a manifest's); `check_model_fields` first,
        so a damaged or hand-edited entry is one line naming the field, not a failure deep inside."""
        check_model_fields(cfg)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise DartrtError(f"image_size must be an integer >= 1, got {image_size!r}")
        keys = ("name", "num_classes", "vocab_size", "grid_size", "rope", "order", "default_cfg",
                "default_cfg_schedule", "default_top_k", "default_top_p", "default_temperature")
        return cls(image_size=image_size, class_names=tuple(cfg.get("class_names") or ()),
                   any_order=bool(cfg.get("any_order", False)), **{k: cfg[k] for k in keys})

    def class_name(self, class_id: int) -> str:
        if class_id < len(self.class_names):
            return f"{class_id} {self.class_names[class_id]}"
        return str(class_id)


def check_step_rows(rows: int, prepared: int) -> None:
    """A step must feed the rows its prefill set the caches up for."""
    if rows != prepared:
        raise DartrtError(f"step got {rows} rows but prefill set up {prepared}; call prefill first")


# What a runtime needs of a model config, and the range each field must be in. ModelConfig (the torch
# side) checks the same fields through this function, so the two can never disagree on what is valid.
_INT_FIELDS = {"num_classes": 1, "vocab_size": 2, "grid_size": 1, "default_top_k": 0}
_CHOICES = {"rope": ("1d", "2d", "4d"), "default_cfg_schedule": ("constant", "linear", "power-cosine")}


def check_model_fields(cfg: dict, prefix: str = "model ") -> None:
    """Raise one `DartrtError` line for the first field of a model config dict that is missing, of the
    wrong type, or out of range (the fields the runtime reads); ``prefix`` starts each field's name."""
    if not isinstance(cfg, dict):
        raise DartrtError(f"the model entry must be an object, got {type(cfg).__name__}")

    def need(key: str):
        if key not in cfg:
            raise DartrtError(f"the model entry has no {key!r}")
        return cfg[key]

    for key, low in _INT_FIELDS.items():
        value = need(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DartrtError(f"{prefix}{key} must be an integer >= {low}, got {value!r}")
    for key, choices in _CHOICES.items():
        if need(key) not in choices:
            raise DartrtError(f"{prefix}{key} must be one of {', '.join(choices)}, got {cfg[key]!r}")
    for key in ("name", "order"):
        if not isinstance(need(key), str) or not cfg[key]:
            raise DartrtError(f"{prefix}{key} must be a non-empty string, got {cfg[key]!r}")
    if not isinstance(cfg.get("any_order", False), bool):  # optional: packages before it was a field lack it
        raise DartrtError(f"{prefix}any_order must be true or false, got {cfg['any_order']!r}")
    numbers = {"default_cfg": (0.0, None), "default_temperature": (0.0, None), "default_top_p": (0.0, 1.0)}
    for key, (low, high) in numbers.items():
        value = need(key)
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= low
        if key == "default_top_p":
            ok = ok and low < value <= high
        if not ok:
            rng = "in (0, 1]" if key == "default_top_p" else f"a finite number >= {low:g}"
            raise DartrtError(f"{prefix}{key} must be {rng}, got {value!r}")


class Backend(Protocol):
    """Prefill the class prefix, then feed one index at a time; logits come back as fp32 numpy."""

    info: ModelInfo
    name: str

    def prefill(self, class_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """class_ids [R] int64 (CFG rows included) → logits [R, V] predicting the first token."""

    def step(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
             write_index: int) -> np.ndarray:
        """token_ids [R, S] at indices write_index..write_index+S-1 → logits [R, V] of the last one."""

    def decode_vq(self, grids: np.ndarray) -> np.ndarray:
        """Token grids [B, G, G] int64 → images [B, H, W, 3] uint8."""
