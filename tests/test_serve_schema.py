"""The body of POST /v1/generate: every bad request is one line with its 4xx, before it is queued."""

import json

import pytest

from dartrt.runtime.backend import ModelInfo
from dartrt.runtime.errors import DartrtError
from dartrt.runtime.scheduler import build_request
from dartrt.serve.errors import status_of
from dartrt.serve.schema import check_precision, parse_body, to_request, wants_png

INFO = ModelInfo(name="m", num_classes=10, vocab_size=16, grid_size=4, rope="4d", order="diagonal", image_size=16,
                 default_cfg=1.25)


class FakeBackend:
    """build_request reads only the model info."""

    info = INFO


def refuse(raw: bytes, max_images: int = 8) -> tuple[int, str]:
    with pytest.raises(DartrtError) as info:
        to_request(parse_body(raw), INFO, max_images)
    message = str(info.value)
    assert "\n" not in message
    return status_of(info.value), message


@pytest.mark.parametrize("raw, status, words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"class_ids": [1], "clas": 2}', 400, "unknown field 'clas'"),
    (b'{"seed": 1}', 400, "class_ids is required"),
    (b'{"class_ids": []}', 400, "non-empty list"),
    (b'{"class_ids": [1.5]}', 400, "class id 1.5 is not an integer"),
    (b'{"class_ids": [true]}', 400, "class id true is not an integer"),
    (b'{"class_ids": [10]}', 400, "class id 10 is outside [0, 10)"),
    (b'{"class_ids": [-1]}', 400, "class id -1 is outside [0, 10)"),
    (b'{"class_ids": [1], "cfg": NaN}', 400, "cfg must be a finite number"),
    (b'{"class_ids": [1], "cfg": Infinity}', 400, "cfg must be a finite number"),
    (b'{"class_ids": [1], "cfg": "2"}', 400, "cfg must be a number or null"),
    (b'{"class_ids": [1], "cfg": -1}', 400, "cfg must be a finite number >= 0"),
    (b'{"class_ids": [1], "cfg_schedule": "cosine"}', 400, "unknown cfg schedule 'cosine'"),
    (b'{"class_ids": [1], "order": "spiral"}', 400, "unknown order 'spiral'"),
    (b'{"class_ids": [1], "order": [0, 1, 2]}', 400, "order has 3 cells"),
    (b'{"class_ids": [1], "order": {"a": 1}}', 400, "order must be an order name"),
    (b'{"class_ids": [1], "seed": -3}', 400, "seed must be an integer in [0, 2^63)"),
    (b'{"class_ids": [1], "seed": false}', 400, "seed must be an integer"),
    (b'{"class_ids": [1], "n_per_class": 0}', 400, "n_per_class must be an integer >= 1"),
    (b'{"class_ids": [1], "top_p": 1.5}', 400, "top_p must be in (0, 1]"),
    (b'{"class_ids": [1], "top_k": 2.5}', 400, "top_k must be an integer"),
    (b'{"class_ids": [1], "temperature": -0.1}', 400, "temperature must be a finite number >= 0"),
    (b'{"class_ids": [1, 2, 3], "n_per_class": 3}', 413, "asks for 9 images"),
    (b'{"class_ids": [1], "precision": 5}', 400, "precision must be a string or null"),
])
def test_bad_bodies_get_one_line_and_their_status(raw, status, words):
    got_status, message = refuse(raw)
    assert got_status == status
    assert words in message


@pytest.mark.parametrize("raw, kwargs", [
    (b'{"class_ids": [1], "cfg": NaN}', {"cfg": float("nan")}),
    (b'{"class_ids": [10]}', {}),
    (b'{"class_ids": [1], "top_p": 0}', {"top_p": 0.0}),
    (b'{"class_ids": [1], "temperature": 1e9}', {"temperature": 1e9}),
])
def test_runtime_checks_reach_the_client_in_the_runtimes_own_words(raw, kwargs):
    """What build_request refuses, the service refuses with the very same line."""
    body = json.loads(raw.replace(b"NaN", b"0"))
    with pytest.raises(DartrtError) as want:
        build_request(FakeBackend(), body["class_ids"], **kwargs)
    assert refuse(raw) == (400, str(want.value))


def test_an_oversize_body_is_413():
    raw = json.dumps({"class_ids": [1], "order": [0] * 400_000}).encode()
    assert refuse(raw)[0] == 413


def test_a_good_body_is_the_request_runtime_generate_builds():
    body = parse_body(b'{"class_ids": [3, 4], "n_per_class": 2, "seed": 11, "cfg": 2.5, "cfg_schedule": "linear",'
                      b' "order": "raster", "temperature": 0.9, "top_k": 5, "top_p": 0.95}')
    got = to_request(body, INFO, max_images=8)
    want = build_request(FakeBackend(), [3, 4], n_per_class=2, seed=11, cfg=2.5, cfg_schedule="linear",
                         order="raster", temperature=0.9, top_k=5, top_p=0.95)
    assert got.class_ids == want.class_ids == (3, 3, 4, 4)
    assert (got.cfg, got.sampling, got.seed) == (want.cfg, want.sampling, want.seed)
    assert (got.order == want.order).all()


def test_defaults_come_from_the_model():
    got = to_request(parse_body(b'{"class_ids": [0]}'), INFO, max_images=1)
    assert (got.cfg.scale, got.cfg.kind, got.seed) == (1.25, "constant", 0)


def test_a_custom_order_as_flat_cells():
    got = to_request(parse_body(json.dumps({"class_ids": [0], "order": list(range(16))[::-1]}).encode()),
                     INFO, max_images=1)
    assert tuple(got.order[0]) == (3, 3)


def test_precision_must_be_the_one_served():
    check_precision(None, "fp32", ("fp32", "fp16"))
    check_precision("fp32", "fp32", ("fp32", "fp16"))
    with pytest.raises(DartrtError, match="this service runs precision 'fp32', not 'fp16'"):
        check_precision("fp16", "fp32", ("fp32", "fp16"))
    with pytest.raises(DartrtError, match="has no precision 'int9'") as info:
        check_precision("int9", "fp32", ("fp32",))
    assert status_of(info.value) == 400


@pytest.mark.parametrize("accept, images, png", [
    ("image/png", 1, True), ("image/png;q=0.9", 1, True), ("application/json", 1, False), ("*/*", 1, False),
    (None, 4, False), ("image/png, application/json", 2, False)])
def test_accept_png_only_for_one_image(accept, images, png):
    assert wants_png(accept, images) is png


def test_accept_png_for_several_images_is_406():
    with pytest.raises(DartrtError) as info:
        wants_png("image/png", 2)
    assert status_of(info.value) == 406
