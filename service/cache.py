"""A least-recently-used cache bounded by bytes (embeddings and classifier matrices are numpy arrays)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable, Optional

import numpy as np

from service.metrics import Metrics

ENTRY_OVERHEAD_BYTES = 200  # dict slot + key tuple + array header, roughly


def text_bytes(key: Hashable) -> int:
    """UTF-8 bytes of the text in a key (strings, nested in tuples): a CJK or emoji prompt holds 2-4 bytes per
    character in memory, and UTF-8 never counts fewer than Python stores. Lone surrogates count as 3 bytes
    ("surrogatepass"): they cannot be UTF-8 encoded, but a key may still hold one."""
    if isinstance(key, str):
        return len(key) if key.isascii() else len(key.encode("utf-8", "surrogatepass"))
    if isinstance(key, tuple):
        return sum(text_bytes(k) for k in key)
    return text_bytes(str(key))


class ByteLRU:
    """LRU of numpy arrays whose total size stays within `max_bytes`. Thread-safe."""

    def __init__(self, name: str, max_bytes: int, metrics: Optional[Metrics] = None):
        self.name, self.max_bytes, self.metrics = name, int(max_bytes), metrics
        self._data: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self.bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    @staticmethod
    def _size(key: Hashable, value: np.ndarray) -> int:
        return int(value.nbytes) + text_bytes(key) + ENTRY_OVERHEAD_BYTES

    def get(self, key: Hashable) -> Optional[np.ndarray]:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
        if self.metrics:
            (self.metrics.cache_hits if value is not None else self.metrics.cache_misses).labels(self.name).inc()
        return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        size = self._size(key, value)
        if size > self.max_bytes:
            return  # larger than the whole budget: never cached
        value.setflags(write=False)
        with self._lock:
            if key in self._data:
                self.bytes -= self._sizes.pop(key)
                del self._data[key]
            self._data[key] = value
            self._sizes[key] = size
            self.bytes += size
            while self.bytes > self.max_bytes:
                old, _ = self._data.popitem(last=False)
                self.bytes -= self._sizes.pop(old)
        self._report()

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self.bytes = 0
        self._report()

    def _report(self) -> None:
        if self.metrics:
            self.metrics.cache_entries.labels(self.name).set(len(self._data))
            self.metrics.cache_bytes.labels(self.name).set(self.bytes)
