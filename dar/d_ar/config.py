"""The decode path of D-AR's sequential diffusion tokenizer, as one dataclass.

Field names are ours; ``from_public_config`` maps the public trainer's ``model`` section
(``configs/tokenizer_v1.yaml`` in showlab/D-AR) onto them. Constants the public code fixes in source rather
than in its config (head width 64, MLP ratio 4, 1024 learned positions) are fields here too, so that the small
test and demo tokenizers can change them; a public checkpoint always gets the public values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dartrt.runtime.errors import DartrtError

PREDICTIONS = ("velocity", "data")
# 1 − s is clamped here when a data prediction is turned into a velocity (s → 1 would divide by zero).
MIN_ONE_MINUS_S = 0.05


@dataclass
class TokenizerConfig:
    """Everything needed to turn D-AR token ids into pixels (the encoder is not part of it)."""

    name: str = "custom"
    # Codebook: ids -> L2-normalised vectors.
    codebook_size: int = 16384
    codebook_dim: int = 8
    # Tokens and groups: step i of the ODE is conditioned on one slice of tokens_per_step tokens.
    num_tokens: int = 256
    num_groups: int = 8
    tokens_per_step: int = 0  # 0 -> num_tokens // num_groups (the public default)
    denoising_steps: int = 8
    # Conditions transformer (causal, learned absolute positions, QK LayerNorm, residual gates).
    cond_dim: int = 768
    cond_layers: int = 8
    max_tokens: int = 1024  # rows of decoder_embedding; the public code fixes 1024
    # Velocity network (pixel space, patchified).
    dim: int = 768
    depth: int = 12
    patch_size: int = 8
    channels: int = 3
    # Shared by both transformers. The public code fixes head_dim 64 and the MLP ratio 4.
    head_dim: int = 64
    mlp_ratio: int = 4
    rope_base: float = 10000.0
    # Sampler.
    data_std: float = 0.6
    time_shift: float = 2.0
    image_size: int = 256
    # What the network's last layer predicts: "velocity" (the public model: v directly) or "data" (ours, for
    # narrow demo widths: the clean image x̂, turned into v = (x̂ − x) / (1 − s) inside the forward, so the
    # graph still returns the velocity). A network narrower than a patch (dim < 3·p²) cannot carry the noise a
    # velocity contains through its patch embedding; predicting the image avoids that (Li & He, "Back to
    # Basics: Let Denoising Generative Models Denoise", 2025). The demo's 128 < 192 measured it: see docs/d-ar.md.
    prediction: str = "velocity"

    def __post_init__(self) -> None:
        if self.tokens_per_step == 0:
            self.tokens_per_step = self.num_tokens // max(self.num_groups, 1)
        positive = ("codebook_size", "codebook_dim", "num_tokens", "num_groups", "tokens_per_step",
                    "denoising_steps", "cond_dim", "max_tokens", "dim", "depth", "patch_size", "channels",
                    "head_dim", "mlp_ratio", "image_size")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise DartrtError(f"tokenizer config: {name} must be >= 1, got {getattr(self, name)}")
        if self.cond_layers < 0:
            raise DartrtError(f"tokenizer config: cond_layers must be >= 0, got {self.cond_layers}")
        for name in ("cond_dim", "dim"):
            if getattr(self, name) % self.head_dim:
                raise DartrtError(f"tokenizer config: {name} {getattr(self, name)} is not a multiple of "
                                  f"head_dim {self.head_dim}")
        if self.head_dim % 4:
            raise DartrtError(f"tokenizer config: head_dim {self.head_dim} must split into two even RoPE axes")
        if self.num_tokens > self.max_tokens:
            raise DartrtError(f"tokenizer config: {self.num_tokens} tokens exceed the {self.max_tokens} positions")
        if self.tokens_per_step > self.num_tokens:
            raise DartrtError(f"tokenizer config: tokens_per_step {self.tokens_per_step} exceeds num_tokens "
                              f"{self.num_tokens}")
        if self.image_size % self.patch_size:
            raise DartrtError(f"tokenizer config: image size {self.image_size} is not a multiple of the patch "
                              f"size {self.patch_size}")
        if self.prediction not in PREDICTIONS:
            raise DartrtError(f"tokenizer config: prediction must be one of {', '.join(PREDICTIONS)}, "
                              f"got {self.prediction!r}")
        for name in ("data_std", "time_shift", "rope_base"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise DartrtError(f"tokenizer config: {name} must be a positive number, got {value}")

    @property
    def patch_dim(self) -> int:
        """Channels of one patch: the velocity network's conv_in input."""
        return self.channels * self.patch_size**2

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenizerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DartrtError(f"tokenizer config: unknown field {unknown[0]!r}")
        return cls(**dict(data))


TOKENIZER_PRESETS: dict[str, TokenizerConfig] = {
    # showlab/D-AR configs/tokenizer_v1.yaml (the released D-AR-tokenizer_v1.pt, 256 px).
    "tokenizer_v1": TokenizerConfig(name="tokenizer_v1"),
    # Tests: the public layout at toy widths (two heads of 64 in both transformers, 16 tokens in 4 groups,
    # 32 px images = 16 image tokens). Every module the public code builds is present.
    "tiny": TokenizerConfig(name="tiny", codebook_size=64, codebook_dim=4, num_tokens=16, num_groups=4,
                            denoising_steps=4, cond_dim=128, cond_layers=2, dim=128, depth=2, image_size=32),
    # The D-AR demo's tokenizer (`dartrt train-demo-dar`, docs/d-ar.md): 64×64 shapes, the public 256 tokens in 8
    # groups of 32 (the any-order DAR demo's 16×16 VQ codes, `dar.d_ar.demo.encoder`), its codebook 512 × 8,
    # widths of 128 (two heads of 64), patch 8 (64 image tokens), data_std 0.6 (the shapes' pixel std is 0.62),
    # the public time shift 2, and the image predicted (width 128 < a patch's 192 values: see prediction).
    "demo": TokenizerConfig(name="demo", codebook_size=512, codebook_dim=8, num_tokens=256, num_groups=8,
                            denoising_steps=8, cond_dim=128, cond_layers=2, max_tokens=256, dim=128, depth=4,
                            patch_size=8, image_size=64, data_std=0.6, time_shift=2.0, prediction="data"),
}


def get_tokenizer_preset(name: str) -> TokenizerConfig:
    if name not in TOKENIZER_PRESETS:
        raise DartrtError(f"unknown tokenizer preset {name!r}: choose from {', '.join(TOKENIZER_PRESETS)}")
    return dataclasses.replace(TOKENIZER_PRESETS[name])


# Public options our decode path does not implement; each must hold the value given here.
_REQUIRED = {
    "vq_enable": (True, "a continuous (vq_enable: false) tokenizer has no token ids"),
    "output_resolution": (0, "resizing the output (output_resolution) is not supported"),
}
_REQUIRED_DIFF = {
    "mlp_head": (False, "the mlp_head variant of the velocity network is not supported"),
    "share_time_encoding": (False, "a shared time embedding (share_time_encoding) is not supported"),
}


def from_public_config(model: Mapping[str, Any], name: str = "checkpoint",
                       config_name: str = "tokenizer") -> TokenizerConfig:
    """Our config from the public trainer's ``config['model']`` (plain values, as in tokenizer_v1.yaml).

    Mirrors what the public code reads, defaults included: ``queries_per_step`` defaults to
    ``num_all_queries // num_query_groups``, ``rope_base_len`` to 10000, ``data_std`` and ``time_shift`` to 1.
    The image size is the one the public sampler decodes at, ``max(sampling_resolution, 256)``
    (``decode_code`` is called with its default 256). Encoder-only keys are ignored. ``name`` labels errors;
    ``config_name`` becomes the config's name.
    """
    if not isinstance(model, Mapping):
        raise DartrtError(f"{name}: config['model'] is {type(model).__name__}, not a mapping")
    diff = model.get("diff_decoder")
    if not isinstance(diff, Mapping):
        raise DartrtError(f"{name}: config has no 'diff_decoder' section (not a D-AR tokenizer config)")
    for section, required in ((model, _REQUIRED), (diff, _REQUIRED_DIFF)):
        for key, (want, why) in required.items():
            if key in section and section[key] != want:
                raise DartrtError(f"{name}: {why}")
    try:
        if int(diff["in_dim"]) != 3 or int(diff["out_dim"]) != 3:
            raise DartrtError(f"{name}: only 3-channel images are supported (in_dim {diff['in_dim']}, "
                              f"out_dim {diff['out_dim']})")
        if int(diff["cond_dim"]) != int(model["decoder_dim"]):
            raise DartrtError(f"{name}: diff_decoder.cond_dim {diff['cond_dim']} differs from decoder_dim "
                              f"{model['decoder_dim']}")
        tokens = int(model["num_all_queries"])
        groups = int(model["num_query_groups"])
        return TokenizerConfig(
            name=config_name,
            codebook_size=int(model["vq_codebook_size"]),
            codebook_dim=int(model["vq_dim"]),
            num_tokens=tokens,
            num_groups=groups,
            tokens_per_step=int(model.get("queries_per_step", tokens // groups)),
            denoising_steps=int(model["num_denoising_steps"]),
            cond_dim=int(model["decoder_dim"]),
            cond_layers=int(model["num_decoder_layers"]),
            dim=int(diff["dim"]),
            depth=int(diff["depth"]),
            patch_size=int(diff["patch_size"]),
            rope_base=float(diff.get("rope_base_len", 10000)),
            data_std=float(diff.get("data_std", 1.0)),
            time_shift=float(diff.get("time_shift", 1.0)),
            image_size=max(int(model.get("sampling_resolution", 256)), 256),
        )
    except KeyError as exc:
        raise DartrtError(f"{name}: tokenizer config lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise DartrtError(f"{name}: bad tokenizer config ({exc})") from None
