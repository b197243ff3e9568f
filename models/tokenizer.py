"""open_clip's CLIP tokenizer (``SimpleTokenizer``), reproduced without torch, with bounded work on any input.

open_clip cleans a text (ftfy, HTML unescaping twice, whitespace, lower case), splits it into words with one
regex, runs byte-pair encoding (BPE) on each word and keeps the first ``context_length - 2`` tokens between
start and end tokens. Its BPE is quadratic in the length of a word (30,000 random letters: ~20 s) and ftfy is
quadratic on nested HTML entities, so serving it raw lets one request hold a CPU for minutes. This module
produces the same ids but stops as soon as it has enough tokens:

- Plain ASCII (printable, tab, CR, newline; no ``&``) is left unchanged by ftfy and by HTML unescaping, so it
  is never given to them and is read only as far as needed, however long it is.
- Other text goes to ftfy line by line (its own unit: ftfy fixes each line independently), at most
  ``clean_budget`` characters per text (default 16 per context token, what the server always allowed; a line
  without tokens counts at least 16). Only a text that needs tokens from beyond that budget, or from a line
  longer than what is left of it, can differ from open_clip: that line is cleaned in part and the rest of the
  text is dropped.
- A long word is encoded incrementally (see ``_LongWord``), in time linear in the part read, which stops once
  the first tokens are certain whatever follows.

``tests/models/test_tokenizer.py`` compares the ids with open_clip's on >10,000 strings. Imports neither torch
nor open_clip (only open_clip's vocabulary file, found without importing the package).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import ftfy
import numpy as np
import regex

DEFAULT_CONTEXT_LENGTH = 77
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
CHARS_PER_TOKEN = 16  # the default clean budget: context_length x this many non-plain characters
SHORT_WORD = 24  # characters; shorter words take open_clip's own BPE (cached), longer ones _LongWord
# open_clip's word pattern; on plain ASCII (already lower case) its ASCII equivalent, for the stdlib `re`,
# which is ~3x faster than `regex` and lets whitespace be skipped in one scan.
_WORD = regex.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
                      regex.IGNORECASE)
_ASCII_WORD = re.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")
_PLAIN = re.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*")  # what ftfy and html.unescape leave unchanged
_NOT_SPACE = re.compile(r"[^ \t\r\n]")
# html.unescape's own pattern; numeric references are parsed by int(), which refuses more than 4,300 digits
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")
_ZEROS = re.compile(r"(&#[xX]?)0+(?=[0-9a-fA-F])")


def default_bpe_path() -> Path:
    """open_clip's vocabulary file, located without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed; pass bpe_path= (bpe_simple_vocab_16e6.txt.gz)")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """open_clip's reversible map from the 256 byte values to printable characters (one per byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _unescape_ref(match: re.Match) -> str:
    """One match of html.unescape's pattern, replaced as html.unescape does, without int()'s digit limit."""
    ref = _ZEROS.sub(r"\1", match.group(0))  # leading zeros do not change the code point
    digits = ref[3:] if ref[2:3] in ("x", "X") else ref[2:]
    if ref.startswith("&#") and len(digits.rstrip(";")) > 12:  # > 0x10FFFF whatever it is: U+FFFD
        return "\ufffd"
    return html.unescape(ref)


def _unescape(text: str) -> str:
    return _CHARREF.sub(_unescape_ref, text) if "&" in text else text


def clean(text: str) -> str:
    """open_clip's 'lower' cleaning of text that ftfy has already fixed: HTML unescaped twice, whitespace
    collapsed, lower case."""
    return " ".join(_unescape(_unescape(text)).split()).lower()


def _split_token(token: str) -> tuple[str, ...]:
    """A vocabulary entry -> its byte symbols; the last one carries the end-of-word mark if the entry does."""
    if token.endswith("</w>"):
        return tuple(token[:-5]) + (token[-5:],)
    return tuple(token)


class ClipTokenizer:
    """Texts -> int64 [B, context_length] ids, equal to open_clip's SimpleTokenizer(context_length)(texts)."""

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH, bpe_path: str | Path | None = None,
                 clean_budget: int | None = None):
        self.context_length = context_length
        self.bpe_path = Path(bpe_path or default_bpe_path())  # what another process needs to build the same tokenizer
        self.clean_budget = CHARS_PER_TOKEN * context_length if clean_budget is None else clean_budget
        self.byte_encoder = bytes_to_unicode()
        merges = gzip.open(self.bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1:49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = {token: i for i, token in enumerate(vocab)}  # same as open_clip's (fingerprinted there)
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token_id, self.eot_token_id = self.encoder[SPECIAL_TOKENS[0]], self.encoder[SPECIAL_TOKENS[1]]
        self.vocab_size = len(self.encoder)
        self.max_token = max(len(_split_token(t)) for t in vocab[:-len(SPECIAL_TOKENS)])  # 32 symbols
        # every ending of a vocabulary entry: looking for the entries that end at a position stops at the first
        # symbol that no entry ends with, instead of trying all 32 lengths
        self.endings = {t[-n:] for t in vocab[:-len(SPECIAL_TOKENS)] for n in range(1, len(t) + 1)}
        self._bpe_cached = lru_cache(maxsize=1 << 16)(self._bpe_word)
        self.decoder = list(self.encoder)
        # ids are merge ranks (bytes first, then one id per merge, in order), so id order is BPE's merge order;
        # merged[left << 16 | right] is the id the pair merges into, left_of/right_of undo a merge (bytes: self)
        self.merged = {self.encoder[a] << 16 | self.encoder[b]: self.encoder[a + b] for a, b in merges}
        self.left_of = list(range(512)) + [self.encoder[a] for a, _ in merges]
        self.right_of = list(range(512)) + [self.encoder[b] for _, b in merges]
        self._valid: dict[int, bool] = {}

    # --- the public surface ---------------------------------------------------------------------------------
    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Like open_clip's: SOT + the first context_length - 2 tokens + EOT, zero padding; int64 [B, L]."""
        texts = [texts] if isinstance(texts, str) else texts
        length = context_length or self.context_length
        out = np.zeros((len(texts), length), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.sot_token_id] + self.encode(text, length - 2) + [self.eot_token_id]
            out[i, :len(ids)] = ids
        return out

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """The first `limit` BPE ids of `text` (all of them if None), as open_clip's SimpleTokenizer.encode."""
        limit = len(text) * 4 + 1 if limit is None else limit  # no text has more tokens than UTF-8 bytes
        ids: list[int] = []
        pos, budget, no_html = 0, self.clean_budget, False
        while pos < len(text) and len(ids) < limit:
            end = _PLAIN.match(text, pos).end()  # the first character that ftfy or unescaping might change
            line = max(pos, text.rfind("\n", pos, end) + 1) if end < len(text) else end  # its line's start
            if line > pos:  # plain lines, however long: only the word pattern reads them, and only as needed
                no_html = no_html or text.find("<", pos, line) >= 0
                self._plain(text, pos, line, ids, limit)
                pos = line
                continue
            line_end = text.find("\n", end) + 1 or len(text)
            no_html = no_html or text.find("<", pos, line_end) >= 0  # ftfy stops unescaping from the first "<" on
            if line_end - pos <= budget:  # the whole line, cleaned exactly as open_clip cleans it
                before = len(ids)
                self._fixed(text[pos:line_end], no_html, ids, limit)
                # a line without tokens costs at least 16, so empty lines cannot make thousands of ftfy calls
                budget -= line_end - pos if len(ids) > before else max(line_end - pos, CHARS_PER_TOKEN)
                pos = line_end
                continue
            # Over budget. The line's plain start is exact (ftfy only changes what follows it) and gives every
            # token that is certain whatever follows. If those are not enough, ftfy reads on from its last space
            # with what is left of the budget (no longer exact: ftfy would have seen the whole line), and the text
            # ends where the budget does.
            certain = ids.copy()
            self._plain(text, pos, end, certain, limit, cut=True)
            if len(certain) >= limit:
                ids[:] = certain
                break
            cut = max(text.rfind(" ", pos, end), text.rfind("\t", pos, end))
            if cut > pos:
                self._plain(text, pos, cut, ids, limit)
                pos = cut
            stop = self._within(text, pos, line_end, budget)
            if len(ids) < limit and budget > 0:
                cut_word = stop < line_end and not text[stop - 1].isspace()
                self._fixed(text[pos:stop], no_html, ids, limit, cut_word)
            if stop < line_end or budget <= 0:
                break
            budget -= max(stop - pos, CHARS_PER_TOKEN)
            pos = line_end
        return ids[:limit]

    # --- cleaning and words ---------------------------------------------------------------------------------
    @staticmethod
    def _within(text: str, start: int, end: int, budget: int) -> int:
        """Where to stop reading text[start:end] with `budget` characters: after a space when there is one."""
        stop = min(end, start + budget)
        space = text.rfind(" ", start, stop)
        return space + 1 if stop < end and space > start else stop

    def _plain(self, text: str, start: int, end: int, ids: list[int], limit: int, cut: bool = False) -> None:
        """Words of plain ASCII text[start:end], which ftfy and unescaping leave unchanged. `cut`: the line goes
        on with text ftfy may change, which may join its last character (a combining accent), its last word,
        or its last 3 characters (a contraction like 're): only what comes before counts."""
        low = text[start:end].lower()  # ASCII: lower case letter by letter
        safe = len(low) - 3 if cut else len(low)
        pos = 0
        while len(ids) < limit:
            nxt = _NOT_SPACE.search(low, pos)
            if nxt is None:
                return
            m = _ASCII_WORD.match(low, nxt.start())
            if m.end() > safe:  # a long last word still gives the tokens certain without its last character
                if m.end() == len(low) and m.start() < safe and m.end() - m.start() > SHORT_WORD:
                    self._word(low, m.start(), m.end() - 1, ids, limit, cut=True)
                return
            self._word(low, m.start(), m.end(), ids, limit)
            pos = m.end()

    def _fixed(self, segment: str, no_html: bool, ids: list[int], limit: int, cut_word: bool = False) -> None:
        """Words of a segment that is not plain: ftfy, then open_clip's cleaning. `cut_word`: the segment ends
        inside a word, whose tokens count only where they are certain whatever follows."""
        fixed = ftfy.fix_text(segment, unescape_html=False) if no_html else ftfy.fix_text(segment)
        cleaned = clean(fixed)
        for m in _WORD.finditer(cleaned):
            if len(ids) >= limit:
                return
            cut = cut_word and m.end() == len(cleaned)
            self._word(cleaned, m.start(), m.end() - cut, ids, limit, cut=cut)  # the cut word: all but its last

    def _word(self, text: str, start: int, end: int, ids: list[int], limit: int, cut: bool = False) -> None:
        if end - start > SHORT_WORD:
            ids.extend(_LongWord(self, text, start, end).encode(limit - len(ids), cut))
        elif not cut:  # a short word cut off: nothing about its tokens is certain
            ids.extend(self._bpe_cached(text[start:end]))

    # --- BPE ------------------------------------------------------------------------------------------------
    def symbols(self, word: str) -> str:
        """Word -> its byte symbols, one character each."""
        return "".join(self.byte_encoder[b] for b in word.encode("utf-8"))

    def merge(self, word: tuple[str, ...]) -> tuple[str, ...]:
        """open_clip's BPE loop, verbatim: merge the lowest-ranked pair everywhere, left to right, repeat."""
        pairs = set(zip(word, word[1:]))
        while pairs:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = set(zip(word, word[1:]))
        return word

    def _bpe_word(self, word: str) -> list[int]:
        if word in SPECIAL_TOKENS:  # open_clip's pattern keeps them whole and its cache maps them to themselves
            return [self.encoder[word]]
        sym = self.symbols(word)
        return [self.encoder[t] for t in self.merge(tuple(sym[:-1]) + (sym[-1] + "</w>",))]

    def valid(self, token: int) -> bool:
        """Is a vocabulary entry its own BPE (the only token of the encoding of its text)?"""
        ok = self._valid.get(token)
        if ok is None:
            text = self.decoder[token]
            ok = self._valid[token] = self.merge(_split_token(text)) == (text,)
        return ok

    def compatible(self, left: int, right: int) -> bool:
        """Does BPE of the two entries' texts joined give exactly these two tokens?

        Undo the later of the two tokens' merges step by step (rust-gems' is_valid_token_pair): if at some step
        the two pieces facing each other across the boundary form a merge that BPE would have made earlier,
        BPE would have merged across the boundary. Same answer as merging the joined text (checked by the tests)
        in a few dictionary lookups."""
        limit = len(self.decoder)
        while True:
            merged = self.merged.get(left << 16 | right)
            if merged is not None and merged < limit:
                return False
            if left > right:
                limit = left
                left = self.right_of[left]
                if left == limit:
                    limit = right + 1
                    right = self.left_of[right]
                    if right + 1 == limit:
                        return True
            else:
                limit = right + 1
                right = self.left_of[right]
                if right + 1 == limit:
                    limit = left
                    left = self.right_of[left]
                    if left == limit:
                        return True

    def compatible_by_merging(self, left: int, right: int) -> bool:
        """compatible(), computed the slow and obvious way: BPE of the joined text."""
        a, b = self.decoder[left], self.decoder[right]
        return self.merge(_split_token(a) + _split_token(b)) == (a, b)


def exact_equivalent(tokenizer: object) -> ClipTokenizer | None:
    """A ClipTokenizer giving the same ids as `tokenizer` when that is open_clip's plain SimpleTokenizer (CLIP's
    BPE vocabulary, 'lower' cleaning, truncation); None for any other tokenizer (Hugging Face ones, SigLIP,
    another vocabulary or cleaning), checked without importing open_clip."""
    kind = type(tokenizer)
    if (kind.__module__, kind.__name__) != ("open_clip.tokenizer", "SimpleTokenizer"):
        return None
    if getattr(tokenizer, "reduction_fn", None) is not None:
        return None
    if getattr(getattr(tokenizer, "clean_fn", None), "__name__", None) != "_clean_lower":
        return None
    exact = ClipTokenizer(int(getattr(tokenizer, "context_length", None) or DEFAULT_CONTEXT_LENGTH))
    same = (getattr(tokenizer, "encoder", None) == exact.encoder
            and getattr(tokenizer, "bpe_ranks", None) == exact.bpe_ranks)
    return exact if same else None


class _LongWord:
    """BPE of one long word, read incrementally until its first tokens are certain.

    BPE's output has a local characterisation (github.com/github/rust-gems, crates/bpe): a token sequence is the
    BPE encoding of its text iff its first token is valid on its own and every adjacent pair is compatible
    (the pair's text encodes back to the pair). So the encoding of every prefix s[:i] is the encoding of some
    shorter prefix plus one more token, and only its last token last[i] needs storing; the encoding of the whole
    word is read back from its end by following last[]. The end is unknown while reading a prefix of m
    symbols, but the path back from it must cross (m - 32, m] (no token is longer than 32 symbols): every
    position before the point where all paths from that window meet is certainly a token boundary, and the
    tokens up to it are final. Work is linear in the symbols read; real words meet within a few tokens.
    """

    def __init__(self, tok: ClipTokenizer, text: str, start: int, end: int):
        self.tok, self.text, self.start, self.end = tok, text, start, end
        self.read = start  # text[start:read] is in self.sym
        self.sym = ""
        self.last = [0]  # last[i]: id of the last token of the encoding of sym[:i]
        self.size = [0]  # its length in symbols

    def encode(self, need: int, cut: bool = False) -> list[int]:
        """The first `need` tokens of the word, reading only as much of it as they require. `cut`: the text
        ends inside the word, so only the tokens certain whatever follows are returned (maybe fewer)."""
        chunk = need + 2 * self.tok.max_token  # characters: a token has at least one
        while True:
            stop = min(self.end, self.read + chunk)
            self.sym += self.tok.symbols(self.text[self.read:stop])
            self.read = stop
            if self.read == self.end and not cut:  # the whole word: its last symbol ends it
                self._extend(len(self.sym) - 1)
                return self._path(self._final())[:need]
            m = len(self.sym)
            self._extend(m)
            meet = self._meeting_point(max(1, m - self.tok.max_token + 1), m)
            tokens = self._path(meet)
            if len(tokens) >= need or self.read == self.end:
                return tokens[:need]
            # read on for the missing tokens at the rate seen so far, and at least double if none is certain yet
            per_token = meet / len(tokens) if tokens else 2 * m
            chunk = int((need - len(tokens)) * per_token * (self.read - self.start) / m) + 2 * self.tok.max_token

    def _extend(self, upto: int) -> None:
        for i in range(len(self.last), upto + 1):
            token, n = self._last_token(i, "")
            self.last.append(token)
            self.size.append(n)

    def _last_token(self, i: int, mark: str) -> tuple[int, int]:
        """The last token of the encoding of sym[:i] (+ the end-of-word mark): the one entry ending there that
        is compatible with the encoding before it (exactly one is, by the characterisation)."""
        enc, endings, sym = self.tok.encoder, self.tok.endings, self.sym
        found = []
        for n in range(1, min(self.tok.max_token, i) + 1):
            piece = sym[i - n:i] + mark
            if piece not in endings:
                break
            if piece in enc:
                found.append((enc[piece], n))
        for token, n in reversed(found):  # longest first
            if self.tok.compatible(self.last[i - n], token) if i > n else self.tok.valid(token):
                return token, n
        raise AssertionError(f"no BPE token ends at symbol {i} of {sym[:i]!r}")  # the tests check it never does

    def _final(self) -> int:
        """Append the last token (ending the word) for the whole word; return the word's length in symbols."""
        i = len(self.sym)
        token, n = self._last_token(i, "</w>")
        self.last.append(token)
        self.size.append(n)
        return i

    def _meeting_point(self, lo: int, hi: int) -> int:
        """The last position every path back from lo..hi goes through."""
        heads = set(range(lo, hi + 1))
        while len(heads) > 1:
            p = max(heads)
            heads.remove(p)
            heads.add(p - self.size[p])
        return heads.pop()

    def _path(self, i: int) -> list[int]:
        tokens = []
        while i > 0:
            tokens.append(self.last[i])
            i -= self.size[i]
        return tokens[::-1]
