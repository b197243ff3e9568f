"""Prompt templates in requests: validation of the templates a request gives (or names), the prompt cap, and
prompts cut to what can reach the model. The template sets and how a template is filled are models/prompts.py."""

from __future__ import annotations

import re
from typing import Optional, Union

from models.prompts import DEFAULT_TEMPLATES, TEMPLATE_SETS
from service.backends.base import CHARS_PER_TOKEN
from service.errors import InvalidField, PayloadTooLarge

BUILT_IN = TEMPLATE_SETS  # what `templates` may name: openai_imagenet, simple, default


def resolve_templates(templates: Optional[Union[str, list[str]]], max_templates: int) -> tuple[str, ...]:
    """None -> default; a built-in name -> its set; a list -> validated (each must contain '{}')."""
    if templates is None:
        return DEFAULT_TEMPLATES
    if isinstance(templates, str):
        if templates in BUILT_IN:  # a name costs as many encoder passes as its templates: the same cap applies
            n = len(BUILT_IN[templates])
            _check_template_count(n, max_templates, f"the built-in set {templates!r} has {n} templates")
            return BUILT_IN[templates]
        if "{}" not in templates:
            raise InvalidField(f"templates: unknown built-in set {templates!r}; use one of {sorted(BUILT_IN)} "
                               f"or a list of strings containing '{{}}'")
        templates = [templates]
    if not templates:
        raise InvalidField("templates: give at least one template, or omit the field for the default")
    _check_template_count(len(templates), max_templates, f"{len(templates)} given")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise InvalidField(f"templates: each must contain '{{}}' where the label goes; bad: {bad[0][:80]!r}")
    return tuple(templates)


def _check_template_count(n: int, max_templates: int, what: str) -> None:
    if n > max_templates:
        raise InvalidField(f"templates: {what}, at most {max_templates} allowed (CLIP_MAX_TEMPLATES)")


def check_prompt_count(n_labels: int, n_templates: int, max_prompts: int) -> None:
    """labels x templates prompts are encoded for one classifier: refuse (413) before any prompt is built."""
    n = n_labels * n_templates
    if n > max_prompts:
        raise PayloadTooLarge(f"{n_labels} labels x {n_templates} templates = {n:,} prompts; the limit is "
                              f"{max_prompts:,} per request and per label set (CLIP_MAX_PROMPTS); use fewer labels "
                              f"or templates")


def reachable_chars(context_length: int) -> int:
    """How many leading characters of a squeezed prompt (see `squeeze`) can reach the model, for any tokenizer.

    open_clip's tokenizer (models/tokenizer.py) reads at most 16 characters per context token of text that ftfy
    may change, and of plain ASCII only what its tokens need: with whitespace runs squeezed, every token takes
    at most 32 characters (the longest vocabulary entry) plus one separator, and a long word is read at most 47
    symbols past its last certain token. 77 tokens: 1,232 + 77 x 33 + 47 = 3,820 < 77 x 64 = 4,928. Other
    tokenizers cut every text to 16 characters per token (backends/base.py clip_text), far below this."""
    return context_length * 4 * CHARS_PER_TOKEN


_WHITESPACE_RUN = re.compile(r"[ \t\r\n]{2,}")


def squeeze(text: str) -> str:
    """Runs of ASCII whitespace -> one space (one newline if the run held one). open_clip's cleaning collapses every
    whitespace run to one space anyway, so the tokens are the same; what changes is that 5,000 spaces before a word
    no longer push it out of a cut prompt. Newlines stay, because ftfy fixes text line by line."""
    return _WHITESPACE_RUN.sub(lambda m: "\n" if "\n" in m.group() else " ", text)


def _pieces(template: str, limit: int) -> list[str]:
    """The text around the template's "{}"s, as far as a prompt of `limit` characters can reach: each piece cut to
    `limit`, and no more than `limit` placeholders (each holds a non-empty label, so later ones are never reached)."""
    return [piece[:limit] for piece in template.split("{}", limit)]


def fill_cut(pieces: list[str], label: str, limit: int) -> str:
    """models.prompts.fill(template, label)[:limit] for a non-empty label, without building the longer string:
    1,000 labels of 5,000 characters in 80 templates made 400 MB of prompts that the tokenizer then cut to `limit`
    (tests/service/test_prompt_limits.py checks that both give the same prompts)."""
    parts, size = [], 0
    for i, piece in enumerate(pieces):
        for text in ((label, piece) if i else (piece,)):
            if size >= limit:
                return "".join(parts)
            parts.append(text[:limit - size])
            size += len(parts[-1])
    return "".join(parts)


def prompts_for(labels: tuple[str, ...], templates: tuple[str, ...], limit: int) -> list[str]:
    """Label-major prompts [l0t0, l0t1, ..., l1t0, ...], whitespace runs squeezed and each cut to its first `limit`
    characters (what can reach the model, see reachable_chars), so their memory is bounded by labels x templates x
    limit whatever the input (each label is squeezed once, then cut).
    Labels are non-empty (service/labelset_store.py checks), so the cut fill equals models.prompts.fill, cut."""
    cut = [_pieces(squeeze(t), limit) for t in templates]
    return [fill_cut(pieces, label, limit) for label in (squeeze(raw)[:limit] for raw in labels) for pieces in cut]
