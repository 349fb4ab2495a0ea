"""The torch reference as a runtime `Backend`, so it runs through the same scheduler as ORT/TRT."""

from __future__ import annotations

import numpy as np
import torch

from dartrt.runtime.backend import ModelInfo
from dartrt.runtime.contract import PAST, cache_names
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.images import from_uint8, to_uint8

from .checkpoint import Checkpoint
from .model import commit_candidate


class TorchBackend:
    """Eager PyTorch with a static KV cache; fp32 by default, fp16/bf16 on request."""

    name = "torch"

    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        self.model = ckpt.model.to(device=device, dtype=dtype)
        # Tables and the frozen codebook stay fp32: rotations and the codebook norm are computed in fp32.
        self.model.rope_cos, self.model.rope_sin = (t.float() for t in (self.model.rope_cos, self.model.rope_sin))
        if hasattr(self.model, "tok_codebook"):
            self.model.tok_codebook = self.model.tok_codebook.float()
        self.vq = ckpt.vq.to(device=device)
        self.vq_encoder = ckpt.vq_encoder.to(device=device) if ckpt.vq_encoder is not None else None
        self.device = torch.device(device)
        self.dtype = dtype
        self.info = ModelInfo.from_config(ckpt.config.to_dict(), ckpt.image_size)
        self.caches = None
        self.modulation = None
        self._candidates = None  # the last scoring call's K/V rows, until `commit`

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.int64)).to(self.device)  # a copy: torch wants it writable

    @torch.no_grad()
    def prefill(self, class_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray) -> np.ndarray:
        rows = len(class_ids)
        self.caches = self.model.new_cache(rows, dtype=self.dtype, device=self.device)
        write = torch.zeros(rows, dtype=torch.long, device=self.device)
        logits, self.caches, self.modulation = self.model.prefill(
            self._t(class_ids)[:, None], self._t(positions), self._t(direction), write, self.caches)
        return logits[:, -1].float().cpu().numpy()

    @torch.no_grad()
    def step(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
             write_index: int) -> np.ndarray:
        rows = token_ids.shape[0]
        write = torch.full((rows,), int(write_index), dtype=torch.long, device=self.device)
        logits, self.caches = self.model.decode(self._t(token_ids), self._t(positions), self._t(direction),
                                                write, self.caches, self.modulation)
        return logits[:, -1].float().cpu().numpy()

    # ---- adaptive order (dartrt.runtime.adaptive): score candidates, commit the chosen one's K/V row ----
    @torch.no_grad()
    def score_candidates(self, token_ids: np.ndarray, positions: np.ndarray, direction: np.ndarray,
                         write_index: int) -> np.ndarray:
        """The last token token_ids [R, 1] at slot write_index with C candidate next cells → [R, C, V]."""
        write = torch.full((len(token_ids),), int(write_index), dtype=torch.long, device=self.device)
        logits, self._candidates = self.model.decode_candidates(
            self._t(token_ids), self._t(positions), self._t(direction), write, self.caches, self.modulation)
        return logits.float().cpu().numpy()

    @torch.no_grad()
    def commit(self, choice: np.ndarray, write_index: int) -> None:
        """Write candidate choice[r]'s K/V rows of the last scoring call at slot write_index, in place."""
        write = torch.full((len(choice),), int(write_index), dtype=torch.long, device=self.device)
        self.caches = commit_candidate(self.caches, self._candidates, self._t(choice), write)

    @torch.no_grad()
    def encode_vq(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [B, H, W, 3] → token grids [B, G, G] (the checkpoint's VQ encoder)."""
        if self.vq_encoder is None:
            raise DartrtError("this checkpoint has no VQ encoder (vq_encoder.safetensors), so it cannot turn an "
                              "image into tokens; give the known tokens as a token grid instead (--tokens)")
        x = torch.from_numpy(from_uint8(images)).to(self.device)
        return self.vq_encoder.encode_indices(x).cpu().numpy().astype(np.int64)

    def cache_feed(self, prefix: str = PAST, rows: np.ndarray | None = None, fill: int | None = None
                   ) -> dict[str, np.ndarray]:
        """The live caches as named fp32 numpy arrays (the graph contract's names under ``prefix``), as
        copies: of ``rows`` only, and of the first ``fill`` slots only, when given."""
        names = cache_names(len(self.caches), prefix)
        tensors = [t for kv in self.caches for t in kv]
        pick = slice(None) if rows is None else torch.as_tensor(rows, device=self.device)
        return {name: t[pick, :, :fill].float().cpu().numpy().copy() for name, t in zip(names, tensors)}

    @torch.no_grad()
    def decode_vq(self, grids: np.ndarray) -> np.ndarray:
        return to_uint8(self.vq.decode_indices(self._t(grids)).float().cpu().numpy())
