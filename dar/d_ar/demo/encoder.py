"""The D-AR demo's tokens: the any-order DAR demo's VQ codes (16×16 = 256), read in 8 interleaved groups of 32.

D-AR's own encoder learns 1D tokens jointly with the diffusion decoder. Trained that way on a 2-core CPU for
27 minutes, the demo's decoder read its tokens only weakly (13 dB, images at chance; docs/d-ar.md); trained
on codes known to carry the image, it learns to read them within the budget. So the demo takes its tokens
from a VQ that already exists in the repository (``models/demo-anyorder``'s patch encoder and codebook, 26.5 dB
through that VQ's own decoder) and trains only the D-AR decode path on them. What stays D-AR's: 256 tokens
in 8 groups of 32, causal conditions, and groups that go from coarse to fine.

Coarse to fine on a grid: a 4×4 ordered-dither (Bayer) matrix ranks the 16 cells of every 4×4 block, and
the tokens are sorted by that rank, then by row and column. Group 1 (ranks 0 and 1) is a lattice of 32 cells
spread over the whole image, and every later group fills the gaps between the earlier ones, as in ordered
dithering. Measured against row-by-row groups, this order gave the better decoder (docs/d-ar.md, runs A-B).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from dartrt.models import recorded_path
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.fileio import atomic_write, atomic_write_json

from ...checkpoint import load_checkpoint, read_tensors
from ...importers import load_checked
from ...vq import VQConfig, VQEncoder

ENCODER_WEIGHTS, ENCODER_CONFIG = "encoder.safetensors", "encoder.json"
KIND = "vq-codes-in-dither-groups"

# Rank of each cell of a 4×4 block: the classic ordered-dither matrix (every prefix of ranks is spread evenly).
BAYER4 = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]])


def dither_order(grid: int) -> np.ndarray:
    """The flat cell (r·grid + c) at every sequence position: by dither rank, then row, then column."""
    if grid % 4:
        raise ValueError(f"the dither order needs a grid that is a multiple of 4, got {grid}")
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    return np.lexsort((cols, rows, BAYER4[rows % 4, cols % 4])).astype(np.int64)


@dataclass
class DemoTokens:
    """images → D-AR token ids: a frozen VQ encoder's code grid, read in ``order``. Generation never runs it;
    it makes the training tokens and the reconstructions that bound the demo's quality."""

    vq: VQEncoder
    order: np.ndarray  # [num_tokens] flat grid cells in sequence order
    source: str

    @property
    def codebook(self) -> torch.Tensor:
        """The VQ's raw codebook [codebook_size, codebook_dim]: the tokenizer's, which also normalises rows."""
        return self.vq.quantize.embedding.weight

    @torch.no_grad()
    def encode_ids(self, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] → token ids [B, num_tokens] int64, ``batch`` images at a time."""
        order = torch.from_numpy(self.order)
        grids = [self.vq.encode_indices(images[i:i + batch]).flatten(1) for i in range(0, len(images), batch)]
        return torch.cat(grids)[:, order]

    # The name the DAR demo's `dar.demo.train.tokenize` calls, which makes the GPT's training set from it.
    encode_to_indices = encode_ids

    def grid_of(self, ids: np.ndarray) -> np.ndarray:
        """Token ids [B, num_tokens] back to the VQ's code grid [B, G, G]."""
        grid = int(round(len(self.order) ** 0.5))
        out = np.empty_like(ids)
        out[:, self.order] = ids
        return out.reshape(len(ids), grid, grid)

    def save(self, folder: Path) -> None:
        state = {k: v.detach().contiguous() for k, v in self.vq.state_dict().items()}
        atomic_write(folder / ENCODER_WEIGHTS, lambda p: save_file(state, p))
        atomic_write_json(folder / ENCODER_CONFIG, {"kind": KIND, "source": self.source,
                                                    "vq": self.vq.config.to_dict(), "order": self.order.tolist()})


def tokens_from_dar_demo(folder: str | Path) -> DemoTokens:
    """The tokens of a DAR demo folder with a VQ encoder (``models/demo-anyorder``), in dither order."""
    ckpt = load_checkpoint(folder)
    if ckpt.vq_encoder is None:
        raise DartrtError(f"{folder} has no VQ encoder (vq_encoder.safetensors): the D-AR demo takes its tokens "
                          f"from one; use models/demo-anyorder")
    grid = ckpt.config.grid_size
    return DemoTokens(ckpt.vq_encoder.eval(), dither_order(grid), recorded_path(folder))


def load_demo_tokens(folder: str | Path) -> DemoTokens:
    """The token source saved next to a D-AR demo checkpoint (encoder.json, encoder.safetensors)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / ENCODER_CONFIG).read_text())
        if meta.get("kind") != KIND:
            raise ValueError(f"kind {meta.get('kind')!r} is not {KIND!r}")
        vq = VQEncoder(VQConfig.from_dict(meta["vq"]))
        order = np.asarray(meta["order"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DartrtError(f"{folder / ENCODER_CONFIG}: not a D-AR demo token source ({exc})") from None
    load_checked(vq, read_tensors(folder / ENCODER_WEIGHTS), str(folder / ENCODER_WEIGHTS))
    return DemoTokens(vq.eval(), order, str(meta.get("source", "")))
