"""Model configuration and presets.

One dataclass covers every family member. DAR's unknowns (the paper gives ideas, not constants) are
fields, so that a real checkpoint can set them; the defaults are our reconstruction (docs/design.md, "Conventions").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from dartrt.runtime.backend import check_model_fields
from dartrt.runtime.errors import DartrtError

ROPE_KINDS = ("1d", "2d", "4d")
# Architecture fields and their minimum (0 means "derive it"); the fields a runtime reads are checked by
# `dartrt.runtime.backend.check_model_fields`, the one definition both sides share.
_ARCH_INTS = {"n_layer": 1, "d_model": 1, "n_head": 1, "head_dim": 0, "ffn_multiple_of": 1, "ffn_hidden": 0,
              "codebook_dim": 1}
EMBEDDINGS = ("learned", "codebook_mlp")


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


@dataclass
class ModelConfig:
    """A decoder of the family. ``family`` is informational; the switches below define the model."""

    name: str = "custom"
    family: str = "dar"  # dar | llamagen | d-ar
    n_layer: int = 2
    d_model: int = 64
    n_head: int = 4
    head_dim: int = 0  # 0 → d_model // n_head
    vocab_size: int = 512
    num_classes: int = 10
    grid_size: int = 16
    ffn_multiple_of: int = 256
    ffn_hidden: int = 0  # 0 → round_up(8d/3, ffn_multiple_of)
    norm_eps: float = 1e-5
    # RoPE: 1d (index), 2d (current cell), 4d (current + next cell).
    rope: str = "4d"
    rope_base: float = 10000.0
    # What the class token's "current cell" chunks rotate by: "identity" (DAR, ours) or "zero"
    # (LlamaGen's quirk: its freqs_cis rows for the class token are all zeros, zeroing its q and k).
    rope_class_row: str = "identity"
    # Token embedding: a learned table, or DAR's frozen VQ codebook followed by Linear-SiLU-Linear.
    token_embedding: str = "codebook_mlp"
    codebook_dim: int = 8
    codebook_l2norm: bool = True
    # DAR conditioning: AdaLN from c_t = E_cls[y] + E_dir[dir_t].
    adaln: bool = True
    adaln_bias: bool = True
    # Default scan order the model was trained with; runtimes may run any other.
    order: str = "diagonal"
    # Trained on random orders (any-order training), so that it can choose its own order: the runtime's
    # order="adaptive" and editing refuse a model without it (docs/oar.md). Fixed orders run on any model.
    any_order: bool = False
    # Training-only.
    class_dropout: float = 0.1
    # Generation defaults recorded with the model.
    default_cfg: float = 4.0
    default_cfg_schedule: str = "constant"
    default_top_k: int = 0
    default_top_p: float = 1.0
    default_temperature: float = 1.0
    class_names: list = field(default_factory=list)  # optional human-readable labels

    def __post_init__(self) -> None:
        for key, low in _ARCH_INTS.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DartrtError(f"config: {key} must be an integer >= {low}, got {value!r}")
        for key in ("norm_eps", "rope_base"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
                raise DartrtError(f"config: {key} must be a finite number > 0, got {value!r}")
        if self.head_dim == 0:
            self.head_dim = self.d_model // self.n_head
        if self.ffn_hidden == 0:
            self.ffn_hidden = find_multiple(int(8 * self.d_model / 3), self.ffn_multiple_of)
        if self.rope not in ROPE_KINDS:
            raise DartrtError(f"config: rope must be one of {ROPE_KINDS}, got {self.rope!r}")
        if self.token_embedding not in EMBEDDINGS:
            raise DartrtError(f"config: token_embedding must be one of {EMBEDDINGS}, got {self.token_embedding!r}")
        check_model_fields(dataclasses.asdict(self), prefix="config: ")
        chunks = {"1d": 1, "2d": 2, "4d": 4}[self.rope]
        if self.head_dim % (2 * chunks):
            raise DartrtError(f"config: head_dim {self.head_dim} is not divisible by {2 * chunks} for {self.rope} RoPE")

    @property
    def seq_len(self) -> int:
        """Decoder inputs per image: the class token plus G*G - 1 image tokens."""
        return self.grid_size * self.grid_size

    @property
    def inner_dim(self) -> int:
        return self.n_head * self.head_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DartrtError(f"config: unknown field {unknown[0]!r}")
        return cls(**data)


def _llamagen(name: str, n_layer: int, d: int, heads: int, **kw) -> ModelConfig:
    return ModelConfig(
        name=name, family="llamagen", n_layer=n_layer, d_model=d, n_head=heads, vocab_size=16384,
        num_classes=1000, grid_size=16, rope="2d", rope_class_row="zero", token_embedding="learned",
        adaln=False, order="raster", default_cfg=2.0, default_top_k=0, **kw,
    )


def _dar(name: str, n_layer: int, d: int, heads: int) -> ModelConfig:
    return ModelConfig(
        name=name, family="dar", n_layer=n_layer, d_model=d, n_head=heads, vocab_size=16384,
        num_classes=1000, grid_size=16, rope="4d", token_embedding="codebook_mlp", codebook_dim=8,
        adaln=True, order="diagonal", default_cfg=4.0, default_cfg_schedule="power-cosine",
    )


PRESETS: dict[str, ModelConfig] = {
    "DAR-B": _dar("DAR-B", 24, 1024, 16),
    "DAR-L": _dar("DAR-L", 36, 1280, 20),
    "DAR-XL": _dar("DAR-XL", 48, 1536, 24),
    "GPT-B": _llamagen("GPT-B", 12, 768, 12),
    "GPT-L": _llamagen("GPT-L", 24, 1024, 16),
    "GPT-XL": _llamagen("GPT-XL", 36, 1280, 20, default_cfg_schedule="constant"),
    "GPT-XXL": _llamagen("GPT-XXL", 48, 1536, 24),
    "GPT-3B": _llamagen("GPT-3B", 24, 3200, 32),
    # D-AR's AR model is a LlamaGen backbone with 1D RoPE (index positions).
    "DAR1D-B": ModelConfig(
        name="DAR1D-B", family="d-ar", n_layer=12, d_model=768, n_head=12, vocab_size=16384,
        num_classes=1000, rope="1d", token_embedding="learned", adaln=False, order="raster",
    ),
    # Small presets for tests (random weights, fast on CPU).
    "tiny-dar": ModelConfig(name="tiny-dar", n_layer=2, d_model=64, n_head=4, vocab_size=512,
                            num_classes=10, grid_size=8),
    "tiny-llamagen": ModelConfig(name="tiny-llamagen", family="llamagen", n_layer=2, d_model=64, n_head=4,
                                 vocab_size=512, num_classes=10, grid_size=8, rope="2d",
                                 rope_class_row="zero", token_embedding="learned", adaln=False,
                                 order="raster"),
    "tiny-1d": ModelConfig(name="tiny-1d", family="d-ar", n_layer=2, d_model=64, n_head=4, vocab_size=512,
                           num_classes=10, grid_size=8, rope="1d", token_embedding="learned", adaln=False,
                           order="raster"),
    # The bundled demo's architecture (trained weights live in models/demo; docs/demo-model.md, "What was
    # tried"). Heads of 64 rather than 32: PyTorch's CPU attention is slower at head_dim 32; training steps
    # ran 1.1-1.4x faster. Width 128 rather than 192: in the same training compute the smaller DAR learned
    # far more. Default CFG 1.25: the best of 1.0/1.1/1.25/1.5 on seeds 0-2 and held-out seeds 3-4
    # (docs/demo-model.md, "Quality").
    # 512 feed-forward units (the 8d/3 rule would give 384 at this width): the size the demo was measured at.
    "DAR-demo": ModelConfig(name="DAR-demo", n_layer=6, d_model=128, n_head=2, vocab_size=512,
                            num_classes=10, grid_size=16, codebook_dim=8, ffn_multiple_of=64, ffn_hidden=512,
                            default_cfg=1.25),
}
PRESETS["GPT-XL"].default_cfg = 1.75
PRESETS["GPT-XXL"].default_cfg = 1.75
PRESETS["GPT-3B"].head_dim = 100
PRESETS["GPT-3B"].ffn_hidden = find_multiple(int(8 * 3200 / 3), 256)


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of a preset (callers may mutate it)."""
    if name not in PRESETS:
        raise DartrtError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
