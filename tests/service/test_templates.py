"""README: `openai_imagenet` is "the paper's 80 ImageNet templates, as shipped by open_clip". And how templates a
client sends are checked: a string or a list, each with its "{}", within CLIP_MAX_TEMPLATES, and labels x
templates within CLIP_MAX_PROMPTS; each refusal says what to change."""

from __future__ import annotations

import pytest
from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from service.errors import InvalidField, PayloadTooLarge
from service.templates import BUILT_IN, DEFAULT_TEMPLATES, check_prompt_count, resolve_templates

# The 80 templates of Radford et al. (2021), in the order of openai/CLIP's notebook
# notebooks/Prompt_Engineering_for_ImageNet.ipynb: a reference that does not come from open_clip.
PAPER = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
]


def test_openai_imagenet_is_the_papers_80_templates():
    served = resolve_templates("openai_imagenet", max_templates=100)
    assert len(served) == 80 and len(set(served)) == 80
    assert list(served) == PAPER
    assert list(served) == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES], "as open_clip ships them"
    for exact in ("a bad photo of a {}.", "itap of a {}.", "a photo of the large {}.", "a {} in a video game."):
        assert exact in served


def test_the_other_built_in_sets():
    assert list(resolve_templates("simple", max_templates=100)) == [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES]
    assert resolve_templates(None, max_templates=100) == DEFAULT_TEMPLATES == ("a photo of a {}.",)
    assert set(BUILT_IN) == {"openai_imagenet", "simple", "default"}


def test_a_template_string_is_one_template():
    assert resolve_templates("a drawing of a {}", max_templates=1) == ("a drawing of a {}",)
    assert resolve_templates(["a {}", "the {}"], max_templates=2) == ("a {}", "the {}")


@pytest.mark.parametrize("templates,message", [
    ("imagenet", "templates: unknown built-in set 'imagenet'; use one of ['default', 'openai_imagenet', 'simple'] "
                 "or a list of strings containing '{}'"),
    ([], "templates: give at least one template, or omit the field for the default"),
    (["a {}", "no placeholder " * 10, "also none"],
     f"templates: each must contain '{{}}' where the label goes; bad: {('no placeholder ' * 10)[:80]!r}"),
    (["{} a", "{} b", "{} c", "{} d"], "templates: 4 given, at most 3 allowed (CLIP_MAX_TEMPLATES)"),
    ("openai_imagenet", "templates: the built-in set 'openai_imagenet' has 80 templates, at most 3 allowed "
                        "(CLIP_MAX_TEMPLATES)"),
])
def test_refused_templates_say_what_to_change(templates, message):
    assert resolve_templates(["{} a", "{} b", "{} c"], max_templates=3)  # the cap itself is allowed
    with pytest.raises(InvalidField) as err:
        resolve_templates(templates, max_templates=3)
    assert err.value.message == message


def test_labels_times_templates_up_to_the_prompt_cap():
    check_prompt_count(10, 10, 100)
    with pytest.raises(PayloadTooLarge) as err:
        check_prompt_count(101, 10, 1000)
    assert err.value.message == ("101 labels x 10 templates = 1,010 prompts; the limit is 1,000 per request and per "
                                 "label set (CLIP_MAX_PROMPTS); use fewer labels or templates")
