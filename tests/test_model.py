"""The torch reference: KV-cache decoding against one causal pass, RoPE properties, preset sizes."""

import numpy as np
import pytest
import torch

from dartrt.dar.config import PRESETS, get_preset
from dartrt.dar.model import build_model
from dartrt.dar.rope import apply_rope, gather_cos_sin, rope_tables
from dartrt.runtime.orders import direction_ids, make_order, positions_table

torch.set_num_threads(2)


def sequence_inputs(cfg, order_name=None):
    order = make_order(order_name or cfg.order, cfg.grid_size)
    pos = torch.from_numpy(positions_table(order, cfg.grid_size, cfg.rope))
    return pos, torch.from_numpy(direction_ids(order))


@pytest.mark.parametrize("preset", ["tiny-dar", "tiny-llamagen", "tiny-1d"])
def test_kv_cache_decoding_equals_full_causal_forward(preset):
    """Prefill + one decode per index, and one chunked decode, against a no-cache causal pass
    (AdaLN computed per token there, gathered from the table here). fp32 max-abs <= 1e-5."""
    cfg = get_preset(preset)
    model = build_model(cfg, seed=1)
    pos, dirs = sequence_inputs(cfg)
    n, nc = cfg.seq_len, cfg.num_classes
    cls = torch.tensor([3, 7, nc, nc])  # a CFG batch: cond rows, then null rows
    toks = torch.randint(0, cfg.vocab_size, (4, n - 1), generator=torch.Generator().manual_seed(0))
    rows_pos, rows_dirs = pos.expand(4, -1, -1), dirs.expand(4, -1)  # the step graphs take them per row
    with torch.no_grad():
        full = model.forward_full(cls, toks, pos, dirs)
        caches = model.new_cache(4)
        zero = torch.zeros(4, dtype=torch.long)
        logits, caches, mod = model.prefill(cls[:, None], rows_pos[:, :1], rows_dirs[:, :1], zero, caches)
        steps = [logits]
        for t in range(1, n):
            logits, caches = model.decode(toks[:, t - 1:t], rows_pos[:, t:t + 1], rows_dirs[:, t:t + 1],
                                          torch.full((4,), t), caches, mod)
            steps.append(logits)
        stepwise = torch.cat(steps, 1)
        caches2 = model.new_cache(4)
        l0, caches2, mod2 = model.prefill(cls[:, None], rows_pos[:, :1], rows_dirs[:, :1], zero, caches2)
        l1, _ = model.decode(toks, rows_pos[:, 1:], rows_dirs[:, 1:], torch.ones(4, dtype=torch.long), caches2,
                             mod2)
        chunked = torch.cat([l0, l1], 1)
    err_step = (full - stepwise).abs().max().item()
    err_chunk = (full - chunked).abs().max().item()
    print(f"{preset}: step-wise max-abs {err_step:.2e}, chunked {err_chunk:.2e}")
    assert full.abs().max() > 0.1  # not a trivial zero output
    assert err_step <= 1e-5 and err_chunk <= 1e-5


def test_cache_write_lands_in_per_row_slots():
    cfg = get_preset("tiny-dar")
    model = build_model(cfg)
    pos, dirs = sequence_inputs(cfg)
    caches = model.new_cache(2)
    with torch.no_grad():
        model.decode(torch.tensor([[1], [2]]), pos[5:6].expand(2, -1, -1), dirs[5:6].expand(2, -1),
                     torch.tensor([5, 9]), caches, model.modulation_table(torch.tensor([0, 1])))
    written = caches[0][0].abs().sum(dim=(1, 3))  # [B, T]
    assert written[0].nonzero().flatten().tolist() == [5]
    assert written[1].nonzero().flatten().tolist() == [9]


@pytest.mark.parametrize("rope", ["1d", "2d", "4d"])
def test_rope_scores_depend_only_on_position_differences(rope):
    cfg = get_preset({"1d": "tiny-1d", "2d": "tiny-llamagen", "4d": "tiny-dar"}[rope])
    cos_t, sin_t = rope_tables(cfg)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, cfg.head_dim, generator=g), torch.randn(1, 1, 1, cfg.head_dim, generator=g)

    def score(pq, pk):
        cq, sq = gather_cos_sin(cos_t, sin_t, torch.tensor([pq]), rope)
        ck, sk = gather_cos_sin(cos_t, sin_t, torch.tensor([pk]), rope)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    width = 4 if rope == "1d" else {"2d": 2, "4d": 4}[rope]
    rng = np.random.default_rng(0)
    for _ in range(10):
        a = rng.integers(0, 4, size=4) * (np.arange(4) < width)
        b = rng.integers(0, 4, size=4) * (np.arange(4) < width)
        shift = rng.integers(0, 3, size=4) * (np.arange(4) < width)
        if rope == "1d":
            a, b, shift = a * [1, 0, 0, 0], b * [1, 0, 0, 0], shift * [1, 0, 0, 0]
        assert score(a.tolist(), b.tolist()) == pytest.approx(score((a + shift).tolist(), (b + shift).tolist()),
                                                              abs=1e-5)
    # ...and they do depend on the difference.
    base = [1, 1, 1, 1] if rope != "1d" else [1, 0, 0, 0]
    other = [3, 1, 1, 1] if rope != "1d" else [3, 0, 0, 0]
    assert abs(score(base, base) - score(base, other)) > 1e-3


def test_rope_class_rows():
    llamagen = get_preset("tiny-llamagen")
    cos, sin = rope_tables(llamagen)
    g = llamagen.grid_size
    assert (cos[g] == 0).all() and (sin[g] == 0).all()
    # LlamaGen's class token: its q and k are zeroed, exactly as its released freqs_cis does.
    cq, sq = gather_cos_sin(cos, sin, torch.tensor([[g, g, 0, 0]]), "2d")
    assert apply_rope(torch.randn(1, 1, 1, llamagen.head_dim), cq, sq).abs().max() == 0
    # DAR: identity on the two current chunks, the real next cell on the other two.
    dar = get_preset("tiny-dar")
    cos, sin = rope_tables(dar)
    x = torch.randn(1, 1, 1, dar.head_dim)
    cq, sq = gather_cos_sin(cos, sin, torch.tensor([[g, g, 0, 3]]), "4d")
    y = apply_rope(x, cq, sq)
    half = dar.head_dim // 2
    assert torch.allclose(y[..., :half], x[..., :half])
    assert not torch.allclose(y[..., half:], x[..., half:])


def test_llamagen_rope_table_matches_llamagen_formula():
    """precompute_freqs_cis_2d from LlamaGen: row angles on the first D/4 pairs, column on the next."""
    cfg = get_preset("GPT-B")
    cos, sin = rope_tables(cfg)
    half = cfg.head_dim // 2
    freqs = 1.0 / (cfg.rope_base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(16).float(), freqs)
    assert torch.allclose(cos[:16], torch.cos(angles), atol=1e-6)
    assert torch.allclose(sin[:16], torch.sin(angles), atol=1e-6)


def count(name):
    return sum(p.numel() for p in build_model(get_preset(name), "meta").parameters())


def test_preset_parameter_counts_on_meta():
    n = count("GPT-B")
    assert abs(n - 110.9e6) / 110.9e6 < 0.005, n
    for name in ["DAR-B", "DAR-L", "DAR-XL", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-3B", "DAR-demo"]:
        print(f"{name}: {count(name) / 1e6:.1f}M parameters")
    assert abs(count("DAR-B") - 485e6) / 485e6 < 0.02
    assert abs(count("DAR-XL") - 2.0e9) / 2.0e9 < 0.05
    assert abs(count("GPT-3B") - 3.1e9) / 3.1e9 < 0.02
    assert set(PRESETS) >= {"DAR-B", "DAR-L", "DAR-XL", "GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-3B"}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_runs_and_keeps_fp32_logits(dtype):
    cfg = get_preset("tiny-dar")
    model = build_model(cfg).to(dtype)
    model.rope_cos, model.rope_sin = (t.float() for t in rope_tables(cfg))
    model.tok_codebook = model.tok_codebook.float()
    pos, dirs = sequence_inputs(cfg)
    ref = build_model(cfg)
    cls = torch.tensor([1, 2])
    toks = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        out = model.forward_full(cls, toks, pos, dirs)
        expected = ref.forward_full(cls, toks, pos, dirs)
    assert out.dtype == torch.float32
    assert (out - expected).abs().max() < 0.05


def test_gathered_modulation_matches_per_token_modulation_with_gradients():
    """Training gathers AdaLN from the 9-row table, per layer chunk; the reference path computes it per
    token. Logits and every parameter's gradient agree (fp32, atol 1e-5)."""
    cfg = get_preset("tiny-dar")
    pos, dirs = sequence_inputs(cfg)
    cls = torch.tensor([3, cfg.num_classes])
    toks = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len - 1), generator=torch.Generator().manual_seed(0))
    results = []
    for gather in (False, True):
        model = build_model(cfg, seed=1).train()
        logits = model.forward_full(cls, toks, pos, dirs, gather_modulation=gather)
        (logits.square().mean()).backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("preset", ["tiny-dar", "tiny-llamagen"])
def test_each_row_may_follow_its_own_order(preset):
    """Per-row positions and directions: a batch whose rows walk different orders (diagonal, raster, a
    random permutation) gives each row what a one-order full pass over that row gives. fp32 <= 1e-5."""
    cfg = get_preset(preset)
    model = build_model(cfg, seed=2)
    orders = [make_order(name, cfg.grid_size) for name in ("diagonal", "raster")]
    orders.append(make_order(np.random.default_rng(0).permutation(cfg.seq_len), cfg.grid_size))
    tables = [sequence_inputs_of(cfg, o) for o in orders]
    pos = torch.stack([p for p, _ in tables])  # [3, N, 4]
    dirs = torch.stack([d for _, d in tables])  # [3, N]
    n = cfg.seq_len
    cls = torch.tensor([1, 2, 3])
    toks = torch.randint(0, cfg.vocab_size, (3, n - 1), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        caches = model.new_cache(3)
        logits, caches, mod = model.prefill(cls[:, None], pos[:, :1], dirs[:, :1], torch.zeros(3, dtype=torch.long),
                                            caches)
        steps = [logits]
        for t in range(1, n):
            logits, caches = model.decode(toks[:, t - 1:t], pos[:, t:t + 1], dirs[:, t:t + 1], torch.full((3,), t),
                                          caches, mod)
            steps.append(logits)
        stepwise = torch.cat(steps, 1)
        for row in range(3):
            alone = model.forward_full(cls[row:row + 1], toks[row:row + 1], pos[row], dirs[row])
            assert (alone[0] - stepwise[row]).abs().max().item() <= 1e-5, row
        per_sequence = model.forward_full(cls, toks, pos, dirs)  # any-order training: one order per sequence
    assert (per_sequence - stepwise).abs().max().item() <= 1e-5


def sequence_inputs_of(cfg, order):
    return (torch.from_numpy(positions_table(order, cfg.grid_size, cfg.rope)), torch.from_numpy(direction_ids(order)))
