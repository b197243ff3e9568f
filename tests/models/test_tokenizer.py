"""models.tokenizer gives open_clip's ids exactly, for every kind of text, with bounded work on hostile ones."""

from __future__ import annotations

import html
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer

from models.tokenizer import ClipTokenizer, _LongWord, clean, exact_equivalent

ROOT = Path(__file__).resolve().parents[2]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# pieces the random strings are made of: every cleaning step of open_clip's has something to do
ATOMS = ["a", "x", "The", " ", "  ", "\t", "\n", "\r\n", "\r", "'s", "'re", "'", "<", ">", "&", "&amp;", "&amp;amp;",
         "&lt;", "&#65;", "&#x41;", "&#0000000065;", "&ltimes;", "&notit;", "&nbsp;", "é", "É", "Σ", "ΣΑΣ", "İ", "ß",
         "ﬁ", "\u0301", "e\u0301", "😀", "👍🏽", "日本", "中文", "Ã©", "â€™", "Ã ", "\x80", "\x9d", "\x00", "\x1c",
         "\x1b[31m", "\u3000", "\xa0", "\u200b", "\ufeff", "123", "3.14", "!!", "...", "<start_of_text>",
         "<END_OF_TEXT>", "_", "-", "\u2028", "\x85", "\x0b", "\x0c", "ａｂｃ", "\ud83d\ude00", "\ud800", "x" * 40,
         "supercalifragilistic" * 3, "#", ";", "&#", "&#x", "ǅ", "Ⅻ", "²", "٣", "🇫🇷", "Привет", "مرحبا", "שלום",
         "नमस्ते", "안녕", "ไทย", "Ελληνικά"]


@pytest.fixture(scope="module")
def ours() -> ClipTokenizer:
    return ClipTokenizer()


@pytest.fixture(scope="module")
def theirs() -> SimpleTokenizer:
    return SimpleTokenizer()


def _vocabulary_words(tok: ClipTokenizer) -> list[str]:
    """Every entry of the BPE vocabulary as text (those that are whole UTF-8 characters)."""
    byte_of = {c: b for b, c in tok.byte_encoder.items()}
    words = []
    for entry in tok.decoder[:-2]:
        try:
            words.append(bytes(byte_of[c] for c in entry.removesuffix("</w>")).decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return words


def _handmade() -> list[str]:
    return [
        "", " ", "   ", "\n", "\t\r\n \u3000\xa0", "a photo of a cat", "A Photo Of A CAT.", "x" * 500, "x" * 30_000,
        "ab" * 10_000, "x" * 77, "word " * 1000, " " * 5000 + "word", "\n" * 5000 + "word", "\t" * 3000 + "a b",
        "\u3000" * 100 + "word", "!" * 3000, "?!." * 1000, "..." * 500 + "end", "-_-" * 300, "😀" * 500,
        "👍🏽🇫🇷" * 200, "日本語のテキスト" * 50, "Привет мир", "مرحبا بالعالم", "crème brûlée à la carte",
        "Donaudampfschifffahrtsgesellschaftskapitänsmützenabzeichen", "ΣΑΣ ΟΔΟΣ σας", "İstanbul İİİ",
        "&amp;amp;lt;b&gt;", "&lt;b&gt;bold&lt;/b&gt;", "&#0000000000000000000000065;", "&#x" + "0" * 1000 + "41;",
        "a < b\n&amp;amp;", "&amp;amp;\na < b\n&amp;amp;", "<start_of_text>hi<end_of_text>",
        "it's they're we've I'm you'll he'd", "'s's's'", "3.14159265358979", "1" * 1000, "a1b2c3" * 300,
        "Ã©tÃ© â€™", "\x00\x01\x1c\x1f\x7f text", "\x1b[31mred\x1b[0m", "ﬁne ﬂow ﬃ", "ＬＯＵＤ　ＮＯＩＳＥＳ",
        "e\u0301" * 200, "\ud800 lone", "a\u2028b\u2029c\x85d", "x" * 30_000 + "é", "x" * 2000 + " é",
        "é" * 3000, "word " * 400 + "é", "a" * 1231 + "&amp;", "\n".join(["é"] * 200), "\n".join(["\x00"] * 70) + "x",
        "\n".join(["a\x00"] * 200),
    ]


def _random_mixes(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 60))) for _ in range(n)]


def _random_words(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabets = ["ab", "abc", "xyz", LETTERS, "!?.,'", "éèà", "日本語", "😀🎉", "-_=+*", "th", "ing"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(25, 400)))
            for alphabet in (rng.choice(alphabets) for _ in range(n))]


def _mismatches(ours: ClipTokenizer, theirs: SimpleTokenizer, texts: list[str], length: int = 77) -> list[str]:
    got, want = ours(texts, length), theirs(texts, length).numpy()
    return [repr(t[:80]) for t, a, b in zip(texts, got, want) if not np.array_equal(a, b)]


def test_ids_equal_open_clips_on_a_corpus_of_over_10000_strings(ours, theirs):
    corpus = _vocabulary_words(ours) + _handmade() + _random_mixes(3000) + _random_words(300)
    assert len(corpus) > 50_000
    bad = _mismatches(ours, theirs, corpus)
    assert not bad, f"{len(bad)} of {len(corpus)} differ, e.g. {bad[:5]}"


def test_ids_equal_open_clips_with_a_short_context(ours, theirs):
    """The bundled model's context is 24 tokens: the cut lands elsewhere in every text."""
    corpus = _handmade() + _random_mixes(1000, seed=1)
    assert not _mismatches(ours, theirs, corpus, 24)


@pytest.mark.parametrize("length", [1, 2, 5, 20, 75])
def test_a_long_word_read_in_part_gives_its_first_tokens(ours, theirs, length):
    """_LongWord stops reading once the first tokens are certain: they equal open_clip's BPE of the whole word."""
    for word in _random_words(150, seed=length):
        full = [ours.encoder[t] for t in theirs.bpe(ours.symbols(word)).split(" ")]
        assert _LongWord(ours, word, 0, len(word)).encode(length) == full[:length], word


def test_the_pair_check_equals_merging_the_pair(ours):
    """compatible() (undoing merges, rust-gems' rule) answers as BPE of the joined text does."""
    rng = random.Random(0)
    entries = range(len(ours.decoder) - 2)
    left = [i for i in entries if not ours.decoder[i].endswith("</w>")]
    pairs = [(rng.choice(left), rng.choice(entries)) for _ in range(20_000)]
    for word in _random_words(300, seed=3):  # pairs that really occur next to each other
        ids = ours._bpe_word(word)
        pairs += list(zip(ids, ids[1:]))
    assert [ours.compatible(a, b) for a, b in pairs] == [ours.compatible_by_merging(a, b) for a, b in pairs]


def _hostile(per: int, rng: random.Random) -> dict[str, str]:
    """Texts that make some stage work hard, `per` characters each (see the README's Security section)."""
    return {
        "random letters, one word": "".join(rng.choices(LETTERS, k=per)),
        "spaces, then a word": " " * (per - 4) + "word",
        "nested &amp;": ("&" + "amp;" * per)[:per],
        "C1 controls": "\x80\x81" * (per // 2),
        "emoji run": "😀" * per,
        "NUL lines": "\x00\n" * (per // 2),
        "random symbols": "".join(rng.choices("!?.,'-_=+*", k=per)),
        "letters, then é": "".join(rng.choices(LETTERS, k=per - 1)) + "é",
    }


def test_worst_case_tokenising_time_is_bounded(ours):
    """A 20 MB request of 256 texts costs ~2 s at worst on a 2-core box (README); here 16 texts of the same
    size per kind, and one 20 MB text, against generous bounds. open_clip itself needs ~20 s for one 30,000-letter
    random word and ftfy ~40 s for a 16,000-character line of nested entities."""
    rng = random.Random(0)
    per = 20_000_000 // 256
    slowest = {}
    for kind in _hostile(per, rng):
        texts = [_hostile(per, rng)[kind] for _ in range(16)]
        start = time.perf_counter()
        assert ours(texts).shape == (16, 77)
        slowest[kind] = time.perf_counter() - start
    start = time.perf_counter()
    ours(["".join(rng.choices(LETTERS, k=1000)) * 20_000])
    slowest["one 20 MB word"] = time.perf_counter() - start
    assert max(slowest.values()) < 5.0, slowest


def test_past_the_clean_budget_the_text_is_cut(ours, theirs):
    """The documented limit: ftfy reads at most 16 x context_length characters of text that is not plain ASCII
    (a line without tokens counting at least 16), so a text needing more than that before its tokens is cut."""
    within = ["\n".join(["\x00"] * 70) + "x", "&#x" + "0" * 1000 + "41;", "\u3000" * 1200 + "word"]
    beyond = ["\n".join(["\x00"] * 80) + "x", "&#x" + "0" * 5000 + "41;", "\u3000" * 1300 + "word"]
    assert not _mismatches(ours, theirs, within)
    assert len(_mismatches(ours, theirs, beyond)) == len(beyond)


def test_plain_text_before_a_late_non_ascii_character_is_still_exact(theirs):
    """Past the clean budget only the plain start of a line is read exactly; with a budget of 40 characters a
    line of 2,000 plain characters and one 'é' at its end still gives open_clip's tokens."""
    small = ClipTokenizer(clean_budget=40)
    texts = ["a photo of a cat " * 120 + "é", "x" * 2000 + "é", "&amp; " * 5 + "word " * 400 + "é"]
    assert not _mismatches(small, theirs, texts[:2])
    assert _mismatches(small, theirs, texts[2:])  # an entity early in the line: cleaned in part, not exact


def test_numeric_references_too_long_for_int_mean_what_html_unescape_says(ours, theirs):
    """open_clip raises ValueError (Python's 4,300-digit limit on int()); the cleaning here gives html.unescape's
    meaning instead (such a text is past the clean budget anyway, so its tokens are not compared)."""
    for long, meaning in [("&#" + "1" * 5000, "&#99999999;"), ("&#" + "0" * 5000 + "65;", "&#65;")]:
        with pytest.raises(ValueError):
            theirs([long])
        assert clean(long) == clean(meaning) == html.unescape(meaning).lower()
        assert ours([long]).shape == (1, 77)


def test_only_open_clips_plain_tokenizer_is_replaced():
    assert isinstance(exact_equivalent(SimpleTokenizer()), ClipTokenizer)
    assert exact_equivalent(SimpleTokenizer(context_length=24)).context_length == 24
    assert exact_equivalent(SimpleTokenizer(clean="canonicalize")) is None
    assert exact_equivalent(SimpleTokenizer(additional_special_tokens=["<x>"])) is None
    assert exact_equivalent(lambda texts: texts) is None


def test_the_module_imports_neither_torch_nor_open_clip():
    code = ("import sys, models.tokenizer as t; t.ClipTokenizer()(['a cat']); "
            "print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_exports_own_vocabulary_gives_open_clips_ids_on_the_corpus(bundled, ours, tmp_path):
    """What an onnx server tokenises with: the vocabulary file the export wrote, loaded from the export directory
    (export.manifest.load_tokenizer). Its vocabulary and merges are those of the tokenizer checked against open_clip
    on every vocabulary entry above; on hand-made and random texts it gives open_clip's own ids of ViT-B-32
    (context 77), and at the bundled model's context (24) what the torch server tokenises with (the same bounded
    ClipTokenizer, whose 16-characters-per-token cleaning budget is documented in models/tokenizer.py)."""
    from types import SimpleNamespace

    import open_clip

    from export.manifest import CLIP_BPE_VOCAB, load_tokenizer
    from export.onnx_export import write_tokenizer_vocab

    record = write_tokenizer_vocab(bundled, tmp_path)
    assert record == {"type": "clip_bpe", "vocab": CLIP_BPE_VOCAB} and (tmp_path / CLIP_BPE_VOCAB).is_file()
    for length, theirs in ((77, open_clip.get_tokenizer("ViT-B-32")), (24, exact_equivalent(bundled.tokenizer))):
        loaded = load_tokenizer(SimpleNamespace(tokenizer=record, context_length=length), tmp_path)
        assert isinstance(loaded, ClipTokenizer) and loaded.context_length == length
        assert loaded.encoder == ours.encoder and loaded.bpe_ranks == ours.bpe_ranks
        corpus = _handmade() + _random_mixes(1000, seed=2) + _random_words(200, seed=2)
        got, want = loaded(corpus), np.asarray(theirs(corpus))
        bad = [repr(t[:80]) for t, a, b in zip(corpus, got, want) if not np.array_equal(a, b)]
        assert not bad, f"{len(bad)} of {len(corpus)} differ at context {length}, e.g. {bad[:5]}"
