"""D-AR's public checkpoints in, our format out: the importer, `dartrt convert d-ar`, and bad input.

The public layouts are written out here from the public code (showlab/D-AR: tokenizer_transformer.py,
diff_decoder.py, vq_model.py, autoregressive/models/gpt.py), independently of dartrt's modules: every
key the public ``VQModel`` and ``GPT`` hold, with its shape for a given config. Full-size layouts
(tokenizer_v1, GPT-L) are checked on the meta device (shapes only, no memory); real numbers go through a
tiny config in the same layout, saved the way the public trainers save (``model``/``ema``, the trainer's
``Config`` object, an ``argparse.Namespace``, optimizer state, ``_orig_mod.`` prefixes).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
from collections.abc import MutableMapping

import pytest
import torch
from click.testing import CliRunner

from dartrt.cli import main
from dartrt.dar.checkpoint import load_checkpoint
from dartrt.dar.d_ar import (
    decode,
    get_tokenizer_preset,
    import_gpt,
    import_tokenizer,
    load_d_ar_checkpoint,
    make_noise,
)
from dartrt.dar.vq import VQConfig, build_vq
from dartrt.runtime.errors import DartrtError

torch.set_num_threads(1)

# configs/tokenizer_v1.yaml, `model` section, verbatim.
TOKENIZER_V1 = {
    "encoder_patch_size": 16, "num_encoder_layers": 8, "num_decoder_layers": 8, "query_low_rank": True,
    "encoder_dim": 768, "decoder_dim": 768, "vq_dim": 8, "vq_codebook_size": 16384, "num_denoising_steps": 8,
    "num_query_groups": 8, "num_all_queries": 256, "queries_per_step": 32, "vq_enable": True,
    "diff_decoder": {"in_dim": 3, "out_dim": 3, "dim": 768, "cond_dim": 768, "patch_size": 8, "depth": 12,
                     "data_std": 0.6, "time_shift": 2, "mlp_head": False, "share_time_encoding": False},
}
# The same layout at toy widths (heads of 64 as the public code fixes), with a time shift of 3 so that a
# test can tell the stored config from the default.
TINY = {
    "encoder_patch_size": 8, "num_encoder_layers": 1, "num_decoder_layers": 2, "query_low_rank": True,
    "encoder_dim": 64, "decoder_dim": 128, "vq_dim": 4, "vq_codebook_size": 64, "num_denoising_steps": 4,
    "num_query_groups": 4, "num_all_queries": 16, "vq_enable": True, "sampling_resolution": 32,
    "diff_decoder": {"in_dim": 3, "out_dim": 3, "dim": 128, "cond_dim": 128, "patch_size": 8, "depth": 2,
                     "data_std": 0.6, "time_shift": 3, "mlp_head": False, "share_time_encoding": False},
}
DECODE_IGNORED = ("encoder_layers.", "patchify.", "query_embedding.", "query_linear.", "quant_in_conv.",
                  "quantize.codebook_used", "diff_decoder.net.repa_out.")


# ---- the public layouts ----------------------------------------------------------------------------------
def _attention(prefix: str, d: int, head: int = 64) -> dict[str, tuple]:
    out = {}
    for name in ("q", "k", "v", "proj"):
        out |= {f"{prefix}.{name}.weight": (d, d), f"{prefix}.{name}.bias": (d,)}
    for name in ("q_norm", "k_norm"):
        out |= {f"{prefix}.{name}.weight": (head,), f"{prefix}.{name}.bias": (head,)}
    return out


def _mlp(prefix: str, d: int) -> dict[str, tuple]:
    return {f"{prefix}.fc1.weight": (4 * d, d), f"{prefix}.fc1.bias": (4 * d,),
            f"{prefix}.fc2.weight": (d, 4 * d), f"{prefix}.fc2.bias": (d,)}


def _transformer_block(prefix: str, d: int) -> dict[str, tuple]:  # tokenizer_transformer.TransformerBlock
    out = _attention(f"{prefix}.attention", d) | _mlp(f"{prefix}.mlp", d)
    for name in ("norm1", "norm2"):
        out |= {f"{prefix}.{name}.weight": (d,), f"{prefix}.{name}.bias": (d,)}
    return out | {f"{prefix}.gate1": (d,), f"{prefix}.gate2": (d,)}


def _sit_block(prefix: str, d: int) -> dict[str, tuple]:  # diff_decoder.SiTBlock (its LayerNorm has no affine)
    out = _attention(f"{prefix}.attention", d) | _attention(f"{prefix}.cross_attn", d) | _mlp(f"{prefix}.mlp", d)
    out |= {f"{prefix}.adaLN_modulation.1.weight": (6 * d, d), f"{prefix}.adaLN_modulation.1.bias": (6 * d,)}
    for seq in ("time_embed.mlp", "cond_embed"):
        for i in (0, 2):
            out |= {f"{prefix}.{seq}.{i}.weight": (d, d), f"{prefix}.{seq}.{i}.bias": (d,)}
    return out


def public_tokenizer_shapes(m: dict) -> dict[str, tuple]:
    """Every key of the public VQModel(config['model']).state_dict(), with its shape."""
    enc, dec, vq, ps = m["encoder_dim"], m["decoder_dim"], m["vq_dim"], m["encoder_patch_size"]
    dd = m["diff_decoder"]
    dim, patch = dd["dim"], 3 * dd["patch_size"] ** 2
    out: dict[str, tuple] = {}
    for i in range(m["num_encoder_layers"]):
        out |= _transformer_block(f"encoder_layers.{i}", enc)
    for i in range(m["num_decoder_layers"]):
        out |= _transformer_block(f"decoder_layers.{i}", dec)
    out |= {"patchify.weight": (enc, 3, ps, ps), "patchify.bias": (enc,), "quant_in_conv.weight": (vq, enc, 1, 1),
            "quant_out_conv.weight": (dec, vq, 1, 1), "quantize.embedding.weight": (m["vq_codebook_size"], vq),
            "quantize.codebook_used": (65536,), "query_embedding.weight": (1024, 8),
            "query_linear.weight": (enc, 8), "query_linear.bias": (enc,), "decoder_embedding.weight": (1024, dec)}
    net = "diff_decoder.net"
    out |= {f"{net}.cond_mlp.weight": (dim, dd["cond_dim"]), f"{net}.cond_mlp.bias": (dim,),
            f"{net}.conv_in.weight": (dim, patch, 1, 1), f"{net}.conv_in.bias": (dim,),
            f"{net}.conv_out.weight": (patch, dim, 1, 1), f"{net}.conv_out.bias": (patch,)}
    for i in range(dd["depth"]):
        out |= _sit_block(f"{net}.blocks.{i}", dim)
    return out | {f"{net}.repa_out.0.weight": (2048, dim), f"{net}.repa_out.0.bias": (2048,),
                  f"{net}.repa_out.2.weight": (2048, 2048), f"{net}.repa_out.2.bias": (2048,),
                  f"{net}.repa_out.4.weight": (768, 2048), f"{net}.repa_out.4.bias": (768,)}


def public_gpt_shapes(n_layer: int, d: int, vocab: int = 16384, num_classes: int = 1000) -> dict[str, tuple]:
    """Every key of the public c2i GPT's state dict (class dropout > 0 adds the null-class row)."""
    ffn = int(2 * 4 * d / 3)
    ffn = ffn if ffn % 256 == 0 else ffn + 256 - ffn % 256
    out = {"cls_embedding.embedding_table.weight": (num_classes + 1, d), "tok_embeddings.weight": (vocab, d),
           "norm.weight": (d,), "output.weight": (vocab, d)}
    for i in range(n_layer):
        p = f"layers.{i}"
        out |= {f"{p}.attention.wqkv.weight": (3 * d, d), f"{p}.attention.wo.weight": (d, d),
                f"{p}.feed_forward.w1.weight": (ffn, d), f"{p}.feed_forward.w3.weight": (ffn, d),
                f"{p}.feed_forward.w2.weight": (d, ffn), f"{p}.attention_norm.weight": (d,),
                f"{p}.ffn_norm.weight": (d,)}
    return out


def meta_dict(shapes: dict[str, tuple], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: torch.empty(s, device="meta") for k, s in shapes.items()}


def random_dict(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * 0.05 for k, s in shapes.items()}


# ---- the public trainer's own config object, in a module of its own name -------------------------------
class _Config(MutableMapping):
    """Stands for showlab/D-AR's config_util.Config (a mapping over ``_data``). Unpickling it for real would
    call __setstate__, which records that it ran."""

    executed = False

    def __init__(self, data: dict) -> None:
        self._data = data

    def __getitem__(self, key):
        return self._data[key]

    def __setitem__(self, key, value):
        self._data[key] = value

    def __delitem__(self, key):
        del self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)

    def __setstate__(self, state):
        type(self).executed = True
        self.__dict__.update(state)


@pytest.fixture
def config_util(monkeypatch):
    module = types.ModuleType("config_util")
    _Config.__module__, _Config.__qualname__ = "config_util", "Config"
    module.Config = _Config
    _Config.executed = False
    monkeypatch.setitem(sys.modules, "config_util", module)
    return module


def tiny_tokenizer_checkpoint(config_util, seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """The public tokenizer trainer's checkpoint at tiny size; returns it and its `ema` weights."""
    shapes = public_tokenizer_shapes(TINY)
    ema, model = random_dict(shapes, seed), random_dict(shapes, seed + 100)
    ckpt = {"model": {f"_orig_mod.{k}": v for k, v in model.items()}, "ema": ema,
            "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]},
            "steps": 7, "args": argparse.Namespace(lr=2e-4, config="configs/tiny.yaml"),
            "config": config_util.Config({"model": TINY})}
    return ckpt, ema


def tiny_gpt_checkpoint(seed: int = 1, vocab: int = 64, n_layer: int = 2, d: int = 128) -> tuple[dict, dict, dict]:
    shapes = public_gpt_shapes(n_layer, d, vocab=vocab, num_classes=10)
    model, ema = random_dict(shapes, seed), random_dict(shapes, seed + 100)
    ckpt = {"model": {f"_orig_mod.{k}": v for k, v in model.items()}, "ema": ema, "steps": 3,
            "optimizer": {"state": {}, "param_groups": []}, "args": argparse.Namespace(gpt_model="GPT-B")}
    return ckpt, model, ema


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg


# ---- full size, shapes only ------------------------------------------------------------------------------
def test_tokenizer_v1_full_size_layout_imports():
    shapes = public_tokenizer_shapes(TOKENIZER_V1)
    assert 290e6 < sum(torch.Size(s).numel() for s in shapes.values()) < 310e6  # D-AR reports about 300M parameters
    ckpt = {"model": meta_dict(shapes, "_orig_mod."), "ema": meta_dict(shapes), "config": {"model": TOKENIZER_V1}}
    tok = import_tokenizer(ckpt)
    assert dataclasses.replace(tok.cfg, name="tokenizer_v1") == get_tokenizer_preset("tokenizer_v1")
    got = {k: tuple(v.shape) for k, v in tok.state_dict().items()}
    assert got == {k: s for k, s in shapes.items() if not k.startswith(DECODE_IGNORED)}
    # Without a stored config, the defaults are tokenizer_v1's.
    assert import_tokenizer({"ema": meta_dict(shapes)}).cfg == get_tokenizer_preset("tokenizer_v1")


def test_gpt_l_full_size_layout_imports():
    shapes = public_gpt_shapes(24, 1024)
    model, notes = import_gpt({"model": meta_dict(shapes, "_orig_mod.")}, "GPT-L", get_tokenizer_preset("tokenizer_v1"))
    cfg = model.cfg
    assert notes == []
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.head_dim, cfg.ffn_hidden) == (24, 1024, 16, 64, 2816)
    assert (cfg.vocab_size, cfg.num_classes, cfg.grid_size, cfg.seq_len) == (16384, 1000, 16, 256)
    assert (cfg.family, cfg.rope, cfg.token_embedding, cfg.adaln) == ("d-ar", "1d", "learned", False)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    # 1D RoPE: index positions, the class token (index 0) turned by the identity.
    assert model.rope_cos.shape[0] == 256 and torch.equal(model.rope_cos[0], torch.ones(32))
    assert torch.equal(model.rope_sin[0], torch.zeros(32))


def test_gpt_depth_and_widths_come_from_the_state_dict():
    """A GPT-XL-sized state dict named GPT-L: 36 layers, width 1280 and 20 heads of 64, with notes."""
    model, notes = import_gpt({"model": meta_dict(public_gpt_shapes(36, 1280))}, "GPT-L",
                              get_tokenizer_preset("tokenizer_v1"))
    assert (model.cfg.n_layer, model.cfg.d_model, model.cfg.n_head, model.cfg.ffn_hidden) == (36, 1280, 20, 3584)
    assert any(n.startswith("layers 36 (the GPT-L preset has 24)") for n in notes), notes
    assert any(n.startswith("width 1280") for n in notes) and any(n.startswith("heads 20") for n in notes)


# ---- real numbers through the tiny layout ------------------------------------------------------------------
def test_tokenizer_round_trip_prefers_ema_reads_config_object_without_running_it(tmp_path, config_util):
    ckpt, ema = tiny_tokenizer_checkpoint(config_util)
    path = tmp_path / "tokenizer.pt"
    torch.save(ckpt, path)
    # The file names the trainer's classes as the public one does (so torch's safe loader alone refuses it).
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) == {"config_util.Config",
                                                                                    "argparse.Namespace"}
    tok = import_tokenizer(path)
    assert not _Config.executed  # the checkpoint's Config class was never instantiated or set up
    assert tok.cfg.time_shift == 3.0 and tok.cfg.cond_layers == 2 and tok.cfg.tokens_per_step == 4
    assert tok.cfg.image_size == 256  # the public sampler decodes at max(sampling_resolution, 256)
    for key, value in tok.state_dict().items():
        assert torch.equal(value, ema[key]), key
    # The `model` entry when asked, or when there is no `ema`; prefixes stripped.
    model = import_tokenizer(path, weights="model").state_dict()
    del ckpt["ema"]
    only_model = import_tokenizer(ckpt).state_dict()
    for key in model:
        assert torch.equal(model[key], only_model[key]) and not torch.equal(model[key], ema[key]), key


def test_gpt_round_trip_takes_model_by_default_and_ema_on_request(tmp_path):
    ckpt, model_sd, ema_sd = tiny_gpt_checkpoint()
    path = tmp_path / "gpt.pt"
    torch.save(ckpt, path)
    tok_cfg = get_tokenizer_preset("tiny")
    for weights, want in (("model", model_sd), ("ema", ema_sd)):
        model, notes = import_gpt(path, "GPT-B", tok_cfg, weights=weights)
        assert (model.cfg.n_layer, model.cfg.d_model, model.cfg.n_head, model.cfg.grid_size) == (2, 128, 2, 4)
        assert notes and model.cfg.rope == "1d"
        for key, value in model.state_dict().items():
            assert torch.equal(value, want[key]), (weights, key)


def test_convert_cli_end_to_end(tmp_path, config_util):
    tok_ckpt, ema = tiny_tokenizer_checkpoint(config_util)
    gpt_ckpt, gpt_sd, _ = tiny_gpt_checkpoint()
    torch.save(tok_ckpt, tmp_path / "TOK.pt")
    torch.save(gpt_ckpt, tmp_path / "GPT.pt")
    out = tmp_path / "d-ar"
    result = CliRunner().invoke(main, ["convert", "d-ar", "--tokenizer", str(tmp_path / "TOK.pt"), "--gpt",
                                       str(tmp_path / "GPT.pt"), "--model", "GPT-B", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: GPT layers 2 (the GPT-B preset has 12)" in result.output and f"wrote {out}" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.safetensors"]
    loaded = load_d_ar_checkpoint(out)
    for key, value in loaded.tokenizer.state_dict().items():
        assert torch.equal(value, ema[key]), key
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, gpt_sd[key]), key
    assert loaded.tokenizer.cfg == import_tokenizer(tmp_path / "TOK.pt").cfg
    # The converted tokenizer decodes (at its 256 px) exactly as the imported one does.
    ids = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(0))
    noise = make_noise(loaded.tokenizer.cfg, 1, seed=1, size=64)
    assert torch.equal(decode(loaded.tokenizer, ids, noise), decode(import_tokenizer(tmp_path / "TOK.pt"), ids, noise))
    # The family's other loader refuses it in one line rather than failing on a missing VQ.
    with pytest.raises(DartrtError) as exc:
        load_checkpoint(out)
    _one_line(exc, "is a D-AR checkpoint")


# ---- bad input: one line, exit status 2 ------------------------------------------------------------------
def _convert(tmp_path, tok, gpt, *extra):
    return CliRunner().invoke(main, ["convert", "d-ar", "--tokenizer", str(tok), "--gpt", str(gpt), *extra,
                                     "-o", str(tmp_path / "out")])


def test_bad_inputs_get_one_line_and_exit_2(tmp_path, config_util):
    tok_ckpt, _ = tiny_tokenizer_checkpoint(config_util)
    torch.save(tok_ckpt, tmp_path / "TOK.pt")
    torch.save(tiny_gpt_checkpoint()[0], tmp_path / "GPT.pt")
    torch.save(tiny_gpt_checkpoint(vocab=80)[0], tmp_path / "GPT80.pt")
    vq = build_vq(VQConfig(codebook_size=64, codebook_dim=4, z_channels=8, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                           norm_groups=4)).state_dict()
    torch.save({"model": vq}, tmp_path / "vq_ds16_c2i.pt")
    missing = dict(tok_ckpt, ema={k: v for k, v in tok_ckpt["ema"].items()
                                  if k != "diff_decoder.net.blocks.1.cross_attn.k.weight"})
    torch.save(missing, tmp_path / "missing.pt")
    bad_shape = dict(tok_ckpt, ema=tok_ckpt["ema"] | {"decoder_embedding.weight": torch.zeros(1024, 96)})
    torch.save(bad_shape, tmp_path / "shape.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02not a checkpoint" * 50)
    cases = [
        (("TOK.pt", "GPT80.pt"), "the tokenizer's codebook has 64 entries but the GPT's vocabulary"),
        (("vq_ds16_c2i.pt", "GPT.pt"), "vq_ds16_c2i.pt: this checkpoint is a LlamaGen VQ tokenizer, not a D-AR"),
        (("GPT.pt", "TOK.pt"), "GPT.pt: this checkpoint is a GPT (AR model), not a D-AR tokenizer (did you swap"),
        (("TOK.pt", "vq_ds16_c2i.pt"), "this checkpoint is a LlamaGen VQ tokenizer, not a GPT"),
        (("missing.pt", "GPT.pt"), "missing.pt: missing key 'diff_decoder.net.blocks.1.cross_attn.k.weight'"),
        (("shape.pt", "GPT.pt"), "shape mismatch for 'decoder_embedding.weight': checkpoint [1024,96]"),
        (("garbage.pt", "GPT.pt"), "garbage.pt: cannot read"),
        (("nope.pt", "GPT.pt"), "nope.pt: file not found"),
    ]
    for (tok, gpt), needle in cases:
        result = _convert(tmp_path, tmp_path / tok, tmp_path / gpt, "--model", "GPT-B")
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], (tok, gpt, result.output)
        assert not (tmp_path / "out").exists()
    result = _convert(tmp_path, tmp_path / "TOK.pt", tmp_path / "GPT.pt", "--model", "DAR-B")
    assert result.exit_code == 2 and "--model DAR-B is not a GPT preset" in result.output
    result = _convert(tmp_path, tmp_path / "TOK.pt", tmp_path / "GPT.pt", "--model", "GPT-B", "--gpt-weights", "ema")
    assert result.exit_code == 0, result.output


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_pickled_code_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt, _, _ = tiny_gpt_checkpoint()
    torch.save(ckpt | {"args": _RunsCode()}, tmp_path / "GPT.pt")
    with pytest.raises(DartrtError) as exc:
        import_gpt(tmp_path / "GPT.pt", "GPT-B", get_tokenizer_preset("tiny"))
    _one_line(exc, "GPT.pt: cannot read")
    assert not (tmp_path / "pwned").exists()


def test_unsupported_public_options_are_named(config_util):
    shapes = meta_dict(public_tokenizer_shapes(TINY))
    for key, value, needle in (("vq_enable", False, "continuous"), ("output_resolution", 128, "output_resolution")):
        with pytest.raises(DartrtError) as exc:
            import_tokenizer({"ema": shapes, "config": {"model": TINY | {key: value}}})
        _one_line(exc, needle)
    diff = TINY["diff_decoder"] | {"share_time_encoding": True}
    with pytest.raises(DartrtError) as exc:
        import_tokenizer({"ema": shapes, "config": config_util.Config({"model": TINY | {"diff_decoder": diff}})})
    _one_line(exc, "share_time_encoding")
    with pytest.raises(DartrtError) as exc:
        import_tokenizer({"ema": shapes, "config": argparse.Namespace(x=1)})
    _one_line(exc, "stored config is a Namespace")


def test_tokenizer_preset_round_trips_through_dict():
    cfg = get_tokenizer_preset("tiny")
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
    with pytest.raises(DartrtError):
        type(cfg).from_dict(cfg.to_dict() | {"bogus": 1})
