"""Label sets: what makes labels and templates valid, and the named sets kept by PUT /labelsets/{name} with their
limits (CLIP_MAX_LABELSETS sets, CLIP_LABELSET_CACHE_MB bytes of text).

A label set given inline (/classify's `labels` and `templates`) is checked the same way as one to be stored:
`define` checks its labels, its templates and the prompt cap before any model work; `check_name` a stored set's
name.

A PUT computes its classifier between the limit check and the insert, and other PUTs run meanwhile. So the
room is reserved before the computation (`with store.reserve(...)`) and given back if the PUT fails or its
client leaves. Every name is charged the larger of its stored definition and any definition pending for it,
so the limits hold whatever the interleaving of PUTs and DELETEs: a reservation is only granted when the
charge stays within the limits, and a commit, release or delete never raises the charge.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterator, Optional, Protocol, Union

from service.errors import InvalidField, NotFound, PayloadTooLarge
from service.limits import check_count
from service.settings import Settings
from service.templates import check_prompt_count, resolve_templates

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the whole name (fullmatch): "$" would let a final "\n" through


@dataclass(frozen=True)
class LabelSet:
    """Labels and the templates their prompts are made with, valid (see `define`)."""

    labels: tuple[str, ...]
    templates: tuple[str, ...]

    @property
    def text_bytes(self) -> int:
        return sum(len(x.encode()) for x in (*self.labels, *self.templates))


def define(labels: list[str], templates: Optional[Union[str, list[str]]], s: Settings) -> LabelSet:
    """A request's labels and templates, checked before any model work: at most CLIP_MAX_LABELS labels, valid
    templates (service/templates.py), and labels x templates within CLIP_MAX_PROMPTS (413 before any prompt is
    built)."""
    cleaned = clean_labels(labels, s.max_labels)
    resolved = resolve_templates(templates, s.max_templates)
    check_prompt_count(len(cleaned), len(resolved), s.max_prompts)
    return LabelSet(cleaned, resolved)


def clean_labels(labels: list[str], max_labels: int) -> tuple[str, ...]:
    """Labels as given (order kept); empty ones and duplicates are errors, long ones are cut later (the prompts)."""
    check_count("labels", len(labels), max_labels, "CLIP_MAX_LABELS")
    stripped = [label.strip() for label in labels]
    if any(not label for label in stripped):
        raise InvalidField("labels: every label must be a non-empty string", field="labels")
    if len(set(stripped)) != len(stripped):
        dup = next(label for label in stripped if stripped.count(label) > 1)
        raise InvalidField(f"labels: {dup[:80]!r} appears more than once", field="labels")
    return tuple(stripped)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidField("name: 1-64 characters from letters, digits, '_', '.', '-'", field="name")
    return name


@dataclass(frozen=True)
class StoredLabelSet:
    name: str
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    fingerprint: str  # of the model whose prompt embeddings made its classifier

    @property
    def text_bytes(self) -> int:
        return LabelSet(self.labels, self.templates).text_bytes

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

    def require(self, name: str) -> StoredLabelSet:
        """The set named `name`, or a 404 that says how to create it."""
        found = self._sets.get(name)
        if found is None:
            raise NotFound(f"no label set named {name!r}; create it with PUT /labelsets/{name}")
        return found

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


class LabelSets(Protocol):
    """What routes ask of the label sets, wherever they are kept: in this process (LocalLabelSets) or in the engine
    processes (service/engine_client.py RemoteLabelSets, with CLIP_WORKERS >= 1)."""

    async def get(self, name: str) -> StoredLabelSet: ...  # or 404

    async def list(self) -> list[StoredLabelSet]: ...

    async def delete(self, name: str) -> None: ...  # or 404

    async def put(self, name: str, labelset: LabelSet, compute: Callable[[], Awaitable[object]],
                  fingerprint: str) -> StoredLabelSet: ...


class LocalLabelSets:
    """A LabelSetStore behind the routes' async interface."""

    def __init__(self, store: LabelSetStore):
        self.store = store

    async def get(self, name: str) -> StoredLabelSet:
        return self.store.require(name)

    async def list(self) -> list[StoredLabelSet]:
        return self.store.values()

    async def delete(self, name: str) -> None:
        self.store.require(name)
        self.store.delete(name)

    async def put(self, name: str, labelset: LabelSet, compute: Callable[[], Awaitable[object]],
                  fingerprint: str) -> StoredLabelSet:
        """Store `labelset` under `name` once `compute()` (its classifier, into the cache) has finished. Room is held
        from before the computation to the insert: concurrent PUTs cannot overshoot the limits."""
        with self.store.reserve(name, labelset.text_bytes) as reservation:
            await compute()
            stored = StoredLabelSet(name, labelset.labels, labelset.templates, fingerprint)
            reservation.commit(stored)
        return stored
