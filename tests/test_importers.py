"""Tests for dar.importers: LlamaGen checkpoint layouts in, strict one-line errors out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dartrt.dar.importers import (
    DartrtError,
    clean_state_dict,
    import_llamagen_gpt,
    import_llamagen_vq,
    load_checked,
)
from dartrt.dar.vq import VQConfig, build_vq

torch.set_num_threads(1)

TINY = VQConfig(
    codebook_size=32, codebook_dim=4, z_channels=8, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=4
)


def _llamagen_vq_checkpoint(seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """A full VQ state dict in LlamaGen's DDP+compile layout, and the decode-path tensors it holds."""
    torch.manual_seed(seed)
    full = {k: torch.randn_like(v) for k, v in build_vq(TINY).state_dict().items()}
    decode = {k: v for k, v in full.items() if not k.startswith(("encoder.", "quant_conv."))}
    raw: dict[str, torch.Tensor] = {}
    for i, (k, v) in enumerate(full.items()):
        raw[f"_orig_mod.{k}" if i % 2 else k] = v  # half the keys carry the torch.compile prefix
    raw["quantize.codebook_used"] = torch.zeros(65536)
    raw["freqs_cis"] = torch.zeros(3, 2)
    return {"model": raw, "steps": 7}, decode


class TinyLlamaGenGPT(nn.Module):
    """Stand-in with LlamaGen's c2i GPT parameter names (the real model lives elsewhere)."""

    def __init__(self, num_classes: int = 5, vocab: int = 16, d: int = 8, n_layers: int = 2) -> None:
        super().__init__()
        self.cls_embedding = nn.Module()
        self.cls_embedding.embedding_table = nn.Embedding(num_classes + 1, d)
        self.tok_embeddings = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            layer = nn.Module()
            layer.attention = nn.Module()
            layer.attention.wqkv = nn.Linear(d, 3 * d, bias=False)
            layer.attention.wo = nn.Linear(d, d, bias=False)
            layer.feed_forward = nn.Module()
            layer.feed_forward.w1 = nn.Linear(d, 16, bias=False)
            layer.feed_forward.w3 = nn.Linear(d, 16, bias=False)
            layer.feed_forward.w2 = nn.Linear(16, d, bias=False)
            layer.attention_norm = nn.Module()
            layer.attention_norm.weight = nn.Parameter(torch.ones(d))
            layer.ffn_norm = nn.Module()
            layer.ffn_norm.weight = nn.Parameter(torch.ones(d))
            self.layers.append(layer)
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(d))
        self.output = nn.Linear(d, vocab, bias=False)
        # LlamaGen keeps its RoPE table as a buffer; ours is non-persistent, so never required.
        self.register_buffer("freqs_cis", torch.zeros(4, 2), persistent=False)


def _assert_single_line(exc: pytest.ExceptionInfo[DartrtError], *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg


def test_clean_state_dict_variants() -> None:
    t = torch.zeros(1)
    assert clean_state_dict({"model": {"_orig_mod.a": t, "freqs_cis": t}}) == {"a": t}
    assert clean_state_dict({"module._orig_mod.b": t}) == {"b": t}  # FSDP-style raw dict, stacked prefixes
    assert clean_state_dict({"module": {"c": t}}) == {"c": t}
    with pytest.raises(DartrtError, match="duplicate key 'a'"):
        clean_state_dict({"a": t, "_orig_mod.a": t})


def test_vq_import_round_trip(tmp_path: Path) -> None:
    ckpt, decode = _llamagen_vq_checkpoint()
    path = tmp_path / "vq_ds16_c2i.pt"
    torch.save(ckpt, path)
    dec = import_llamagen_vq(path, TINY)
    got = dec.state_dict()
    assert set(got) == set(decode)
    for key, value in decode.items():
        assert torch.equal(got[key], value), key
    assert not dec.training
    out = dec.decode_indices(torch.zeros(1, 4, 4, dtype=torch.long))
    assert out.shape == (1, 3, 16, 16)


def test_vq_import_from_dict() -> None:
    ckpt, decode = _llamagen_vq_checkpoint(seed=1)
    dec = import_llamagen_vq(ckpt, TINY)
    assert torch.equal(dec.state_dict()["decoder.conv_out.weight"], decode["decoder.conv_out.weight"])


def test_vq_missing_key(tmp_path: Path) -> None:
    ckpt, _ = _llamagen_vq_checkpoint()
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.endswith("decoder.conv_out.weight")}
    path = tmp_path / "VQ.pt"
    torch.save(ckpt, path)
    with pytest.raises(DartrtError) as exc:
        import_llamagen_vq(path, TINY)
    _assert_single_line(exc, "VQ.pt", "missing key 'decoder.conv_out.weight'")


def test_vq_unexpected_key(tmp_path: Path) -> None:
    ckpt, _ = _llamagen_vq_checkpoint()
    ckpt["model"]["foo"] = torch.zeros(2)
    path = tmp_path / "VQ.pt"
    torch.save(ckpt, path)
    with pytest.raises(DartrtError) as exc:
        import_llamagen_vq(path, TINY)
    _assert_single_line(exc, "VQ.pt", "unexpected key 'foo'")


def test_vq_shape_mismatch(tmp_path: Path) -> None:
    ckpt, _ = _llamagen_vq_checkpoint()
    ckpt["model"]["quantize.embedding.weight"] = torch.zeros(32, 5)
    path = tmp_path / "VQ.pt"
    torch.save(ckpt, path)
    with pytest.raises(DartrtError) as exc:
        import_llamagen_vq(path, TINY)
    _assert_single_line(exc, "shape mismatch for 'quantize.embedding.weight'", "checkpoint [32,5] vs model [32,4]")


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    with pytest.raises(DartrtError) as exc:
        import_llamagen_vq(path, TINY)
    _assert_single_line(exc, "broken.pt")
    with pytest.raises(DartrtError) as exc:
        import_llamagen_gpt(path, TinyLlamaGenGPT())
    _assert_single_line(exc, "broken.pt")


def test_missing_file_and_non_dict(tmp_path: Path) -> None:
    with pytest.raises(DartrtError) as exc:
        import_llamagen_vq(tmp_path / "nope.pt", TINY)
    _assert_single_line(exc, "nope.pt")
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(DartrtError) as exc:
        import_llamagen_vq(path, TINY)
    _assert_single_line(exc, "list.pt", "expected a dict")


def test_gpt_import_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = {k: torch.randn_like(v) for k, v in TinyLlamaGenGPT().state_dict().items()}
    assert "cls_embedding.embedding_table.weight" in src and "layers.1.attention.wqkv.weight" in src
    path = tmp_path / "c2i_B_256.pt"
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in src.items()} | {"freqs_cis": torch.zeros(4, 2)}}, path)
    model = import_llamagen_gpt(path, TinyLlamaGenGPT())
    for key, value in model.state_dict().items():
        assert torch.equal(value, src[key]), key
    # FSDP checkpoints are the raw dict
    torch.save(src, path)
    model = import_llamagen_gpt(path, TinyLlamaGenGPT())
    assert torch.equal(model.output.weight, src["output.weight"])


def test_gpt_errors(tmp_path: Path) -> None:
    src = dict(TinyLlamaGenGPT().state_dict())
    path = tmp_path / "gpt.pt"
    bad = {k: v for k, v in src.items() if k != "norm.weight"}
    torch.save({"model": bad}, path)
    with pytest.raises(DartrtError) as exc:
        import_llamagen_gpt(path, TinyLlamaGenGPT())
    _assert_single_line(exc, "gpt.pt", "missing key 'norm.weight'")
    with pytest.raises(DartrtError) as exc:
        import_llamagen_gpt(src | {"layers.9.ffn_norm.weight": torch.ones(8)}, TinyLlamaGenGPT())
    _assert_single_line(exc, "unexpected key 'layers.9.ffn_norm.weight'")
    with pytest.raises(DartrtError) as exc:
        import_llamagen_gpt(src | {"tok_embeddings.weight": torch.zeros(17, 8)}, TinyLlamaGenGPT())
    _assert_single_line(exc, "shape mismatch for 'tok_embeddings.weight'", "[17,8] vs model [16,8]")


def test_load_checked_on_meta_model() -> None:
    src = dict(TinyLlamaGenGPT().state_dict())
    with torch.device("meta"):
        model = TinyLlamaGenGPT()
    load_checked(model, src, "state dict")
    assert model.output.weight.device.type == "cpu"
    assert torch.equal(model.output.weight, src["output.weight"])
