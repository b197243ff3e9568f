"""Decoded images from a front-end to the engines through shared memory (CLIP_WORKERS >= 1, CLIP_SHM_PIXELS_MB).

A front-end owns one ring: a file of slots uint8 [H, W, 3] (the model's input) in the server's temp dir, which the
supervisor puts on /dev/shm (RAM). It decodes an image, copies it into a free slot and sends the engine only the
slots' numbers in the call's header; the engine reads the slots as views and copies each image once, into its upload
buffer (service/batcher.py encode_items), so the pixels never pass through ZeroMQ's I/O threads and the kernel's
socket buffers on either side. A call's slots are free again once its reply (or error) is in: the engine has read
them by then. A call given up early (its client left) frees them at once; the engine may still read such a slot
while the next image is written into it, but that row belongs to the cancelled request, whose answer nobody reads.

When the ring is full, or an image has another shape, or there is no room for it (a full /dev/shm: Docker's default
is 64 MB), the pixels go over the socket as before: the ring only ever saves work.
"""

from __future__ import annotations

import logging
import mmap
import os
import uuid
from typing import Optional, Sequence

import numpy as np

from service.errors import InvalidField

log = logging.getLogger("service.pixel_ring")

RING_PREFIX = "pixels-"
SHM_ROOT = "/dev/shm"


def shm_dir(directory: str) -> bool:
    """Whether `directory` is in /dev/shm (RAM): a ring in a disk-backed dir would be written back to disk."""
    return os.path.realpath(directory).startswith(os.path.realpath(SHM_ROOT) + os.sep)  # /dev/shm may be a link


class PixelRing:
    """A front-end's slots: `take` copies images into free slots and returns their numbers (None: send them over the
    socket), `give_back` frees them once the call that carried them is over."""

    def __init__(self, path: str, shape: tuple[int, int, int], slots: int):
        self.path, self.shape = path, shape
        size = slots * int(np.prod(shape))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # the pages now: a full /dev/shm is an OSError here, not a SIGBUS later
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        self.array = np.frombuffer(self._map, dtype=np.uint8).reshape(slots, *shape)
        self.free = list(range(slots))

    @classmethod
    def create(cls, directory: str, shape: tuple[int, int, int], megabytes: float) -> Optional["PixelRing"]:
        """A ring of `megabytes` in `directory`, or None (disabled, not RAM, or no room: logged) when there is none."""
        slots = int(megabytes * 2 ** 20) // int(np.prod(shape))
        if slots < 1 or not shm_dir(directory):
            return None
        path = os.path.join(directory, f"{RING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            ring = cls(path, shape, slots)
        except OSError as exc:
            log.warning("no shared memory for decoded images (%s, %d MB): they go to the engine over its socket "
                        "(give the container a larger /dev/shm, or set CLIP_SHM_PIXELS_MB lower)", exc, megabytes)
            return None
        log.info("decoded images go to the engine through shared memory: %d slots of %s in %s", slots, shape, path)
        return ring

    def take(self, images: Sequence[np.ndarray]) -> Optional[list[int]]:
        """Copy the images into free slots and return the slots, or None (not enough free, or another shape)."""
        n = len(images)
        if n == 0 or n > len(self.free) or any(img.shape != self.shape for img in images):
            return None
        slots = self.free[-n:]
        del self.free[-n:]
        for slot, img in zip(slots, images):
            self.array[slot] = img
        return slots

    def give_back(self, slots: Sequence[int]) -> None:
        self.free.extend(slots)

    def close(self) -> None:
        """Remove the file; the memory goes when the last process that mapped it lets go."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class RingReader:
    """An engine's views of the front-ends' rings in its temp dir, each mapped read-only the first time a call
    names it."""

    def __init__(self, directory: str, shape: tuple[int, int, int]):
        self.directory, self.shape = os.path.realpath(directory), shape
        self._rings: dict[str, np.ndarray] = {}

    def views(self, path: str, slots: Sequence[int]) -> list[np.ndarray]:
        """The images in these slots of that ring: uint8 [H, W, 3] views (no copy)."""
        ring = self._rings.get(path)
        if ring is None:
            ring = self._rings[path] = self._map(path)
        if not all(isinstance(s, int) and 0 <= s < len(ring) for s in slots):
            raise InvalidField(f"slots {list(slots)[:8]} are not in the ring of {len(ring)}")
        return [ring[s] for s in slots]

    def _map(self, path: str) -> np.ndarray:
        real = os.path.realpath(path)
        if os.path.dirname(real) != self.directory or not os.path.basename(real).startswith(RING_PREFIX):
            raise InvalidField(f"{path!r} is not a ring of this server")
        with open(real, "rb") as f:
            data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        slot = int(np.prod(self.shape))
        return np.frombuffer(data, dtype=np.uint8)[:len(data) // slot * slot].reshape(-1, *self.shape)
