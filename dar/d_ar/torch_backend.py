"""The torch reference of a D-AR pair as the runtime's `DARBackend`: the same scheduler and decoder loop as a
package, with eager PyTorch in place of the graphs (what parity tests and `dartrt generate CHECKPOINT` run)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dartrt.runtime.d_ar import DARBackend
from dartrt.runtime.errors import DartrtError

from ..checkpoint import Checkpoint
from ..torch_backend import TorchBackend
from .checkpoint import DARCheckpoint
from .spec import spec_of
from .tokenizer import DARTokenizer


class TorchARBackend(TorchBackend):
    """D-AR's GPT with a static KV cache, as `TorchBackend` runs every member; it has no VQ decoder."""

    def __init__(self, ckpt: DARCheckpoint, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        super().__init__(Checkpoint(ckpt.model, nn.Identity(), ckpt.image_size, ckpt.source), dtype, device)

    def decode_vq(self, grids: np.ndarray) -> np.ndarray:
        raise DartrtError("D-AR has no VQ decoder: its tokens decode by diffusion (dartrt.runtime.decode)")


class TorchTokenizerGraphs:
    """The tokenizer's conditions (streamed, with its static cache) and velocity network in eager PyTorch."""

    name = "torch"

    def __init__(self, tokenizer: DARTokenizer, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        self.tokenizer = tokenizer.to(device=device, dtype=dtype).eval()
        self.dtype, self.device = dtype, torch.device(device)

    def new_cache(self, rows: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.tokenizer.new_condition_cache(rows, dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def conditions(self, cache, ids: np.ndarray, write_index: int) -> np.ndarray:
        ids_t = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(self.device)
        write = torch.full((ids_t.shape[0],), int(write_index), dtype=torch.long, device=self.device)
        cond, _ = self.tokenizer.conditions_step(ids_t, write, cache)  # eager mode writes the cache in place
        return cond.float().cpu().numpy()

    @torch.no_grad()
    def velocity(self, x: np.ndarray, s, cond: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device, self.dtype)
        st = torch.full((xt.shape[0],), float(np.float32(s)), dtype=torch.float32, device=self.device)
        ct = torch.from_numpy(np.ascontiguousarray(cond, dtype=np.float32)).to(self.device, self.dtype)
        return self.tokenizer.velocity(xt, st.to(self.dtype), ct).float().cpu().numpy()


def torch_d_ar_backend(ckpt: DARCheckpoint, dtype: torch.dtype = torch.float32, device: str = "cpu") -> DARBackend:
    """The reference of a D-AR checkpoint, runnable by `dartrt.runtime.d_ar.generate` and `decode`."""
    ckpt.check()
    return DARBackend(TorchARBackend(ckpt, dtype, device), TorchTokenizerGraphs(ckpt.tokenizer, dtype, device),
                      spec_of(ckpt.model.cfg, ckpt.tokenizer.cfg))
