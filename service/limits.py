"""Counts a request may carry (images, texts, labels): one check, one wording for every limit."""

from __future__ import annotations

from service.errors import InvalidField, PayloadTooLarge


def check_count(kind: str, n: int, limit: int, setting: str) -> None:
    """None is a 422 naming the field; more than `limit` a 413 naming the setting that bounds it."""
    if n == 0:
        raise InvalidField(f"{kind}: give at least one")
    if n > limit:
        raise PayloadTooLarge(f"{n} {kind} in one request; the limit is {limit} ({setting})")
