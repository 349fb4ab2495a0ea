"""Tests for dar.vq (LlamaGen VQ architecture) and a smoke test of the demo trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dartrt.dar.demo.train_vq import TrainVQOptions, _restart_dead_codes, _spherical_kmeans, train_vq
from dartrt.dar.vq import (
    VQ_PRESETS,
    VQConfig,
    VQDecoder,
    build_vq,
    build_vq_decoder,
    count_params,
    to_uint8,
)

torch.set_num_threads(1)

# Small enough to run in milliseconds, but with every structural feature: 3 levels, nin_shortcut
# (ch_mult changes), attention at the lowest level.
TINY = VQConfig(
    codebook_size=32, codebook_dim=4, z_channels=8, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=4
)


def test_vq16_param_count_on_meta() -> None:
    dec = build_vq_decoder("VQ-16", device="meta")
    n_decoder = count_params(dec.decoder)
    n_path = count_params(dec)
    print(f"VQ-16 decoder {n_decoder / 1e6:.3f}M, decode path (+codebook, post_quant_conv) {n_path / 1e6:.3f}M")
    assert abs(n_decoder - 42.45e6) <= 0.005 * 42.45e6
    assert abs(n_path - 42.45e6) <= 0.005 * 42.45e6
    assert all(p.device.type == "meta" for p in dec.parameters())


def test_vq16_key_layout_matches_llamagen() -> None:
    keys = set(build_vq("VQ-16", device="meta").state_dict())
    for key in [
        "quantize.embedding.weight",
        "quant_conv.weight",
        "post_quant_conv.weight",
        "encoder.conv_in.weight",
        "encoder.conv_blocks.4.attn.1.q.weight",
        "encoder.conv_blocks.3.downsample.conv.weight",
        "encoder.mid.1.proj_out.weight",
        "decoder.conv_in.weight",
        "decoder.mid.0.conv1.weight",
        "decoder.mid.1.norm.weight",
        "decoder.mid.2.norm2.bias",
        "decoder.conv_blocks.0.attn.2.proj_out.weight",
        "decoder.conv_blocks.0.res.2.conv2.weight",
        "decoder.conv_blocks.1.res.0.nin_shortcut.weight",
        "decoder.conv_blocks.3.res.0.nin_shortcut.weight",
        "decoder.conv_blocks.3.upsample.conv.weight",
        "decoder.norm_out.weight",
        "decoder.conv_out.bias",
    ]:
        assert key in keys, key
    assert not any(k.startswith("decoder.conv_blocks.1.attn") for k in keys)
    assert not any(k.startswith("decoder.conv_blocks.4.upsample") for k in keys)
    assert not any(k.startswith("encoder.conv_blocks.3.attn") for k in keys)
    nin = sorted(k for k in keys if "nin_shortcut.weight" in k and k.startswith("decoder."))
    assert nin == ["decoder.conv_blocks.1.res.0.nin_shortcut.weight", "decoder.conv_blocks.3.res.0.nin_shortcut.weight"]
    dec_keys = set(build_vq_decoder("VQ-16", device="meta").state_dict())
    assert dec_keys == {k for k in keys if not k.startswith(("encoder.", "quant_conv."))}


def test_vq16_decode_shape_on_meta() -> None:
    dec = build_vq_decoder("VQ-16", device="meta")
    ids = torch.zeros(2, 16, 16, dtype=torch.long, device="meta")
    out = dec.decode_indices(ids)
    assert out.shape == (2, 3, 256, 256)


def test_demo_preset_shapes() -> None:
    cfg = VQ_PRESETS["VQ-demo"]
    assert cfg.downsample == 4 and cfg.grid_size(64) == 16
    n_dec = count_params(build_vq_decoder(cfg, device="meta"))
    print(f"VQ-demo decode path {n_dec / 1e6:.3f}M params")
    assert n_dec <= 1.5e6
    torch.manual_seed(0)
    model = build_vq(cfg).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    ids = model.encode_to_indices(x)
    assert ids.shape == (2, 16, 16) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < cfg.codebook_size
    with torch.no_grad():
        out = model.decode_indices(ids)
    assert out.shape == (2, 3, 64, 64)


def test_encode_is_cosine_nearest_and_decoder_shares_weights() -> None:
    torch.manual_seed(0)
    model = build_vq(TINY).eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    ids = model.encode_to_indices(x)
    with torch.no_grad():
        z = model.quant_conv(model.encoder(x)).permute(0, 2, 3, 1)
        cb = model.quantize.embedding.weight
        zn = torch.nn.functional.normalize(z, dim=-1).reshape(-1, 4)
        dist = torch.cdist(zn, torch.nn.functional.normalize(cb, dim=-1))
    assert torch.equal(ids.flatten(), dist.argmin(-1))

    dec = VQDecoder.from_vqmodel(model)
    assert dec.decoder is model.decoder and dec.quantize is model.quantize
    with torch.no_grad():
        ref = model.decode_indices(ids)
        model.quantize.embedding.weight.mul_(3.0)  # scale must not matter: rows are normalised
        torch.testing.assert_close(dec.decode_indices(ids), ref)
        dec.prenormalize_()
        assert dec.codebook_prenormalized
        torch.testing.assert_close(dec.decode_indices(ids), ref)


def test_forward_straight_through_and_losses() -> None:
    torch.manual_seed(0)
    model = build_vq(TINY).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    recon, terms = model(x)
    assert recon.shape == x.shape
    assert terms.indices.shape == (2, 4, 4)
    assert terms.z.shape == (32, 4)
    # commit = beta * codebook loss in value (same squared distance, different stop-gradients)
    torch.testing.assert_close(terms.commit_loss, 0.25 * terms.codebook_loss)
    (recon.abs().mean() + terms.total).backward()
    assert model.encoder.conv_in.weight.grad is not None  # gradient crossed the quantiser
    assert model.quantize.embedding.weight.grad is not None  # codebook loss reaches the codes


def test_to_uint8_endpoints() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = to_uint8(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 5, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_config_dict_round_trip() -> None:
    cfg = VQ_PRESETS["VQ-demo"]
    d = cfg.to_dict()
    assert d["ch_mult"] == list(cfg.ch_mult)
    assert VQConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        VQConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match="norm_groups"):
        VQConfig(ch=10, norm_groups=4)
    with pytest.raises(ValueError, match="encoder must be one of"):
        VQConfig(encoder="vit")


def test_patch_encoder_is_local() -> None:
    """A token of the patch encoder depends on its own 4x4 pixels only, so equal patches get equal codes
    whatever surrounds them (the property the demo tokenizer is chosen for)."""
    cfg = VQConfig(**{**TINY.to_dict(), "encoder": "patch"})
    torch.manual_seed(0)
    model = build_vq(cfg).eval()
    f = cfg.downsample
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    y = x.clone()
    y[..., f:, :] = torch.rand_like(y[..., f:, :]) * 2 - 1  # everything but the first row of patches
    with torch.no_grad():
        zx, zy = model._encode_latent(x), model._encode_latent(y)
    assert torch.equal(zx[:, 0], zy[:, 0])  # first token row unchanged, bit for bit
    assert not torch.allclose(zx[:, 1:], zy[:, 1:])
    flat = torch.full((1, 3, 16, 16), 0.3)
    flat[..., :f, :f] = -0.7  # one odd patch; all the other flat patches must share a code
    ids = model.encode_to_indices(flat)[0].flatten()
    assert ids[1:].unique().numel() == 1
    # the decode path does not depend on the encoder kind: same keys as the llamagen tokenizer
    assert set(build_vq(cfg, device="meta").decode_path().state_dict()) == set(
        build_vq(TINY, device="meta").decode_path().state_dict())


def _blocks(step: int, n: int) -> np.ndarray:
    """Flat-colour rectangles on a flat background (16×16 images for the smoke test)."""
    rng = np.random.default_rng(step)
    imgs = np.empty((n, 16, 16, 3), np.uint8)
    for i in range(n):
        imgs[i] = rng.integers(0, 256, 3)
        r0, c0 = rng.integers(0, 10, 2)
        imgs[i, r0 : r0 + 6, c0 : c0 + 6] = rng.integers(0, 256, 3)
    return imgs


def test_train_vq_smoke() -> None:
    # 2 autoencoder warm-up steps, k-means codebook init, then 6 quantised steps with restarts.
    opts = TrainVQOptions(ae_warmup=0.25, warmup_steps=2, restart_every=3, eval_batches=1)
    model, metrics = train_vq(_blocks, TINY, steps=8, batch_size=4, lr=2e-3, seed=0, progress=False, options=opts)
    assert not model.training
    for key in ("psnr_db", "codebook_usage", "train_codebook_usage", "loss", "restarted_codes", "steps_per_s"):
        assert key in metrics
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["psnr_db"])
    assert 0.0 < metrics["codebook_usage"] <= 1.0
    norms = model.quantize.embedding.weight.norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-2, rtol=0)


def test_kmeans_and_dead_code_restart() -> None:
    gen = torch.Generator().manual_seed(0)
    # Four tight clusters on the sphere: k-means with k=4 must find all four.
    centres = torch.nn.functional.normalize(torch.eye(4), dim=-1)
    z = torch.nn.functional.normalize(centres.repeat(50, 1) + 0.01 * torch.randn(200, 4, generator=gen), dim=-1)
    found = _spherical_kmeans(z, 4, 10, gen)
    assert (found @ centres.t()).max(dim=0).values.min() > 0.99

    model = build_vq(TINY)
    opt = torch.optim.Adam(model.parameters())
    counts = torch.zeros(TINY.codebook_size, dtype=torch.long)
    counts[:5] = 1
    before = model.quantize.embedding.weight.detach().clone()
    n = _restart_dead_codes(model, counts, z, opt, gen)
    after = model.quantize.embedding.weight.detach()
    assert n == TINY.codebook_size - 5
    assert torch.equal(after[:5], before[:5])
    assert (after[5:] @ centres.t()).max(dim=-1).values.min() > 0.95  # moved onto the data
