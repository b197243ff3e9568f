"""The caches' byte budgets count the UTF-8 bytes of their keys' text, not characters."""

from __future__ import annotations

import numpy as np

from service.cache import ByteLRU


def _bytes_for(key) -> int:
    cache = ByteLRU("text", max_bytes=10**6)
    cache.put(key, np.zeros(4, np.float32))
    return cache.bytes


def test_keys_count_utf8_bytes_not_characters():
    ascii_ = _bytes_for(("fp", "a" * 1000))
    assert _bytes_for(("fp", "é" * 1000)) - ascii_ == 1000  # 2 bytes each
    assert _bytes_for(("fp", "青" * 1000)) - ascii_ == 2000  # 3 bytes each
    assert _bytes_for(("fp", "🙂" * 1000)) - ascii_ == 3000  # 4 bytes each


def test_label_set_keys_count_their_texts_and_lone_surrogates_do_not_break_counting():
    assert _bytes_for(("fp", ("ab", "青"), ("{}",))) - _bytes_for(("fp",)) == 2 + 3 + 2
    assert _bytes_for(("fp", "\ud800" * 10)) - _bytes_for(("fp",)) == 30  # cannot be UTF-8 encoded, still counted
