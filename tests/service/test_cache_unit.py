import numpy as np

from service.cache import ByteLRU
from service.metrics import Metrics


def test_lru_evicts_least_recent_within_byte_budget():
    m = Metrics()
    c = ByteLRU("text", max_bytes=3 * (512 + 300), metrics=m)
    for k in "abc":
        c.put((k,), np.zeros(128, np.float32))  # 512 bytes each
    assert c.get(("a",)) is not None  # a is now most recent
    c.put(("d",), np.zeros(128, np.float32))
    assert c.get(("b",)) is None and c.get(("a",)) is not None and len(c) == 3
    assert c.bytes <= c.max_bytes
    assert m.cache_entries.labels("text")._value.get() == 3
    assert m.cache_hits.labels("text")._value.get() == 2 and m.cache_misses.labels("text")._value.get() == 1


def test_entries_larger_than_budget_are_not_cached_and_values_are_read_only():
    c = ByteLRU("labelset", max_bytes=1000)
    c.put(("big",), np.zeros(1000, np.float32))
    assert c.get(("big",)) is None and len(c) == 0
    v = np.ones(4, np.float32)
    c.put(("v",), v)
    assert not c.get(("v",)).flags.writeable
