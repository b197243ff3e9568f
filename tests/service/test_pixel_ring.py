"""service/pixel_ring.py: a front-end's shared-memory slots of decoded images, and an engine's views of them."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from service.errors import InvalidField
from service.pixel_ring import SHM_ROOT, PixelRing, RingReader

SHAPE = (4, 5, 3)
SLOT_MB = int(np.prod(SHAPE)) / 2 ** 20  # one slot's size in MB

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_ROOT), reason="no /dev/shm on this host")


@pytest.fixture
def shm(tmp_path):
    """A temp dir in /dev/shm, as the supervisor makes one."""
    path = Path(tempfile.mkdtemp(prefix="clip-serve-test-", dir=SHM_ROOT))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8))


def test_slots_carry_images_to_an_engines_views_until_given_back(shm):
    ring = PixelRing.create(str(shm), SHAPE, 3 * SLOT_MB)
    assert ring is not None and len(ring.free) == 3 and Path(ring.path).parent == shm
    reader = RingReader(str(shm), SHAPE)
    first, second = images(2, 1), images(1, 2)
    a, b = ring.take(first), ring.take(second)
    assert a is not None and b is not None and not set(a) & set(b)
    got = reader.views(ring.path, a) + reader.views(ring.path, b)
    assert [g.tobytes() for g in got] == [x.tobytes() for x in first + second]
    assert ring.take(images(1)) is None  # all three slots are in use: that call's pixels go over the socket
    ring.give_back(a)
    c = ring.take(images(2, 3))
    assert sorted(c) == sorted(a)  # the slots given back are used again
    view = reader.views(ring.path, c[:1])[0]
    ring.array[c[0]] = 7
    assert (view == 7).all()  # a view of the shared memory, not a copy of it
    ring.close()
    assert not Path(ring.path).exists()


def test_a_ring_takes_only_images_of_the_models_input_shape(shm):
    ring = PixelRing.create(str(shm), SHAPE, 4 * SLOT_MB)
    assert ring.take([np.zeros((5, 4, 3), np.uint8)]) is None
    assert ring.take([]) is None
    assert len(ring.free) == 4  # a refused call takes nothing
    ring.close()


def test_no_ring_where_it_could_not_be_ram_or_is_turned_off(shm, tmp_path):
    assert PixelRing.create(str(tmp_path), SHAPE, 16) is None  # a disk-backed dir: its pages would be written back
    assert PixelRing.create(str(shm), SHAPE, 0) is None  # CLIP_SHM_PIXELS_MB=0
    assert PixelRing.create(str(shm), SHAPE, SLOT_MB / 2) is None  # not one slot's worth


def test_a_full_dev_shm_means_no_ring_and_no_file_left_behind(shm, monkeypatch, caplog):
    """Docker gives a container 64 MB of /dev/shm: a ring that does not fit is refused when it is made (its pages
    are allocated then), never a SIGBUS at a later write; the images then go over the socket."""
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert PixelRing.create(str(shm), SHAPE, 4 * SLOT_MB) is None
    assert list(shm.iterdir()) == []
    assert "no shared memory for decoded images" in caplog.text and "CLIP_SHM_PIXELS_MB" in caplog.text


def test_an_engine_maps_only_rings_of_its_own_temp_dir_and_slots_in_them(shm, tmp_path):
    ring = PixelRing.create(str(shm), SHAPE, 2 * SLOT_MB)
    reader = RingReader(str(shm), SHAPE)
    with pytest.raises(InvalidField, match="not in the ring"):
        reader.views(ring.path, [2])
    with pytest.raises(InvalidField, match="not in the ring"):
        reader.views(ring.path, [-1])
    other = tmp_path / "pixels-1-x"
    other.write_bytes(bytes(240))
    with pytest.raises(InvalidField, match="not a ring of this server"):
        reader.views(str(other), [0])
    with pytest.raises(InvalidField, match="not a ring of this server"):
        reader.views(str(shm / ".." / "pixels-1-x"), [0])
    ring.close()


def test_a_front_end_sends_slots_and_frees_them_when_the_call_is_over(shm):
    """RemoteEngine._call_with_pixels: the header names the ring and its slots and no frame carries the pixels; the
    slots are free again after the reply, after an error and after the client left (cancelled); with the ring
    full, the pixels go as a frame."""
    from service.engine_client import RemoteEngine
    from service.errors import Overloaded

    calls: list = []
    outcome: dict = {}

    async def call(header, arrays=(), rid=None):
        calls.append((header, [a.shape for a in arrays]))
        if outcome.get("raise"):
            raise outcome["raise"]
        if outcome.get("hang"):
            await asyncio.sleep(30)
        return {}, [np.zeros((1, 4), np.float32)]

    link = SimpleNamespace(call=call)
    remote = SimpleNamespace(ring=PixelRing.create(str(shm), SHAPE, 2 * SLOT_MB))
    send = RemoteEngine._call_with_pixels.__get__(remote)
    ring = remote.ring

    asyncio.run(send(link, {"op": "embed"}, images(2)))
    header, frames = calls[-1]
    assert header["ring"] == ring.path and len(header["slots"]) == 2 and frames == []
    assert len(ring.free) == 2

    outcome["raise"] = Overloaded("full")
    with pytest.raises(Overloaded):
        asyncio.run(send(link, {"op": "embed"}, images(1)))
    assert len(ring.free) == 2
    outcome.clear()

    async def leave():
        outcome["hang"] = True
        task = asyncio.ensure_future(send(link, {"op": "embed"}, images(2)))
        await asyncio.sleep(0.05)
        assert ring.free == []  # in use while the call waits
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    asyncio.run(leave())
    assert len(ring.free) == 2
    outcome.clear()

    assert ring.take(images(1)) is not None  # one slot left: a call of two goes as a frame
    asyncio.run(send(link, {"op": "pixels"}, images(2), 9))
    header, frames = calls[-1]
    assert "slots" not in header and frames == [(2, *SHAPE)]
    ring.close()


def test_dev_shm_behind_a_link_is_still_ram(shm, tmp_path, monkeypatch):
    """Some systems make /dev/shm a link to /run/shm: a temp dir there is still in RAM and still gets a ring."""
    import service.pixel_ring as pixel_ring

    link = tmp_path / "shm-link"
    link.symlink_to(SHM_ROOT)
    monkeypatch.setattr(pixel_ring, "SHM_ROOT", str(link))
    assert pixel_ring.shm_dir(str(shm))
    assert not pixel_ring.shm_dir(str(tmp_path))
