"""Cross-request batching without Ray: merged requests give every image byte for byte as
`runtime.generate` gives it for its request alone (per-row class, seed/index and CFG schedule)."""

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from dartrt.runtime import generate  # noqa: E402
from dartrt.runtime.cfg import CFGSchedule, combine, weight_table  # noqa: E402
from dartrt.runtime.errors import DartrtError  # noqa: E402
from dartrt.runtime.package import open_package_backend  # noqa: E402
from dartrt.runtime.scheduler import ImageRow, Request, build_request, merge_requests, sample_tokens  # noqa: E402
from dartrt.serve.batching import group_compatible, run_batch  # noqa: E402
from dartrt.serve.codec import png_bytes  # noqa: E402

SETTINGS = ("n_per_class", "cfg", "cfg_schedule", "order", "seed", "temperature", "top_k", "top_p")


@pytest.fixture(scope="module")
def backend(tiny_dar_package):
    return open_package_backend(tiny_dar_package, "onnxruntime-cpu", intra_op_threads=1)


def request_of(backend, classes, **kw):
    return build_request(backend, classes, batch_size=16, **kw)


def alone(backend, classes, **kw):
    """What runtime.generate gives for this request on its own."""
    return generate(backend, classes, **{k: v for k, v in kw.items() if k in SETTINGS})


def assert_same_images(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert png_bytes(a) == png_bytes(b)


def test_one_forward_of_several_requests_equals_each_alone(backend):
    """Different classes, seeds, images per class and CFG scales and schedules share one forward; each
    image is still its own request's image, byte for byte."""
    specs = [dict(classes=[1, 2], n_per_class=2, seed=5, cfg=3.0),
             dict(classes=[7], seed=5, cfg=1.5, cfg_schedule="linear"),
             dict(classes=[0], seed=9, cfg=2.0, cfg_schedule="power-cosine"),
             dict(classes=[4], seed=123456789, cfg=1.0001)]
    requests = [request_of(backend, s["classes"], **{k: v for k, v in s.items() if k != "classes"}) for s in specs]
    assert group_compatible(requests) == [[0, 1, 2, 3]]
    outcomes = run_batch(backend, requests, max_batch=16)
    for spec, outcome in zip(specs, outcomes):
        assert outcome.error is None
        assert (outcome.batch_images, outcome.batch_requests) == (7, 4)
        assert_same_images(outcome.images, alone(backend, spec.pop("classes"), **spec))


def test_incompatible_settings_run_as_separate_groups(backend):
    """CFG off (scale 1) never joins CFG on; other sampling settings or orders form their own forward."""
    specs = [dict(classes=[3], seed=1, cfg=1.0), dict(classes=[3], seed=1, cfg=2.0),
             dict(classes=[5], seed=2, cfg=2.0, top_k=5), dict(classes=[6], seed=3, cfg=1.0),
             dict(classes=[6], seed=4, cfg=2.0, order="raster"), dict(classes=[8], seed=4, cfg=3.0)]
    requests = [request_of(backend, s["classes"], **{k: v for k, v in s.items() if k != "classes"}) for s in specs]
    assert group_compatible(requests) == [[0, 3], [1, 5], [2], [4]]
    outcomes = run_batch(backend, requests, max_batch=16)
    assert [o.batch_requests for o in outcomes] == [2, 2, 1, 2, 1, 2]
    for spec, outcome in zip(specs, outcomes):
        assert_same_images(outcome.images, alone(backend, spec.pop("classes"), **spec))


def test_chunks_smaller_than_the_merged_request(backend):
    """More images than one forward takes: chunked, and still equal to each request alone."""
    requests = [request_of(backend, [c], seed=c, cfg=1.5 + c) for c in range(5)]
    outcomes = run_batch(backend, requests, max_batch=2)
    for c, outcome in enumerate(outcomes):
        assert_same_images(outcome.images, alone(backend, [c], seed=c, cfg=1.5 + c))


def test_a_failing_group_fails_only_its_requests(backend):
    """A group that raises reports the error to its own requests; the other group still gets images."""
    good = request_of(backend, [1], seed=0, cfg=2.0)
    off = request_of(backend, [2], seed=0, cfg=1.0)
    bad = Request(off.class_ids, off.cfg, off.sampling, off.order[::-1][:3], off.seed, off.batch_size)
    outcomes = run_batch(backend, [good, bad], max_batch=4)
    assert outcomes[0].error is None and len(outcomes[0].images) == 1
    assert outcomes[1].images is None and outcomes[1].error


@pytest.mark.parametrize("weight", [1.0, 1.25, 4.0, 0.3, 7.123456789])
def test_per_row_cfg_weights_are_bitwise_the_scalar_path(weight):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 513)).astype(np.float32) * 10
    scalar = combine(logits, weight)
    mixed = combine(logits, np.array([weight, 2.0, weight, 0.5]))
    assert mixed.dtype == scalar.dtype == np.float32
    assert np.array_equal(mixed[[0, 2]], scalar[[0, 2]])
    assert not np.array_equal(mixed[1], scalar[1])


def test_weight_table_follows_each_schedule():
    schedules = [CFGSchedule(2.0), CFGSchedule(3.0, "linear", start=1.0)]
    table = weight_table(schedules, 5)
    assert table.shape == (5, 2)
    assert np.allclose(table[:, 0], 2.0) and table[0, 1] == 1.0 and table[-1, 1] == 3.0


def test_merge_refuses_what_one_forward_cannot_share(backend):
    base = request_of(backend, [1], cfg=2.0)
    for other, what in ((request_of(backend, [1], cfg=1.0), "CFG on and CFG off"),
                        (request_of(backend, [1], cfg=2.0, order="raster"), "scan orders"),
                        (request_of(backend, [1], cfg=2.0, temperature=0.5), "sampling settings")):
        with pytest.raises(DartrtError, match=what):
            merge_requests([base, other], 4)
    merged = merge_requests([base, request_of(backend, [3, 4], cfg=5.0, seed=2)], 4)
    assert merged.class_ids == (1, 3, 4)
    assert [(r.seed, r.index, r.cfg.scale) for r in merged.images] == [(0, 0, 2.0), (2, 0, 5.0), (2, 1, 5.0)]


def test_sample_tokens_refuses_rows_mixing_cfg_on_and_off(backend):
    base = request_of(backend, [1, 2], cfg=2.0)
    rows = (ImageRow(1, 0, 0, CFGSchedule(2.0)), ImageRow(2, 0, 1, CFGSchedule(1.0)))
    mixed = Request(base.class_ids, base.cfg, base.sampling, base.order, 0, 4, rows)
    with pytest.raises(DartrtError, match="CFG on and CFG off"):
        sample_tokens(backend, mixed)


def test_negative_seed_is_one_clear_line(backend):
    with pytest.raises(DartrtError, match="seed must be an integer >= 0"):
        build_request(backend, [1], seed=-1)
