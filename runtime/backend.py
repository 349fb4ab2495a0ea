"""The interface every inference backend implements (torch reference, onnxruntime, TensorRT).

A backend owns the per-image state of one batch (KV caches, AdaLN table) between ``prefill`` and the
last ``step``. The scheduler drives it with positions and directions taken from the scan order, so a
backend knows nothing about orders, CFG or sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


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

    @property
    def seq_len(self) -> int:
        return self.grid_size * self.grid_size

    @classmethod
    def from_config(cls, cfg: dict, image_size: int) -> "ModelInfo":
        keys = ("name", "num_classes", "vocab_size", "grid_size", "rope", "order", "default_cfg",
                "default_cfg_schedule", "default_top_k", "default_top_p", "default_temperature")
        return cls(image_size=image_size, class_names=tuple(cfg.get("class_names") or ()),
                   **{k: cfg[k] for k in keys})

    def class_name(self, class_id: int) -> str:
        if class_id < len(self.class_names):
            return f"{class_id} {self.class_names[class_id]}"
        return str(class_id)


def check_step_rows(rows: int, prepared: int) -> None:
    """A step must feed the rows its prefill set the caches up for."""
    if rows != prepared:
        from .errors import DartrtError

        raise DartrtError(f"step got {rows} rows but prefill set up {prepared}; call prefill first")


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
