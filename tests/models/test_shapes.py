import re

import numpy as np

from models.data.shapes import AUX_COLOURS, COLOURS, HELDOUT_PAIRS, SHAPES, all_pairs, generate


def test_vocabulary_and_heldout_share():
    assert len(COLOURS) >= 8 and len(SHAPES) >= 8
    assert len(HELDOUT_PAIRS) / len(all_pairs()) >= 0.15
    assert HELDOUT_PAIRS <= set(all_pairs())


def test_generator_is_deterministic_by_seed():
    a = list(generate(7, 20, "train"))
    b = list(generate(7, 20, "train"))
    c = list(generate(8, 20, "train"))
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    assert [s.caption for s in a] != [s.caption for s in c]


def test_training_split_never_draws_or_names_heldout_pairs():
    # whole words: "cyan-coloured cross" must not count as "red cross"
    heldout_phrases = [re.compile(rf"\b{c} {s}\b") for c, s in HELDOUT_PAIRS]
    for s in generate(0, 3000, "train"):
        assert all((o.colour, o.shape) not in HELDOUT_PAIRS for o in s.objects)
        assert not any(p.search(s.caption) for p in heldout_phrases), s.caption


def test_training_data_is_varied():
    samples = list(generate(0, 400, "train"))
    assert len({s.caption for s in samples}) > 250
    assert any(len(s.objects) == 2 for s in samples) and any(len(s.objects) == 1 for s in samples)
    assert {o.size for s in samples for o in s.objects} == {"small", "large"}
    assert len({o.position for s in samples for o in s.objects}) == 5
    seen = {(o.colour, o.shape) for s in samples for o in s.objects}
    assert {p for p in seen if p[0] in COLOURS} == set(all_pairs()) - HELDOUT_PAIRS
    assert {c for c, _ in seen} == set(COLOURS) | set(AUX_COLOURS)


def test_heldout_split_only_draws_heldout_pairs():
    for s in generate(0, 200, "heldout"):
        assert len(s.objects) == 1 and (s.objects[0].colour, s.objects[0].shape) in HELDOUT_PAIRS
