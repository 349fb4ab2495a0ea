"""`dartrt train-demo` end to end on the QUICK recipe (seconds): the package it writes loads, and the
tokenizer cache is reused only for a recipe it was made for."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from dartrt.dar.checkpoint import load_checkpoint
from dartrt.dar.config import get_preset
from dartrt.dar.demo.train import QUICK, SAVE_RESERVE_S, dar_config, train_demo
from dartrt.dar.demo.train_dar import TrainDAROptions, cpu_runs_bf16, make_optimizer, train_dar
from dartrt.dar.model import build_model
from dartrt.runtime.errors import DartrtError


def test_quick_recipe_and_tokenizer_cache(tmp_path):
    cache = tmp_path / "cache"
    logs: list[str] = []
    first = train_demo(tmp_path / "a", QUICK, progress=False, log=logs.append, cache_dir=cache)
    assert not any("reusing" in line for line in logs)
    ckpt = load_checkpoint(tmp_path / "a")  # a loadable checkpoint: DAR, VQ decoder, config
    assert ckpt.config.name == "DAR-demo"
    train_log = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert train_log["timings_seconds"]["dar"] > 0
    assert train_log["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # e.g. "AVX2"
    assert train_log["dar"][0]["bf16"] == cpu_runs_bf16()  # QUICK asks for bf16: taken where native
    (entry,) = cache.iterdir()
    assert {p.name for p in entry.iterdir()} == {"vq_full.safetensors", "tokens.npz", "done.json"}

    logs.clear()
    second = train_demo(tmp_path / "b", QUICK, progress=False, log=logs.append, cache_dir=cache,
                        reuse_classifier=False)
    assert any("reusing" in line for line in logs)
    assert second["vq"] == first["vq"] and second["timings_seconds"]["vq"] == first["timings_seconds"]["vq"]
    # Same seeded DAR on the same cached tokens: the same weights.
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("a", "b"))
    assert all(np.array_equal(a[k], b[k]) for k in a)

    logs.clear()
    other = dataclasses.replace(QUICK, train_images=QUICK.train_images + 10, dar_layers=2, dar_width=64,
                                budget_minutes=5.0)
    report = train_demo(tmp_path / "c", other, progress=False, log=logs.append, cache_dir=cache,
                        reuse_classifier=True)
    assert not any("reusing" in line for line in logs) and len(list(cache.iterdir())) == 2
    # The DAR got what the earlier stages left of the 5 minutes (it needed only its 10 steps).
    spent = sum(v for k, v in report["timings_seconds"].items() if k not in ("dar", "total"))
    assert report["dar"][0]["time_budget_s"] == pytest.approx(300 - spent - SAVE_RESERVE_S, abs=0.2)
    assert report["dar"][0]["stopped_by"] == "steps" and report["dar"][0]["steps"] == 10
    small = load_checkpoint(tmp_path / "c").config  # the recipe's DAR size reaches the package
    assert (small.n_layer, small.d_model, small.n_head, small.head_dim) == (2, 64, 1, 64)


@pytest.mark.parametrize("layers, width", [(0, 128), (6, 100), (6, 32)])
def test_dar_config_rejects_sizes_without_heads_of_64(layers, width):
    with pytest.raises(ValueError, match="DAR size"):
        dar_config(dataclasses.replace(QUICK, dar_layers=layers, dar_width=width))


def test_dar_config_defaults_to_the_shipped_preset():
    cfg, preset = dar_config(QUICK), get_preset("DAR-demo")
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.ffn_hidden) == (
        preset.n_layer, preset.d_model, preset.n_head, preset.ffn_hidden)


def _tiny_forward_inputs():
    import torch

    from dartrt.dar.config import get_preset
    from dartrt.dar.model import build_model
    from dartrt.runtime.orders import direction_ids, make_order, positions_table

    cfg = get_preset("tiny-dar")
    order = make_order(cfg.order, cfg.grid_size)
    pos = torch.from_numpy(positions_table(order, cfg.grid_size, cfg.rope))
    dirs = torch.from_numpy(direction_ids(order))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.grid_size**2 - 1), generator=gen)
    return build_model(cfg).train(), (torch.tensor([3, cfg.num_classes]), tokens, pos, dirs)


def test_compiled_TrainingForward_matches_eager():
    """The compiled training forward gives the eager logits (fp32, atol 1e-4; without a working compiler
    the guarded fallback is eager, so this still checks the numbers the training loop sees)."""
    import torch

    from dartrt.dar.demo.train_dar import _TrainingForward

    model, args = _tiny_forward_inputs()
    eager = model.forward_full(*args, gather_modulation=True)
    compiled = _TrainingForward(model, True, log=print)(*args, gather_modulation=True)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_TrainingForward_falls_back_to_eager_when_compilation_fails(monkeypatch):
    import torch

    from dartrt.dar.demo.train_dar import _TrainingForward

    def broken_compile(fn):
        def call(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    model, args = _tiny_forward_inputs()
    logs: list[str] = []
    forward = _TrainingForward(model, True, log=logs.append)
    first = forward(*args, gather_modulation=True)
    second = forward(*args, gather_modulation=True)
    assert forward.compiled is None
    torch.testing.assert_close(first, model.forward_full(*args, gather_modulation=True), atol=0, rtol=0)
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    assert len(logs) == 1 and "eager" in logs[0] and "No working C++ compiler" in logs[0]
    assert "\n" not in logs[0]


def _tiny_tokens():
    """tiny-dar's config, a random unit codebook and 8 random token grids with labels."""
    cfg = get_preset("tiny-dar")
    rng = np.random.default_rng(0)
    grids = rng.integers(0, cfg.vocab_size, (8, cfg.grid_size, cfg.grid_size))
    labels = rng.integers(0, cfg.num_classes, 8)
    codebook = torch.nn.functional.normalize(torch.randn(cfg.vocab_size, cfg.codebook_dim), dim=-1)
    return cfg, codebook, grids, labels


def test_bf16_autocast_is_skipped_where_the_cpu_has_no_native_bf16(monkeypatch):
    """Emulated bf16 made a step 10x slower than fp32 (AVX2 CPU), so without native kernels the DAR
    trains in fp32: one log line, and exactly the weights of an fp32 run."""
    from dartrt.dar.demo import train_dar as module

    monkeypatch.setattr(module, "cpu_runs_bf16", lambda: False)
    cfg, codebook, grids, labels = _tiny_tokens()
    runs = {}
    for bf16 in (True, False):
        logs: list[str] = []
        opts = module.TrainDAROptions(steps=2, batch_size=4, warmup=1, bf16=bf16)
        runs[bf16] = module.train_dar(cfg, codebook, grids, labels, opts, progress=False, log=logs.append)
        assert runs[bf16][1]["bf16"] is False
        assert len(logs) == int(bf16) and all("fp32" in line and "\n" not in line for line in logs)
    weights = [dict(model.state_dict()) for model, _ in runs.values()]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    """Muon orthogonalises 2D updates, which suits hidden matrices only; embeddings, the head, AdaLN
    and the gains stay with AdamW, and every parameter is in exactly one optimizer."""
    cfg = get_preset("tiny-dar")
    model = build_model(cfg)
    adamw, muon = make_optimizer(model, TrainDAROptions(optimizer="muon"))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    ids = {name: {id(p) for g in opt.param_groups for p in g["params"]} for name, opt in
           (("adamw", adamw), ("muon", muon))}
    names = {n: p for n, p in model.named_parameters()}
    muon_names = {n for n, p in names.items() if id(p) in ids["muon"]}
    assert muon_names == {f"layers.{i}.{m}.weight" for i in range(cfg.n_layer) for m in
                          ("attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")}
    assert not ids["adamw"] & ids["muon"] and ids["adamw"] | ids["muon"] == {id(p) for p in names.values()}
    assert len(make_optimizer(model, TrainDAROptions())) == 1
    with pytest.raises(ValueError, match="optimizer must be"):
        make_optimizer(model, TrainDAROptions(optimizer="sgd"))


def test_muon_lr_scales_muon_along_the_shared_schedule():
    from dartrt.dar.demo.train_dar import set_learning_rates

    model = build_model(get_preset("tiny-dar"))
    opts = TrainDAROptions(optimizer="muon", lr=1e-3, muon_lr=4e-3)
    adamw, muon = make_optimizer(model, opts)
    assert muon.param_groups[0]["lr"] == pytest.approx(4e-3) and adamw.param_groups[0]["lr"] == pytest.approx(1e-3)
    set_learning_rates([adamw, muon], 5e-4, opts)  # half-way down the schedule: both halve
    assert [g["lr"] for g in adamw.param_groups] == pytest.approx([5e-4, 5e-4])
    assert muon.param_groups[0]["lr"] == pytest.approx(2e-3)
    set_learning_rates([adamw, muon], 5e-4, TrainDAROptions(optimizer="muon", lr=1e-3))  # None: one rate
    assert muon.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_muon_training_steps_move_the_weights():
    cfg, codebook, grids, labels = _tiny_tokens()
    runs = [train_dar(cfg, codebook, grids, labels, TrainDAROptions(steps=3, batch_size=4, warmup=1, optimizer=o),
                      progress=False, log=lambda _: None) for o in ("adamw", "muon")]
    assert all(np.isfinite(log["final_loss"]) for _, log in runs)
    w = [model.layers[0].feed_forward.w1.weight for model, _ in runs]
    assert not torch.equal(w[0], w[1])  # Muon's update differs from AdamW's
    init = build_model(cfg, seed=0).layers[0].feed_forward.w1.weight
    assert not torch.equal(w[1], init)


def test_fp32_muon_runs_newton_schulz_in_fp32_where_the_cpu_has_no_native_bf16(monkeypatch):
    """Emulated bf16 made torch's Newton-Schulz 40x slower than fp32 (AVX2 CPU). Without native bf16 the
    Muon step must apply exactly the fp32 orthogonalisation: the update equals the stock formula
    (momentum 0.95, Nesterov, match_rms_adamw, decoupled decay) with newton_schulz_fp32, to fp32
    round-off (atol 1e-7), and differs from torch's bf16 step by bf16 round-off only (relative L2 norm
    of the difference < 3 %; measured 1.4 %: five bf16 iterations of a slope-maximising polynomial)."""
    from dartrt.dar.demo import train_dar as module

    cfg = get_preset("tiny-dar")
    opts = TrainDAROptions(optimizer="muon", lr=1e-2, weight_decay=0.05)
    steps = {}
    for native in (False, True):
        monkeypatch.setattr(module, "cpu_runs_bf16", lambda native=native: native)
        model = build_model(cfg, seed=0)
        muon = make_optimizer(model, opts)[1]
        assert type(muon) is (torch.optim.Muon if native else module.Fp32Muon)
        w = model.layers[0].feed_forward.w1.weight
        before = w.detach().clone()
        w.grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
        muon.step()
        steps[native] = w.detach() - before
    g = torch.randn(before.shape, generator=torch.Generator().manual_seed(1))
    update = g.lerp((1 - 0.95) * g, 0.95)  # Nesterov on a first step, from a zero momentum buffer
    ortho = module.newton_schulz_fp32(update, (3.4445, -4.775, 2.0315), 5, 1e-7)
    adjusted = opts.lr * 0.2 * math.sqrt(max(before.shape))
    expected = -opts.lr * opts.weight_decay * before - adjusted * ortho
    torch.testing.assert_close(steps[False], expected, atol=1e-7, rtol=1e-5)
    assert not torch.equal(steps[False], steps[True])
    relative = float((steps[False] - steps[True]).norm() / steps[False].norm())
    assert relative < 0.03, relative


def test_schedule_anneals_on_the_further_of_steps_and_time():
    from dartrt.dar.demo.train_dar import schedule

    by_time = TrainDAROptions(steps=100, lr=1.0, warmup=1, time_budget_s=10.0)
    assert schedule(0, 0.0, by_time) == pytest.approx(1.0)
    assert schedule(50, 0.0, by_time) == pytest.approx(0.5)  # steps ahead: half-way down the cosine
    assert schedule(10, 5.0, by_time) == pytest.approx(0.5)  # time ahead: the same
    assert schedule(10, 20.0, by_time) == pytest.approx(0.0)  # past the budget: zero, not a rising cosine
    by_steps = TrainDAROptions(steps=100, lr=1.0, warmup=1)
    assert schedule(10, 1e9, by_steps) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert schedule(0, 0.0, TrainDAROptions(steps=100, lr=1.0, warmup=4)) == pytest.approx(0.25)


def test_time_budget_stops_the_dar_before_it_runs_out():
    cfg, codebook, grids, labels = _tiny_tokens()
    logs: list[str] = []
    opts = TrainDAROptions(steps=10**6, batch_size=4, warmup=1, time_budget_s=1.0)
    model, log = train_dar(cfg, codebook, grids, labels, opts, progress=False, log=logs.append)
    assert log["stopped_by"] == "time budget" and 1 <= log["steps"] < opts.steps
    assert log["sequences_seen"] == 4 * log["steps"] and np.isfinite(log["final_loss"])
    assert log["train_seconds"] <= 1.5  # stops when the next step would overrun (one slow step of slack)
    assert any("time budget of 1 s reached" in line for line in logs)


def test_demo_budget_goes_to_the_last_dar_phase():
    from dartrt.dar.demo.train import _fill_budget

    phase = TrainDAROptions(steps=5000)
    assert _fill_budget(phase, 1000.0, lambda _: None).time_budget_s == pytest.approx(1000.0 - SAVE_RESERVE_S)
    capped = dataclasses.replace(phase, time_budget_s=300.0)
    assert _fill_budget(capped, 1000.0, lambda _: None).time_budget_s == 300.0
    with pytest.raises(DartrtError, match="under a minute"):
        _fill_budget(phase, 30.0, lambda _: None)


def test_recipe_round_trips_through_its_json_log():
    from dartrt.dar.demo.train import DemoRecipe, recipe_from_dict

    for recipe in (DemoRecipe(), QUICK):
        assert recipe_from_dict(json.loads(json.dumps(dataclasses.asdict(recipe)))) == recipe
    old_log = json.loads(json.dumps(dataclasses.asdict(QUICK)))
    del old_log["budget_minutes"], old_log["dar"][0]["time_budget_s"]  # a log from before the budget
    assert recipe_from_dict(old_log) == QUICK  # the new fields' defaults are the old behaviour
