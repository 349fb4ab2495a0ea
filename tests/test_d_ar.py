"""D-AR's reference: the sampler's grid and update rule against hand-computed values, streaming against
from-scratch previews, causality of the conditions, determinism, and D-AR's GPT as the family's 1D model.

Facts checked here come from showlab/D-AR (tokenizer/tokenizer_image/diff_decoder.py and vq_model.py for
the decoder, autoregressive/models/gpt.py for the GPT); the expected numbers are computed by hand below,
not by dartrt's code.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dartrt.dar.config import ModelConfig
from dartrt.dar.d_ar import (
    FlowSampler,
    StreamingDecoder,
    build_tokenizer,
    decode,
    get_tokenizer_preset,
    make_noise,
    preview,
    step_token_ranges,
    time_grid,
)
from dartrt.dar.d_ar.layers import grid_rope
from dartrt.dar.d_ar.sampler import preview_from_scratch
from dartrt.dar.d_ar.velocity import timestep_features
from dartrt.dar.model import build_model
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.orders import make_order, positions_table

torch.set_num_threads(1)

TINY = get_tokenizer_preset("tiny")  # 16 tokens, 4 groups of 4, 4 steps, 32 px


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TINY, seed=0)


def _ids(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, TINY.codebook_size, (batch, TINY.num_tokens), generator=torch.Generator().manual_seed(seed))


# ---- the grid and the update rule ------------------------------------------------------------------------
def test_tokenizer_v1_time_grid_and_groups():
    """t = i/8 then 1, shifted by s = t / (t + 2(1 - t)) = t / (2 - t); step g reads tokens [32g, 32g + 32)."""
    cfg = get_tokenizer_preset("tokenizer_v1")
    want = [0.0, 1 / 15, 1 / 7, 3 / 13, 1 / 3, 5 / 11, 3 / 5, 7 / 9, 1.0]
    grid = time_grid(cfg)
    assert grid.dtype == torch.float32 and grid[-1].item() == 1.0
    assert torch.allclose(grid.double(), torch.tensor(want, dtype=torch.float64), atol=1e-7)
    assert step_token_ranges(cfg) == [(32 * g, 32 * g + 32) for g in range(8)]


def test_steps_map_to_groups_by_rounding_when_they_differ():
    """16 steps over 8 groups: step i reads group floor(i/2 + 1/2) (round half up), the last clamped."""
    cfg = dataclasses.replace(get_tokenizer_preset("tokenizer_v1"), denoising_steps=16)
    begins = [0, 32, 32, 64, 64, 96, 96, 128, 128, 160, 160, 192, 192, 224, 224, 224]
    assert step_token_ranges(cfg) == [(b, b + 32) for b in begins]


def test_euler_then_fixed_ab2_and_previews_by_hand():
    """A velocity stub returning v_i = (i + 1)·1 makes every step's arithmetic checkable by hand."""
    s = [0.0, 1 / 7, 1 / 3, 3 / 5, 1.0]  # tiny: 4 steps, t = i/4, shift 2
    calls = []

    def velocity(x, t, cond):
        calls.append((t.clone(), cond[0, 0, 0].item()))
        return torch.full_like(x, float(len(calls)))

    sampler = FlowSampler(velocity, torch.zeros(2, 3, 8, 8), TINY)
    x, v_prev, previews = 0.0, None, []
    for i in range(4):
        sampler.advance(torch.full((2, 4, 1), float(i)))
        v = i + 1.0
        d = v if v_prev is None else 1.5 * v - 0.5 * v_prev  # Euler first, then AB2 with fixed weights
        previews.append((x + (1 - s[i]) * d) / 0.6)  # straight to s = 1 from step i
        x, v_prev = x + (s[i + 1] - s[i]) * d, v
        assert math.isclose(sampler.preview()[0, 0, 0, 0].item(), previews[-1], rel_tol=1e-6)
    assert math.isclose(sampler.image()[1, 2, 7, 7].item(), x / 0.6, rel_tol=1e-6)
    assert previews[-1] == pytest.approx(x / 0.6, rel=1e-6)  # the last preview is the image
    assert [c for _, c in calls] == [0.0, 1.0, 2.0, 3.0]  # step i gets cond of step i
    for (t, _), want in zip(calls, s):
        assert t.shape == (2,) and torch.allclose(t, torch.full((2,), want), atol=1e-7)
    with pytest.raises(DartrtError, match="all 4 decoder steps have run"):
        sampler.advance(torch.zeros(2, 4, 1))


def test_time_embedding_and_rope_layout():
    """The time sinusoid is of 1000·s, cos then sin; 2D RoPE turns the first half of the pairs with the
    row and the second half with the column, ω_k = 10000^(-k/16) at head size 64."""
    feats = timestep_features(torch.tensor([0.5]), 8)
    freqs = [math.exp(-math.log(10000) * k / 4) for k in range(4)]
    want = [math.cos(500 * f) for f in freqs] + [math.sin(500 * f) for f in freqs]
    assert torch.allclose(feats[0].double(), torch.tensor(want, dtype=torch.float64), atol=2e-4)
    cos, sin = grid_rope(2, 3, 64, 10000.0)
    assert cos.shape == (6, 32)
    token = 1 * 3 + 2  # row 1, column 2 (row-major)
    for k in range(16):
        w = 10000 ** (-k / 16)
        assert math.isclose(cos[token, k].item(), math.cos(1 * w), abs_tol=1e-6)
        assert math.isclose(sin[token, 16 + k].item(), math.sin(2 * w), abs_tol=1e-6)


def test_patches_are_channel_major_like_the_public_rearrange():
    """'b c (h p1) (w p2) -> b (c p1 p2) h w' is what pixel_unshuffle computes (and pixel_shuffle undoes)."""
    x = torch.randn(2, 3, 16, 24)
    b, c, p = 2, 3, 8
    rearranged = x.reshape(b, c, 2, p, 3, p).permute(0, 1, 3, 5, 2, 4).reshape(b, c * p * p, 2, 3)
    assert torch.equal(F.pixel_unshuffle(x, p), rearranged)
    assert torch.equal(F.pixel_shuffle(rearranged, p), x)


def test_cross_attention_keys_carry_no_position(tokenizer):
    """Only the image queries are rotated: the velocity is invariant to the order of a group's conditions."""
    x, s = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.7])
    cond = torch.randn(2, 4, TINY.cond_dim)
    with torch.no_grad():
        v = tokenizer.velocity(x, s, cond)
        assert torch.allclose(tokenizer.velocity(x, s, cond[:, [2, 0, 3, 1]]), v, atol=1e-5, rtol=0)
        assert not torch.allclose(tokenizer.velocity(x, s.flip(0), cond), v, atol=1e-4)


# ---- streaming, previews, causality, determinism ---------------------------------------------------------
def test_streamed_previews_equal_the_public_from_scratch_previews(tokenizer):
    """Token by token through the conditions cache: every preview equals the public clip_steps = k decode
    (recomputed from scratch with k velocity calls), and the whole stream costs one call per step."""
    ids, noise = _ids(1), make_noise(TINY, 2, seed=3)
    counter = {"calls": 0}
    velocity = tokenizer.velocity

    def counted(x, s, cond):
        counter["calls"] += 1
        return velocity(x, s, cond)

    stream = StreamingDecoder(tokenizer, 2, noise)
    stream.sampler.velocity = counted
    ready = []
    for t in range(TINY.num_tokens):
        for k in stream.push(ids[:, t : t + 1]):
            ready.append(k)
            got = stream.preview()
            assert torch.allclose(got, preview(tokenizer, ids[:, : 4 * k], k, noise), atol=1e-5, rtol=0)
            assert torch.allclose(got, preview(tokenizer, ids, k, noise), atol=1e-5, rtol=0)
    assert ready == [1, 2, 3, 4] and counter["calls"] == 4
    assert torch.allclose(stream.image(), decode(tokenizer, ids, noise), atol=1e-5, rtol=0)
    assert torch.equal(stream.image(), stream.preview())


def test_sampler_state_gives_bitwise_the_from_scratch_previews(tokenizer):
    """With the same conditions, keeping (x, v_prev) is the public recomputation, to the bit."""
    ids, noise = _ids(2), make_noise(TINY, 2, seed=4)
    with torch.no_grad():
        cond = tokenizer.conditions(ids)
        ranges = step_token_ranges(TINY)
        sampler = FlowSampler(tokenizer.velocity, noise, TINY)
        for k in range(1, 5):
            sampler.advance(cond[:, ranges[k - 1][0] : ranges[k - 1][1]])
            scratch = preview_from_scratch(tokenizer.velocity, lambda i: cond[:, ranges[i][0] : ranges[i][1]],
                                           noise, TINY, k)
            assert torch.equal(sampler.preview(), scratch), k


@pytest.mark.parametrize("chunks", [[4, 4, 4, 4], [3, 5, 1, 7], [16]])
def test_streamed_conditions_match_the_whole_causal_pass(tokenizer, chunks):
    ids = _ids(5)
    stream = StreamingDecoder(tokenizer, 2, make_noise(TINY, 2))
    start = 0
    for n in chunks:
        stream.push(ids[:, start : start + n])
        start += n
    with torch.no_grad():
        whole = tokenizer.conditions(ids)
    assert torch.allclose(stream.cond, whole, atol=1e-5, rtol=0)
    assert stream.steps_done == 4


def test_conditions_and_previews_are_causal(tokenizer):
    """Changing the tokens after group g changes nothing up to group g, and does change what follows."""
    ids, noise = _ids(6), make_noise(TINY, 2, seed=7)
    with torch.no_grad():
        base = tokenizer.conditions(ids)
        for g in range(3):
            changed = ids.clone()
            changed[:, 4 * (g + 1) :] = (changed[:, 4 * (g + 1) :] + 1) % TINY.codebook_size
            cond = tokenizer.conditions(changed)
            assert torch.allclose(cond[:, : 4 * (g + 1)], base[:, : 4 * (g + 1)], atol=1e-6, rtol=0), g
            assert not torch.allclose(cond[:, 4 * (g + 1) :], base[:, 4 * (g + 1) :], atol=1e-3), g
            assert torch.allclose(preview(tokenizer, changed, g + 1, noise), preview(tokenizer, ids, g + 1, noise),
                                  atol=1e-6, rtol=0)


def test_decoding_is_deterministic_given_the_noise(tokenizer):
    ids = _ids(8)
    a = decode(tokenizer, ids, make_noise(TINY, 2, seed=11))
    assert a.shape == (2, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, decode(tokenizer, ids, make_noise(TINY, 2, seed=11)))
    assert torch.equal(a, decode(tokenizer, ids, seed=11))  # no noise given: drawn from the seed
    assert not torch.allclose(a, decode(tokenizer, ids, seed=12), atol=1e-3)
    # Rows are independent: each image depends on its own tokens and noise only.
    noise = make_noise(TINY, 2, seed=11)
    assert torch.allclose(decode(tokenizer, ids[1:], noise[1:]), a[1:], atol=1e-5, rtol=0)


def test_bad_preview_and_stream_input_get_one_line(tokenizer):
    ids, noise = _ids(9), make_noise(TINY, 2)
    for groups in (0, 5, -1, True, 2.0):
        with pytest.raises(DartrtError, match=r"preview group .* is out of range: use 1 to 4"):
            preview(tokenizer, ids, groups, noise)
    with pytest.raises(DartrtError, match="this needs 8 to 16"):
        preview(tokenizer, ids[:, :5], 2, noise)
    with pytest.raises(DartrtError, match=r"noise must be \[n, 3, H, W\]"):
        decode(tokenizer, ids, torch.zeros(2, 32, 32))
    with pytest.raises(DartrtError, match="noise holds 1 images for 2 token rows"):
        decode(tokenizer, ids, noise[:1])
    with pytest.raises(DartrtError, match=r"token ids must lie in \[0, 64\)"):
        decode(tokenizer, ids + 64, noise)
    stream = StreamingDecoder(tokenizer, 2, noise)
    with pytest.raises(DartrtError, match="no decoder step has run yet"):
        stream.preview()
    stream.push(ids[:, :3])
    with pytest.raises(DartrtError, match="only 0 of 4 decoder steps have run"):
        stream.image()
    with pytest.raises(DartrtError, match="exceed the 16 per image"):
        stream.push(ids)


# ---- the GPT: D-AR's is the family's 1D-RoPE decoder -------------------------------------------------------
def _public_gpt_logits(sd: dict, cls: torch.Tensor, toks: torch.Tensor, n_head: int) -> torch.Tensor:
    """D-AR's GPT forward written from autoregressive/models/gpt.py: precompute_freqs_cis_1d over the index
    (fp32 frequencies, the class token at position 0), interleaved rotary pairs, RMSNorm, SwiGLU."""
    h = torch.cat([sd["cls_embedding.embedding_table.weight"][cls][:, None], sd["tok_embeddings.weight"][toks]], 1)
    b, n, d = h.shape
    hd = d // n_head
    freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    angles = torch.outer(torch.arange(n), freqs)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def rotate(x):  # [B, N, H, hd]
        x0, x1 = x.reshape(b, n, n_head, hd // 2, 2).unbind(-1)
        return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).flatten(3)

    causal = torch.full((n, n), float("-inf")).triu(1)
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    for i in range(layers):
        p = f"layers.{i}."
        x = rms(h, sd[p + "attention_norm.weight"])
        q, k, v = (x @ sd[p + "attention.wqkv.weight"].T).split(d, -1)
        q, k, v = rotate(q.view(b, n, n_head, hd)), rotate(k.view(b, n, n_head, hd)), v.view(b, n, n_head, hd)
        att = ((q.transpose(1, 2) @ k.permute(0, 2, 3, 1)) / math.sqrt(hd) + causal).softmax(-1)
        h = h + (att @ v.transpose(1, 2)).transpose(1, 2).reshape(b, n, d) @ sd[p + "attention.wo.weight"].T
        x = rms(h, sd[p + "ffn_norm.weight"])
        ff = F.silu(x @ sd[p + "feed_forward.w1.weight"].T) * (x @ sd[p + "feed_forward.w3.weight"].T)
        h = h + ff @ sd[p + "feed_forward.w2.weight"].T
    return rms(h, sd["norm.weight"]) @ sd["output.weight"].T


def test_d_ar_gpt_is_the_family_1d_decoder():
    """Our Transformer with rope='1d', a learned embedding and the class prefix computes D-AR's GPT: no
    config switch is needed (the class token turns by the identity, positions are the index)."""
    cfg = ModelConfig(name="d-ar-tiny", family="d-ar", n_layer=2, d_model=64, n_head=4, vocab_size=64,
                      num_classes=10, grid_size=4, rope="1d", token_embedding="learned", adaln=False, order="raster")
    model = build_model(cfg, seed=3)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for key in sd:  # norms away from 1, so that they are exercised
        if key.endswith("norm.weight"):
            sd[key] = 1 + 0.3 * torch.randn_like(sd[key])
    model.load_state_dict(sd)
    cls = torch.tensor([3, 10])  # a class and the null class
    toks = torch.randint(0, 64, (2, 15), generator=torch.Generator().manual_seed(0))
    pos = torch.from_numpy(positions_table(make_order("raster", 4), 4, "1d"))
    with torch.no_grad():
        ours = model.forward_full(cls, toks, pos, torch.zeros(16, dtype=torch.long))
        theirs = _public_gpt_logits(sd, cls, toks, n_head=4)
    assert torch.allclose(ours, theirs, atol=2e-5, rtol=0), (ours - theirs).abs().max()
