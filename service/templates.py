"""Prompt templates: built-in sets and validation of user-supplied ones."""

from __future__ import annotations

from typing import Optional, Union

from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from service.errors import InvalidField

DEFAULT_TEMPLATES = ("a photo of a {}.",)
BUILT_IN: dict[str, tuple[str, ...]] = {  # open_clip ships the paper's 80 ImageNet templates as lambdas
    "openai_imagenet": tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES),
    "simple": tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES),
    "default": DEFAULT_TEMPLATES,
}


def resolve_templates(templates: Optional[Union[str, list[str]]], max_templates: int) -> tuple[str, ...]:
    """None -> default; a built-in name -> its set; a list -> validated (each must contain '{}')."""
    if templates is None:
        return DEFAULT_TEMPLATES
    if isinstance(templates, str):
        if templates in BUILT_IN:
            return BUILT_IN[templates]
        if "{}" not in templates:
            raise InvalidField(f"templates: unknown built-in set {templates!r}; use one of {sorted(BUILT_IN)} "
                               f"or a list of strings containing '{{}}'")
        templates = [templates]
    if not templates:
        raise InvalidField("templates: give at least one template, or omit the field for the default")
    if len(templates) > max_templates:
        raise InvalidField(f"templates: {len(templates)} given, at most {max_templates} allowed")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise InvalidField(f"templates: each must contain '{{}}' where the label goes; bad: {bad[0][:80]!r}")
    return tuple(templates)


def prompts_for(labels: tuple[str, ...], templates: tuple[str, ...]) -> list[str]:
    """Label-major prompts: [l0t0, l0t1, ..., l1t0, ...]. replace(), not format(): labels may hold braces."""
    return [t.replace("{}", label) for label in labels for t in templates]
