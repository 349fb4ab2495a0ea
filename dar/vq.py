"""LlamaGen's VQ tokenizer (VQ-16 family) in PyTorch, with configurable widths.

Why a re-implementation rather than a vendored copy: the exporter needs a decode path that traces to a
clean ONNX graph (no Python-side data-dependent control flow), the demo needs a small trainable
tokenizer, and the importer needs the *exact* LlamaGen parameter names so that the public
``vq_ds16_c2i.pt`` loads with strict key/shape checks. The module tree below therefore mirrors
LlamaGen's ``tokenizer/tokenizer_image/vq_model.py`` attribute for attribute (``encoder.conv_blocks.{i}``,
``decoder.mid.{0,1,2}``, ``quantize.embedding`` ...), while widths, depth and GroupNorm groups are
config fields so the same code also serves tiny test and demo tokenizers.

The codebook is L2-normalised (LlamaGen's ``codebook_l2_norm=True``): encoding picks the nearest code
by cosine similarity, and decoding looks up the *normalised* row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VQ_PRESETS",
    "VQConfig",
    "VQDecoder",
    "VQEncoder",
    "VQLossTerms",
    "VQModel",
    "build_vq",
    "build_vq_decoder",
    "count_params",
    "to_uint8",
]


ENCODERS = ("llamagen", "patch")


@dataclass
class VQConfig:
    """Shape of a LlamaGen-style VQ tokenizer. Defaults are LlamaGen's VQ-16 (``vq_ds16_c2i.pt``)."""

    codebook_size: int = 16384
    codebook_dim: int = 8
    z_channels: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    # Encoder levels hold num_res_blocks res blocks; decoder levels hold num_res_blocks + 1 (LlamaGen).
    num_res_blocks: int = 2
    norm_groups: int = 32
    in_channels: int = 3
    out_channels: int = 3
    # Weight of the commitment term (LlamaGen's commit_loss_beta); only used in training.
    commit_beta: float = 0.25
    # "llamagen" (conv + attention, LlamaGen's keys) or "patch" (each token sees only its own pixels).
    # Training only: export and import use the decode path, which is the same for both.
    encoder: str = "llamagen"

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        if not self.ch_mult:
            raise ValueError("VQConfig.ch_mult must have at least one level")
        if self.num_res_blocks < 1:
            raise ValueError("VQConfig.num_res_blocks must be >= 1 (the encoder widens inside its res blocks)")
        if self.encoder not in ENCODERS:
            raise ValueError(f"VQConfig.encoder must be one of {ENCODERS}, got {self.encoder!r}")
        for width in sorted({self.ch * m for m in self.ch_mult}):
            if width % self.norm_groups:
                raise ValueError(f"VQConfig: channel width {width} is not divisible by norm_groups={self.norm_groups}")

    @property
    def downsample(self) -> int:
        """Pixels per token side: one ×2 resampling between consecutive levels."""
        return 2 ** (len(self.ch_mult) - 1)

    def grid_size(self, image_size: int) -> int:
        """Token grid side G for a square image of side ``image_size``."""
        if image_size % self.downsample:
            raise ValueError(f"image size {image_size} is not a multiple of the downsample {self.downsample}")
        return image_size // self.downsample

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists) for manifests and config.json."""
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error so a typo cannot pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"VQConfig: unknown keys {unknown}")
        return cls(**d)


VQ_PRESETS: dict[str, VQConfig] = {
    # LlamaGen VQ-16: 16× downsample, 256 px -> 16×16 grid; `decoder.*` 42.45M params (the spec's figure),
    # 42.58M with the codebook and post_quant_conv.
    "VQ-16": VQConfig(),
    # Bundled demo: 64 px -> 16×16 grid (4× downsample), decoder widths 16/32/64 with two res blocks per
    # level, GroupNorm(4): decode path 0.50M params, ~0.6 GFLOP per decoded image. The encoder is the
    # strictly local patch encoder (see PatchEncoder), which also trains 3x faster than the conv encoder.
    "VQ-demo": VQConfig(
        codebook_size=512,
        codebook_dim=8,
        z_channels=64,
        ch=16,
        ch_mult=(1, 2, 4),
        num_res_blocks=1,
        norm_groups=4,
        encoder="patch",
    ),
}


# --------------------------------------------------------------------------------------------------
# Building blocks (names match LlamaGen so state-dict keys match)
# --------------------------------------------------------------------------------------------------


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN, swish, conv3×3, GN, swish, conv3×3, plus a skip (1×1 ``nin_shortcut`` when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1×1 q/k/v/proj_out convs and a residual.

    Written with plain matmul + softmax (not SDPA) so it exports to portable ONNX ops.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).transpose(1, 2)  # [b, hw, c]
        k = k.reshape(b, c, hh * ww)  # [b, c, hw]
        w = torch.softmax(torch.matmul(q, k) * (c**-0.5), dim=-1)  # [b, hw(q), hw(k)]
        v = v.reshape(b, c, hh * ww)  # [b, c, hw]
        out = torch.matmul(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    """Nearest ×2 then a 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    """Asymmetric (0,1,0,1) zero pad then a stride-2 3×3 conv, as in taming/LlamaGen."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class _Level(nn.Module):
    """One resolution level: ``res``, ``attn`` (possibly empty) and an optional resampler.

    A plain container so keys read ``conv_blocks.{i}.res.{j}``, ``.attn.{j}``, ``.upsample``/``.downsample``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()


class Encoder(nn.Module):
    """Image [B,3,H,W] -> latent [B,z,H/f,W/f]; attention only at the last (lowest-res) level and mid."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        g = cfg.norm_groups
        self.num_res_blocks = cfg.num_res_blocks
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, stride=1, padding=1)
        in_ch_mult = (1, *cfg.ch_mult)
        self.conv_blocks = nn.ModuleList()
        block_in = cfg.ch
        for i in range(n):
            level = _Level()
            block_in = cfg.ch * in_ch_mult[i]
            block_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks):
                level.res.append(ResnetBlock(block_in, block_out, g))
                block_in = block_out
                if i == n - 1:
                    level.attn.append(AttnBlock(block_in, g))
            if i != n - 1:
                level.downsample = Downsample(block_in)
            self.conv_blocks.append(level)
        self.mid = nn.ModuleList(
            [ResnetBlock(block_in, block_in, g), AttnBlock(block_in, g), ResnetBlock(block_in, block_in, g)]
        )
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            for j, res in enumerate(level.res):
                h = res(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(_swish(self.norm_out(h)))


class PatchEncoder(nn.Module):
    """Image [B,3,H,W] -> latent [B,z,H/f,W/f], each latent a function of its own f×f patch only.

    Why: LlamaGen's encoder sees the whole image (its mid block has attention), so a token's code also
    records what lies around it and equal patches need not get equal codes (on the demo's shapes one corner
    token took 134 codes over 2,000 images); the AR model then spends capacity on that context noise. A
    strictly local encoder maps equal patches to equal codes (flat patches: one code per colour); the
    decoder, which keeps its receptive field, still uses neighbouring tokens to place edges.
    """

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        f, hidden = cfg.downsample, 2 * cfg.ch * cfg.ch_mult[-1]
        self.patch = nn.Conv2d(cfg.in_channels, hidden, kernel_size=f, stride=f)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Conv2d(hidden, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, hidden, 1),
                                 nn.SiLU(), nn.Conv2d(hidden, cfg.z_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.patch(x))


class Decoder(nn.Module):
    """Latent [B,z,G,G] -> image [B,3,G·f,G·f]; ``conv_blocks.0`` is the lowest resolution and has attention."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        g = cfg.norm_groups
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.ModuleList(
            [ResnetBlock(block_in, block_in, g), AttnBlock(block_in, g), ResnetBlock(block_in, block_in, g)]
        )
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(n)):
            level = _Level()
            block_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.res.append(ResnetBlock(block_in, block_out, g))
                block_in = block_out
                if i == n - 1:
                    level.attn.append(AttnBlock(block_in, g))
            if i != 0:
                level.upsample = Upsample(block_in)
            self.conv_blocks.append(level)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            for j, res in enumerate(level.res):
                h = res(h)
                if len(level.attn) > 0:
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Holds the codebook as ``quantize.embedding``.

    LlamaGen also registers a ``codebook_used`` buffer for logging; we do not (the trainer tracks usage
    itself), and the importer drops that key.
    """

    def __init__(self, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, codebook_dim)
        if self.embedding.weight.device.type != "meta":
            with torch.no_grad():
                self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, p=2, dim=-1))

    def normalized_codebook(self) -> torch.Tensor:
        """The L2-normalised codebook [V, C] (what both encode and decode use)."""
        return F.normalize(self.embedding.weight, p=2, dim=-1)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices of the nearest codes by cosine for rows of ``z`` [N, C] -> [N]."""
        zn = F.normalize(z, p=2, dim=-1)
        return torch.argmax(zn @ self.normalized_codebook().t(), dim=-1)


# --------------------------------------------------------------------------------------------------
# Public models
# --------------------------------------------------------------------------------------------------


class VQDecoder(nn.Module):
    """Decode path only: ``quantize.embedding`` + ``post_quant_conv`` + ``decoder`` (LlamaGen key names).

    This is the module that gets exported to ONNX. ``decode_indices`` is straight-line tensor code: a
    gather with ``F.embedding``, a transpose and convolutions. Call :meth:`prenormalize_` before export
    so the graph holds the already-normalised codebook and does a bare gather (spec: "pre-normalise it
    in the export").
    """

    def __init__(
        self,
        config: VQConfig,
        *,
        quantize: VectorQuantizer | None = None,
        post_quant_conv: nn.Conv2d | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.quantize = quantize if quantize is not None else VectorQuantizer(config.codebook_size, config.codebook_dim)
        self.post_quant_conv = (
            post_quant_conv if post_quant_conv is not None else nn.Conv2d(config.codebook_dim, config.z_channels, 1)
        )
        self.decoder = decoder if decoder is not None else Decoder(config)
        # Static (not data-dependent) switch: True once the stored codebook rows are unit-norm.
        self.codebook_prenormalized = False

    @classmethod
    def from_vqmodel(cls, model: VQModel) -> VQDecoder:
        """A decoder that *shares* modules (and so weights) with ``model``."""
        return cls(model.config, quantize=model.quantize, post_quant_conv=model.post_quant_conv, decoder=model.decoder)

    @torch.no_grad()
    def prenormalize_(self) -> VQDecoder:
        """L2-normalise the codebook rows in place so decode is a bare gather. Idempotent.

        Mutates the weights: on a decoder shared with a VQModel this changes the model's raw codebook
        too (harmless for inference; encode normalises anyway).
        """
        w = self.quantize.embedding.weight
        w.copy_(F.normalize(w, p=2, dim=-1))
        self.codebook_prenormalized = True
        return self

    def codebook(self) -> torch.Tensor:
        """Codebook rows as used for decoding (normalised)."""
        if self.codebook_prenormalized:
            return self.quantize.embedding.weight
        return self.quantize.normalized_codebook()

    def decode_indices(self, ids: torch.Tensor) -> torch.Tensor:
        """Token grid ``ids`` [B,G,G] int64 -> image [B,3,G·f,G·f] float, roughly in [-1, 1]."""
        z = F.embedding(ids, self.codebook())  # [B,G,G,C]
        z = z.permute(0, 3, 1, 2)  # NCHW
        return self.decoder(self.post_quant_conv(z))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decode_indices(ids)


class VQEncoder(nn.Module):
    """Encode path: ``encoder`` + ``quant_conv`` + the codebook (``quantize``, shared with the decoder).

    For editing (docs/oar.md): an image becomes the token grid an any-order model continues. A checkpoint
    stores its weights in ``vq_encoder.safetensors`` (``encoder.*``, ``quant_conv.*``; the codebook is the
    decoder's), and the exporter writes it as the ``vq_encoder`` graph. ``encode_indices`` is straight-line
    tensor code (convolutions, a normalisation, a matmul, an argmax), so it exports to a clean graph.
    """

    def __init__(self, config: VQConfig, *, encoder: nn.Module | None = None, quant_conv: nn.Conv2d | None = None,
                 quantize: VectorQuantizer | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else (
            PatchEncoder(config) if config.encoder == "patch" else Encoder(config))
        self.quant_conv = quant_conv if quant_conv is not None else nn.Conv2d(config.z_channels, config.codebook_dim, 1)
        self.quantize = quantize if quantize is not None else VectorQuantizer(config.codebook_size, config.codebook_dim)

    @classmethod
    def from_vqmodel(cls, model: VQModel) -> VQEncoder:
        """An encoder that *shares* modules (and so weights) with ``model``."""
        return cls(model.config, encoder=model.encoder, quant_conv=model.quant_conv, quantize=model.quantize)

    def weights(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores for it: the encoder and quant_conv (the codebook is the decoder's)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("quantize.")}

    def encode_indices(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] float in [-1, 1] -> code ids [B,G,G] int64 (nearest code by cosine)."""
        z = F.normalize(self.quant_conv(self.encoder(images)).permute(0, 2, 3, 1), p=2, dim=-1)
        return torch.argmax(z @ self.quantize.normalized_codebook().t(), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_indices(images)


@dataclass
class VQLossTerms:
    """Training-time outputs of :meth:`VQModel.forward` besides the reconstruction."""

    codebook_loss: torch.Tensor  # ||sg(z) - e||²: moves codes toward encodings
    commit_loss: torch.Tensor  # beta·||z - sg(e)||²: keeps encodings near their codes
    indices: torch.Tensor  # [B,G,G] chosen codes
    z: torch.Tensor = field(repr=False)  # [B·G·G, C] detached, L2-normalised encodings (for code restarts)

    @property
    def total(self) -> torch.Tensor:
        return self.codebook_loss + self.commit_loss


class VQModel(nn.Module):
    """Full tokenizer: encoder + quant_conv + quantize + post_quant_conv + decoder."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = PatchEncoder(config) if config.encoder == "patch" else Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.codebook_size, config.codebook_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_dim, config.z_channels, 1)

    def decode_path(self) -> VQDecoder:
        """The decode path as a :class:`VQDecoder` sharing this model's weights."""
        return VQDecoder.from_vqmodel(self)

    def _encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [-1,1] -> pre-quantisation latent rows [B,G,G,C]."""
        return self.quant_conv(self.encoder(images)).permute(0, 2, 3, 1)

    @torch.no_grad()
    def encode_to_indices(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] float in [-1,1] -> code ids [B,G,G] int64 (nearest code by cosine)."""
        z = self._encode_latent(images)
        b, g1, g2, c = z.shape
        return self.quantize.nearest(z.reshape(-1, c)).reshape(b, g1, g2)

    def decode_indices(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B,G,G] -> images [B,3,H,W]; same computation as :meth:`VQDecoder.decode_indices`."""
        return self.decode_path().decode_indices(ids)

    def forward(self, images: torch.Tensor, quantize: bool = True) -> tuple[torch.Tensor, VQLossTerms]:
        """Reconstruct with a straight-through estimator; returns (reconstruction, loss terms).

        As in LlamaGen with an l2-norm codebook, both z and the codes are normalised before the
        losses and the straight-through step, so the decoder always sees unit-norm vectors.
        ``quantize=False`` feeds the normalised z itself to the decoder (an autoencoder warm-up:
        from a random init, quantising at once collapses onto a few codes and barely trains); the
        loss terms and indices are still computed.
        """
        z = self._encode_latent(images)
        b, g1, g2, c = z.shape
        zn = F.normalize(z, p=2, dim=-1)
        codebook = self.quantize.normalized_codebook()
        flat = zn.reshape(-1, c)
        with torch.no_grad():
            idx = torch.argmax(flat.detach() @ codebook.detach().t(), dim=-1)
        zq = F.embedding(idx, codebook).reshape(b, g1, g2, c)
        codebook_loss = torch.mean((zq - zn.detach()) ** 2)
        commit_loss = self.config.commit_beta * torch.mean((zq.detach() - zn) ** 2)
        zq_st = zn + (zq - zn).detach() if quantize else zn
        recon = self.decoder(self.post_quant_conv(zq_st.permute(0, 3, 1, 2)))
        terms = VQLossTerms(
            codebook_loss=codebook_loss,
            commit_loss=commit_loss,
            indices=idx.reshape(b, g1, g2),
            z=flat.detach(),
        )
        return recon, terms


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Decoder output [B,3,H,W] in ~[-1,1] -> uint8 [B,H,W,3] via clamp(127.5·x + 128, 0, 255).

    The +128 (not +127.5) with truncating cast is LlamaGen's rounding; the numpy runtime mirrors it.
    """
    return torch.clamp(127.5 * x + 128.0, 0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _resolve(config: VQConfig | str) -> VQConfig:
    if isinstance(config, str):
        if config not in VQ_PRESETS:
            raise ValueError(f"unknown VQ preset {config!r}; known: {sorted(VQ_PRESETS)}")
        return replace(VQ_PRESETS[config])
    return config


def build_vq(config: VQConfig | str, device: str | torch.device = "cpu") -> VQModel:
    """Build a full :class:`VQModel`; ``device="meta"`` allocates nothing (for shape/param counts)."""
    with torch.device(device):
        return VQModel(_resolve(config))


def build_vq_decoder(config: VQConfig | str, device: str | torch.device = "cpu") -> VQDecoder:
    """Build a stand-alone :class:`VQDecoder` (what the importer fills and the exporter traces)."""
    with torch.device(device):
        return VQDecoder(_resolve(config))


def count_params(module: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())
