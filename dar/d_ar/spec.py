"""The ``d_ar`` manifest entry of a tokenizer, and the runtime's `DARSpec` built from it.

The exporter writes this entry into a package; the torch reference builds its `DARSpec` from the very same
entry, so the reference and every package decode with the numbers one function wrote (the runtime never
recomputes the grid from a formula of its own).
"""

from __future__ import annotations

from dartrt.runtime.d_ar_spec import FAMILY, DARSpec

from ..config import ModelConfig
from .config import TokenizerConfig
from .sampler import AB2_CURRENT, AB2_PREVIOUS, step_token_ranges, time_grid

PREVIEW_RULE = ("after group k: x_(k-1) + (s_steps - s_(k-1)) * d_(k-1), d the step's Euler/AB2 direction; "
                "no velocity call (the public clip_steps=k image)")


def d_ar_manifest_entry(cfg: TokenizerConfig) -> dict:
    """The decoder's sampler and shapes, written out: groups, the token range of every step, the shifted time
    grid as float32 values (exact in JSON), AB2's coefficients, data_std, the image and the conditions cache."""
    return {
        "tokenizer": cfg.to_dict(),
        "codebook_size": cfg.codebook_size,
        "num_tokens": cfg.num_tokens,
        "num_groups": cfg.num_groups,
        "tokens_per_step": cfg.tokens_per_step,
        "denoising_steps": cfg.denoising_steps,
        "cond_dim": cfg.cond_dim,
        "image": {"channels": cfg.channels, "height": cfg.image_size, "width": cfg.image_size},
        "cond_cache": {"layers": cfg.cond_layers, "heads": cfg.cond_dim // cfg.head_dim,
                       "head_dim": cfg.head_dim, "max_len": cfg.num_tokens, "dtype": "float32",
                       "update": "in place: bind present.{i}.* to the buffer of past_key_values.{i}.*"},
        "sampler": {
            "method": "adams2", "first_step": "euler", "ab2": [AB2_CURRENT, AB2_PREVIOUS],
            "time_shift": cfg.time_shift, "data_std": cfg.data_std,
            "time_grid": [float(v) for v in time_grid(cfg).tolist()],
            "step_tokens": [list(r) for r in step_token_ranges(cfg)],
            "noise": "x_0 [n, channels, height, width] float32; the image is x_steps / data_std",
            "preview": PREVIEW_RULE,
        },
    }


def spec_of(gpt: ModelConfig, cfg: TokenizerConfig) -> DARSpec:
    """The `DARSpec` a package exported from this pair would carry."""
    data = {"family": FAMILY, "model": gpt.to_dict(), "image_size": cfg.image_size, "d_ar": d_ar_manifest_entry(cfg)}
    return DARSpec.from_manifest(data, f"D-AR pair {gpt.name} + {cfg.name}")
