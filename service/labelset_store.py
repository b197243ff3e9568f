"""Named label sets and their limits (CLIP_MAX_LABELSETS sets, CLIP_LABELSET_CACHE_MB bytes of text).

A PUT computes its classifier between the limit check and the insert, and other PUTs run meanwhile. So the
room is reserved before the computation (`with store.reserve(...)`) and given back if the PUT fails or its
client leaves. Every name is charged the larger of its stored definition and any definition pending for it,
so the limits hold whatever the interleaving of PUTs and DELETEs: a reservation is only granted when the
charge stays within the limits, and a commit, release or delete never raises the charge.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from service.errors import PayloadTooLarge


@dataclass(frozen=True)
class StoredLabelSet:
    name: str
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    fingerprint: str

    @property
    def text_bytes(self) -> int:
        return sum(len(x.encode()) for x in (*self.labels, *self.templates))

    def info(self) -> dict:
        return {"name": self.name, "labels": list(self.labels), "templates": list(self.templates),
                "fingerprint": self.fingerprint}


class Reservation:
    """Room for one label set, held while its classifier is computed; `commit` stores the set."""

    def __init__(self, store: "LabelSetStore", name: str):
        self.store, self.name = store, name

    def commit(self, labelset: StoredLabelSet) -> None:
        assert labelset.name == self.name, "a reservation stores the name it was made for"
        self.store._sets[self.name] = labelset


class LabelSetStore:
    """Label sets by name, in insertion order, bounded by count and by bytes of text."""

    def __init__(self, max_sets: int, max_bytes: int):
        self.max_sets, self.max_bytes = max_sets, max_bytes
        self._sets: OrderedDict[str, StoredLabelSet] = OrderedDict()
        self._pending: dict[str, list[int]] = {}  # name -> text bytes of each PUT in progress for it

    def get(self, name: str) -> Optional[StoredLabelSet]:
        return self._sets.get(name)

    def values(self) -> list[StoredLabelSet]:
        return list(self._sets.values())

    def __len__(self) -> int:
        return len(self._sets)

    def delete(self, name: str) -> bool:
        return self._sets.pop(name, None) is not None

    def _charged_names(self) -> set[str]:
        return set(self._sets) | set(self._pending)

    def _charged_bytes(self, extra: dict[str, int]) -> int:
        names = self._charged_names() | set(extra)
        return sum(max([self._sets[n].text_bytes if n in self._sets else 0, extra.get(n, 0),
                        *self._pending.get(n, ())]) for n in names)

    @contextmanager
    def reserve(self, name: str, text_bytes: int) -> Iterator[Reservation]:
        """Hold room for `name` (text_bytes of labels + templates) or refuse with 413; released on exit."""
        if name not in self._charged_names() and len(self._charged_names()) >= self.max_sets:
            raise PayloadTooLarge(f"already {len(self._charged_names())} label sets, stored or being stored "
                                  f"(CLIP_MAX_LABELSETS={self.max_sets}); delete one first")
        charged = self._charged_bytes({name: text_bytes})
        if charged > self.max_bytes:
            raise PayloadTooLarge(f"label sets would hold {charged:,} bytes of text, over {self.max_bytes:,} "
                                  f"(CLIP_LABELSET_CACHE_MB); delete one first")
        pending = self._pending.setdefault(name, [])
        pending.append(text_bytes)
        try:
            yield Reservation(self, name)
        finally:
            pending.remove(text_bytes)
            if not pending:
                del self._pending[name]
