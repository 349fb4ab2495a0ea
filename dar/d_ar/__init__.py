"""D-AR (Diffusion via Autoregressive models, arXiv 2505.23660; public code showlab/D-AR) in PyTorch.

D-AR's AR model is the family's decoder with 1D RoPE (``dar.model.Transformer``, ``rope="1d"``). What this
package adds is the tokenizer's decode path, which turns the 256 tokens into pixels by diffusion one group
at a time: the causal conditions transformer, the velocity network, the Euler/AB2 sampler with its
previews and streaming, the importer of the public checkpoints, and our converted-checkpoint format.
"""

from .checkpoint import DARCheckpoint, convert_d_ar, load_d_ar_checkpoint, save_d_ar_checkpoint
from .config import TOKENIZER_PRESETS, TokenizerConfig, from_public_config, get_tokenizer_preset
from .decode import StreamingDecoder, decode, preview
from .importer import gpt_config_from_state_dict, identify, import_gpt, import_tokenizer
from .sampler import FlowSampler, make_noise, step_token_ranges, time_grid
from .tokenizer import DARTokenizer, build_tokenizer

__all__ = [
    "DARCheckpoint",
    "DARTokenizer",
    "FlowSampler",
    "StreamingDecoder",
    "TOKENIZER_PRESETS",
    "TokenizerConfig",
    "build_tokenizer",
    "convert_d_ar",
    "decode",
    "from_public_config",
    "get_tokenizer_preset",
    "gpt_config_from_state_dict",
    "identify",
    "import_gpt",
    "import_tokenizer",
    "load_d_ar_checkpoint",
    "make_noise",
    "preview",
    "save_d_ar_checkpoint",
    "step_token_ranges",
    "time_grid",
]
