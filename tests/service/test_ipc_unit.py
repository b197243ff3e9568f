"""The wire between front-end and engine processes (service/ipc.py): arrays cross whole and typed, errors come
back as the same ApiError classes with their place in the request; and the front-end's uint8 decoding, normalised
by the engine, is the one-process float path exactly."""

from __future__ import annotations

import numpy as np
import pytest

from models.preprocess import normalise
from service import errors
from service.images import ImagePreprocessor
from service.ipc import error_fields, pack, pack_many, raise_error, unpack, unpack_all
from tests.service.conftest import encode, shape_image


def _wire(frames: list) -> list:
    return [bytes(f) for f in frames]  # what the other process receives


def test_arrays_cross_with_dtype_shape_and_values():
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 48, 3), dtype=np.uint8)
    tokens = np.arange(2 * 77, dtype=np.int64).reshape(2, 77)
    empty = np.zeros((0, 128), np.float32)
    header, arrays = unpack(_wire(pack({"op": "x", "texts": ["a", "é"], "deadline": 1.5}, [pixels, tokens, empty])))
    assert header == {"op": "x", "texts": ["a", "é"], "deadline": 1.5}
    for got, want in zip(arrays, (pixels, tokens, empty)):
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)


def test_several_replies_cross_as_one_message_in_order():
    rng = np.random.default_rng(1)
    replies = [({"id": i, "load": 3}, [rng.standard_normal((n, 8)).astype(np.float32)] * (i % 2 + 1))
               for i, n in enumerate((1, 4, 0, 2))] + [({"id": 9, "error": "Overloaded"}, [])]
    got = unpack_all(_wire(pack_many(replies)))
    assert [h for h, _ in got] == [h for h, _ in replies]
    for (_, arrays), (_, want) in zip(got, replies):
        assert len(arrays) == len(want) and all(np.array_equal(a, w) and a.dtype == w.dtype
                                                for a, w in zip(arrays, want))
    single = unpack_all(_wire(pack(*replies[1])))  # one reply, packed alone, reads the same way
    assert len(single) == 1 and single[0][0] == replies[1][0] and np.array_equal(single[0][1][1], replies[1][1][1])


@pytest.mark.parametrize("exc", [errors.Overloaded("queue is full", retry_after=1),
                                 errors.BadInput("not an image").at("images", 3),
                                 errors.PayloadTooLarge("too many"), errors.NotFound("no label set"),
                                 errors.DeadlineExceeded("late", retry_after=2), errors.UrlRefused("nope").at("x")])
def test_errors_come_back_as_their_own_class_and_place(exc):
    header, _ = unpack(_wire(pack({"id": 1, **error_fields(exc)})))
    with pytest.raises(type(exc)) as raised:
        raise_error(header)
    got = raised.value
    assert type(got) is type(exc) and (got.status, got.type) == (exc.status, exc.type)
    assert (got.located_message, got.field, got.index, got.retry_after) == \
        (exc.located_message, exc.field, exc.index, exc.retry_after)


def test_an_unexpected_engine_error_is_a_500_not_a_crash():
    header, _ = unpack(_wire(pack({"id": 1, **error_fields(KeyError("boom"))})))
    with pytest.raises(errors.ApiError) as raised:
        raise_error(header)
    assert raised.value.status == 500 and "KeyError" in raised.value.message


def test_uint8_decoding_normalised_later_is_the_float_path(bundled):
    pre = bundled.preprocess
    as_float, as_uint8 = ImagePreprocessor(pre, 40_000_000), ImagePreprocessor(pre, 40_000_000, as_uint8=True)
    data = [encode(shape_image("red", "circle")), encode(shape_image("blue", "star").resize((300, 200)), "JPEG"),
            encode(shape_image("green", "square").convert("RGBA"), "PNG")]
    rgb = np.stack([as_uint8(d) for d in data])
    assert rgb.dtype == np.uint8 and rgb.shape == (3, *pre.size, 3)
    assert np.array_equal(normalise(rgb, pre), np.stack([as_float(d) for d in data]))


def test_only_eager_torch_on_cuda_gets_the_device_encoder(bundled_dir):
    """Elsewhere (CPU, or a runtime that takes host arrays) the engine keeps the CPU normalisation."""
    from service.backends import load_backend
    from service.device_pixels import device_encoder
    from service.settings import Settings

    backend = load_backend(Settings(model=str(bundled_dir), device="cpu"))
    assert device_encoder(backend, 8) is None
    backend.device = "cuda"  # what it would say on a GPU host, its towers still on the CPU: not the device path
    assert device_encoder(backend, 8) is None


def test_socket_dir_is_the_temp_dir_of_an_ipc_address_only():
    """Front-ends put their pixel rings, and an engine looks for them, in the dir of the engine's ipc:// socket."""
    from service.ipc import socket_dir

    assert socket_dir("ipc:///dev/shm/clip-serve-x/engine-0.sock") == "/dev/shm/clip-serve-x"
    assert socket_dir("tcp://127.0.0.1:5555") is None
