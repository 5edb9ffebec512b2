"""Text queries as phrases: a phrase counts wherever it occurs as a sequence of words.

An occurrence starts at the start of a document or right after a whitespace character (a space,
the start of a line, a tab) and, when the phrase ends in a word character, is not followed by
another word character: the regex `(?<!\\S)PHRASE(?!\\w)` over the documents' text (as the
tokenizer normalises it). Tokenizers give a word different ids in different places (byte-level
BPE: "United" at a line start is `Un`+`ited`, after a space `ĠUnited`; SentencePiece: `▁United`;
Gemma: after two spaces a `"  "` token then `United`), so one tokenization of the query misses
most occurrences.

Why at query time and not by normalising the prefix space at build: the index keeps the token
stream a model trained on it (or a GGUF model scored against it) actually sees, stays readable by
the official infini-gram engine, and old indexes need no rebuild. Instead the query walks every
way the token stream can spell the phrase, using only the bytes each token stands for
(`TextTokenizer.pieces`), so it holds for any lossless tokenizer:

- spaced paths start with a token whose piece holds a whitespace character followed by the start
  of the phrase (`ĠUnited`, `▁United`, `\\nUn`); they need no look-behind;
- bare paths start exactly at the phrase; each occurrence is kept when the token before it is a
  separator (document start) or ends in a whitespace character (also one split over two byte
  tokens, as Gemma spells U+00A0);
- every path then follows tokens whose pieces spell the rest of the phrase (so a last token that
  runs past it, `ĠStates,`, still matches), and the end check reads the next character.

Counts are exact sums over disjoint token paths (one text occurrence has one tokenization).
Token-id queries (`query_ids`) keep their exact meaning; these functions are for text.
"""

from __future__ import annotations

import bisect
import hashlib
import inspect
import pickle
import re
import weakref
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from curate.atomic import atomic_path
from indexes import search_loops
from indexes.engine import Engine, QueryError
from indexes.shards import Shard

WORD = re.compile(r"\w")
AFTER = 8  # tokens read past an occurrence for its end check (a longer run of partial bytes counts as ended)


@cache
def _whitespace() -> tuple[tuple[bytes, ...], re.Pattern]:
    """The UTF-8 encodings of every whitespace character (what the regex `\\s` matches), and a
    pattern finding them in a piece."""
    chars = tuple(chr(c).encode() for c in range(0x3001) if chr(c).isspace())  # none past U+3000
    return chars, re.compile(b"|".join(re.escape(e) for e in chars))


@dataclass
class TokenPath:
    """Token ids that spell the phrase from its first byte (bare) or from a whitespace before it."""

    ids: tuple[int, ...]
    segments: list[tuple[int, int]]
    bare: bool
    leftover: bytes  # what the last token spells past the phrase's end


class Vocabulary:
    """The pieces of an index's tokenizer, arranged for walking phrases."""

    def __init__(self, engine: Engine):
        if engine.tokenizer is None:
            raise QueryError("this index was built without a tokenizer; query with token ids")
        self.pieces = engine.tokenizer.pieces()
        whitespace, whitespace_re = _whitespace()
        ends_in_whitespace = re.compile(b"(?:" + whitespace_re.pattern + rb")\Z")
        tails: dict[bytes, list[bytes]] = {}  # the end of a whitespace character -> the bytes before it
        for e in whitespace:
            for k in range(1, len(e)):
                tails.setdefault(e[k:], []).append(e[:k])
        self.by_piece: dict[bytes, list[int]] = {}
        spaced: dict[bytes, list[int]] = {}
        size = len(self.pieces)
        self.ws_end = np.zeros(size, np.bool_)
        self.ws_tail: dict[int, list[bytes]] = {}  # token -> the bytes the token before must end with
        for token_id, piece in enumerate(self.pieces):
            if not piece:
                continue
            self.by_piece.setdefault(piece, []).append(token_id)
            for m in whitespace_re.finditer(piece):
                if m.end() < len(piece):
                    spaced.setdefault(piece[m.end() :], []).append(token_id)
            self.ws_end[token_id] = ends_in_whitespace.search(piece) is not None
            if piece in tails:
                self.ws_tail[token_id] = tails[piece]
        self.sorted_pieces = sorted(self.by_piece)
        self.spaced = spaced
        self.sorted_spaced = sorted(spaced)

    def candidates(self, need: bytes, table: dict[bytes, list[int]], ordered: list[bytes]):
        """(token, piece) whose piece is a prefix of `need` or starts with it."""
        for k in range(1, len(need) + 1):
            for token_id in table.get(need[:k], ()):
                yield token_id, need[:k]
        i = bisect.bisect_right(ordered, need)
        while i < len(ordered) and ordered[i].startswith(need):
            for token_id in table[ordered[i]]:
                yield token_id, ordered[i]
            i += 1


_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocabulary(engine: Engine) -> Vocabulary:
    """Built once per tokenizer (0.3 s for 8,000 pieces, a few seconds for Gemma's 262,144) and
    kept on disk, so that a one-shot text query loads it in milliseconds; once per engine in memory."""
    if engine not in _VOCABULARIES:
        _VOCABULARIES[engine] = _stored_vocabulary(engine)
    return _VOCABULARIES[engine]


VOCABULARY_CACHE = Path.home() / ".cache" / "curate" / "phrases"


def _stored_vocabulary(engine: Engine) -> Vocabulary:
    """The pickled Vocabulary named by the code that builds it and the tokenizer's identity; built and
    stored when missing (a cache that cannot be read or written only costs the build)."""
    if engine.tokenizer is None:
        return Vocabulary(engine)  # raises the QueryError
    source = Path(engine.tokenizer.source)
    if source.suffix == ".gguf" and source.is_file():  # hundreds of MB: named by path, size and time
        stat = source.stat()
        identity = f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    elif source.is_file():
        identity = source.read_bytes()
    else:
        identity = str(source).encode() + str(getattr(engine, "card", {}).get("tokenizer_fingerprint")).encode()
    code = Path(__file__).read_bytes() + Path(inspect.getfile(type(engine.tokenizer))).read_bytes()  # pieces()
    key = hashlib.sha256(code + b"\0" + identity).hexdigest()[:16]
    path = VOCABULARY_CACHE / f"{key}.pickle"
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError):
        pass  # missing or damaged: rebuilt and replaced
    built = Vocabulary(engine)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(pickle.dumps(built, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError:
        pass
    return built


def phrase_bytes(engine: Engine, text: str) -> bytes:
    """The phrase as the tokenizer normalises it, without the spaces at its ends, in UTF-8."""
    if not isinstance(text, str):
        raise QueryError("query must be a string")
    if engine.tokenizer is None:
        raise QueryError("this index was built without a tokenizer; query with token ids")
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON can carry
        raise QueryError("the query is not valid Unicode text") from None
    phrase = engine.tokenizer.normalize(text).strip()
    if not phrase:
        raise QueryError("the phrase is empty")
    return phrase.encode()


def token_paths(engine: Engine, phrase: bytes) -> list[TokenPath]:
    """Every token path in the index that spells `phrase` (start checks not yet applied)."""
    vocab = vocabulary(engine)
    whole = [(0, shard.token_count) for shard in engine.shards]
    found: list[TokenPath] = []
    stack: list[tuple[tuple[int, ...], list[tuple[int, int]], bytes, bool]] = [((), whole, phrase, True)]
    for token_id, rest in vocab.candidates(phrase, vocab.spaced, vocab.sorted_spaced):
        _step(engine, (), whole, phrase, False, token_id, rest, stack, found)
    while stack:
        ids, segments, need, bare = stack.pop()
        for token_id, piece in vocab.candidates(need, vocab.by_piece, vocab.sorted_pieces):
            _step(engine, ids, segments, need, bare, token_id, piece, stack, found)
    return found


def _step(
    engine: Engine,
    ids: tuple[int, ...],
    segments: list[tuple[int, int]],
    need: bytes,
    bare: bool,
    token_id: int,
    piece: bytes,
    stack: list,
    found: list[TokenPath],
) -> None:
    """Extend a path by one token whose `piece` matches the start of what it still `need`s: drop
    it if the index never has it there, finish it if the phrase is spelled, else walk on."""
    ids = (*ids, token_id)
    segments = engine._segments(engine._bytes(list(ids)), hints=segments)
    if all(s == e for s, e in segments):
        return
    if len(piece) < len(need):
        stack.append((ids, segments, need[len(piece) :], bare))
    else:
        found.append(TokenPath(ids, segments, bare, piece[len(need) :]))


class Occurrences:
    """The occurrences of a phrase: per path, how many pass the start and end checks.

    Per-shard work goes through the engine (`_segments`, `_next_token_freq`, `get_doc_by_rank`),
    so an engine whose shards answer elsewhere (indexes/serve_ray.py) gets the same answers; a
    local shard's tokens are read directly, in bulk."""

    def __init__(self, engine: Engine, text: str, check_end: bool = True):
        self.engine, self.vocab = engine, vocabulary(engine)
        self.phrase = phrase_bytes(engine, text)
        self.word_end = check_end and bool(WORD.match(self.phrase.decode()[-1]))
        self.paths = token_paths(engine, self.phrase)
        self.sep = engine.token_id_max
        # bare paths, per shard: the ranks of the occurrences that pass the start check, and the
        # tokens past each
        self.bare = {id(p): self._bare(p) for p in self.paths if p.bare}

    def _around(self, s: int, lo: int, hi: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """For the occurrences at ranks [lo, hi) of shard `s` of an `n`-token path: the two tokens
        before each (separators before a document's start) and the AFTER tokens past the path
        (a separator at the document's end)."""
        shard, w = self.engine.shards[s], self.engine.token_width
        if isinstance(shard, Shard):  # a local shard: its tokens in bulk
            toks = shard.tokens.view(self.engine._dtype)
            idx = search_loops.pointers_in(shard.table, shard.pointer_width, lo, hi) // w
            near = idx[:, None] + np.arange(-2, n + AFTER)[None, :]
            got = np.where((near >= 0) & (near < toks.size), toks[np.clip(near, 0, toks.size - 1)], self.sep)
            return got[:, :2].astype(np.int64), got[:, 2 + n :].astype(np.int64)
        before, after = np.full((hi - lo, 2), self.sep, np.int64), np.full((hi - lo, AFTER), self.sep, np.int64)
        for row, rank in enumerate(range(lo, hi)):  # a window of the document around each occurrence
            doc = self.engine.get_doc_by_rank(s, rank, 2 * (n + AFTER))
            i, toks = doc["needle_offset"], doc["token_ids"]
            before[row, 2 - min(i, 2) :] = toks[max(i - 2, 0) : i]
            tail = toks[i + n : i + n + AFTER]
            after[row, : len(tail)] = tail
        return before, after

    def _bare(self, path: TokenPath) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for s, (lo, hi) in enumerate(path.segments):
            if lo == hi:
                out.append((np.zeros(0, np.int64), np.zeros((0, AFTER), np.int64)))
                continue
            before, after = self._around(s, lo, hi, len(path.ids))
            prev = before[:, 1]
            known = prev < self.vocab.ws_end.size
            ok = (prev == self.sep) | (known & self.vocab.ws_end[np.where(known, prev, 0)])
            for i in np.flatnonzero(~ok & known):
                heads = self.vocab.ws_tail.get(int(prev[i]))
                ok[i] = bool(heads) and any(self._piece(int(before[i, 0])).endswith(h) for h in heads)
            out.append((np.arange(lo, hi)[ok], after[ok]))
        return out

    def _piece(self, token_id: int) -> bytes:
        """A token's bytes; a separator (or an id past the vocabulary) reads as a space."""
        return self.vocab.pieces[token_id] if token_id < len(self.vocab.pieces) else b" "

    def _verdict(self, pending: bytes) -> bool | None:
        """Whether what follows the phrase ends its last word: True, False, or None (need more bytes)."""
        if not self.word_end:
            return True
        if not pending:
            return None
        for k in range(1, min(4, len(pending)) + 1):
            try:
                return not WORD.match(pending[:k].decode())
            except UnicodeDecodeError:
                continue
        return True if len(pending) >= 4 or 0x80 <= pending[0] < 0xC0 else None

    def _ok_after(self, after: np.ndarray, pending: bytes) -> bool:
        """The end check for one occurrence, given the tokens past its path."""
        for token in after.tolist():
            verdict = self._verdict(pending)
            if verdict is not None:
                return verdict
            if token == self.sep:
                return True  # the document ends after the phrase
            pending += self._piece(token)
        return self._verdict(pending) is not False

    def _end_count(self, ids: tuple[int, ...], segments: list[tuple[int, int]], pending: bytes) -> int:
        """Occurrences of a spaced path whose following text passes the end check (exact)."""
        verdict = self._verdict(pending)
        if verdict is not None:
            return sum(e - s for s, e in segments) if verdict else 0
        engine, total = self.engine, 0
        prompt = engine._bytes(list(ids))
        for token, count in engine._next_token_freq(prompt, segments, 1).items():
            if token == engine.eos_token_id:  # text never gives the EOS token: the document ends
                total += count
                continue
            verdict = self._verdict(pending + self._piece(token))
            if verdict is None:
                longer = engine._bytes([*ids, token])
                total += self._end_count(
                    (*ids, token), engine._segments(longer, hints=segments), pending + self._piece(token)
                )
            elif verdict:
                total += count
        return total

    def path_count(self, path: TokenPath) -> int:
        if not path.bare:
            return self._end_count(path.ids, path.segments, path.leftover)
        verdict = self._verdict(path.leftover)
        if verdict is not None:
            return sum(ranks.size for ranks, _ in self.bare[id(path)]) if verdict else 0
        return sum(self._ok_after(row, path.leftover) for _, after in self.bare[id(path)] for row in after)

    def count(self) -> int:
        return sum(self.path_count(p) for p in self.paths)

    def sample(self, rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
        """Up to `n` occurrences drawn uniformly with replacement (rejection sampling on the end
        check), as (shard, rank of the path's first token)."""
        weights = np.array([self.path_count(p) for p in self.paths], np.float64)
        if weights.sum() == 0:
            return []
        picks = []
        for _ in range(1000 * n):
            if len(picks) == n:
                break
            path = self.paths[int(rng.choice(len(self.paths), p=weights / weights.sum()))]
            if path.bare:
                flat = [(s, rank) for s, (ranks, _) in enumerate(self.bare[id(path)]) for rank in ranks.tolist()]
                s, rank = flat[int(rng.integers(len(flat)))]
            else:
                sizes = np.array([e - b for b, e in path.segments], np.float64)
                s = int(rng.choice(len(sizes), p=sizes / sizes.sum()))
                rank = path.segments[s][0] + int(rng.integers(sizes[s]))
            _, after = self._around(s, rank, rank + 1, len(path.ids))
            if self._ok_after(after[0], path.leftover):
                picks.append((s, rank))
        return picks

    def next_tokens(self, max_support: int) -> tuple[int, dict[int, int], bool]:
        """(occurrences ending on a token boundary, next-token counts, sampled?) over the phrase's
        occurrences (no end check: the next token is what is asked for)."""
        ends = [p for p in self.paths if not p.leftover]
        total = sum(
            sum(r.size for r, _ in self.bare[id(p)]) if p.bare else sum(e - s for s, e in p.segments) for p in ends
        )
        unit = 1
        while total > unit * max_support:
            unit <<= 1
        freq: dict[int, int] = {}
        eos = self.engine.eos_token_id
        for p in ends:
            if p.bare:
                for _, after in self.bare[id(p)]:
                    for token, count in zip(
                        *np.unique(np.where(after[:, 0] == self.sep, eos, after[:, 0]), return_counts=True)
                    ):
                        freq[int(token)] = freq.get(int(token), 0) + int(count)
                continue
            for token, count in self.engine._next_token_freq(self.engine._bytes(list(p.ids)), p.segments, unit).items():
                freq[token] = freq.get(token, 0) + count
        return total, freq, unit > 1


# -- the query types over text --------------------------------------------------------------------


def count(engine: Engine, text: str) -> dict:
    return {"count": Occurrences(engine, text).count(), "approx": False}


def ntd(engine: Engine, text: str, max_support: int) -> dict:
    """Next-token distribution after the phrase; prompt_cnt counts the occurrences that end on a
    token boundary (one that ends inside a token, `ĠStates` in `ĠStatesman`, has no next token)."""
    total, freq, approx = Occurrences(engine, text, check_end=False).next_tokens(max_support)
    if total == 0:
        return {"prompt_cnt": 0, "result_by_token_id": {}, "approx": False}
    result = {t: {"cont_cnt": c, "prob": c / total} for t, c in sorted(freq.items())}
    return {"prompt_cnt": total, "result_by_token_id": result, "approx": approx}


def _words(text: str) -> list[str]:
    words = text.split()
    if len(words) < 2:
        raise QueryError("a text prob query needs at least two words: the last one is the continuation")
    return words


def prob(engine: Engine, text: str) -> dict:
    """P(last word | the words before it): phrase count of the whole over that of the prompt."""
    words = _words(text)
    return _word_prob(engine, words[:-1], words[-1])


def _word_prob(engine: Engine, prompt: list[str], cont: str) -> dict:
    prompt_cnt = Occurrences(engine, " ".join(prompt)).count() if prompt else engine.card["tokens"]
    if prompt_cnt == 0:
        return {"prompt_cnt": 0, "cont_cnt": 0, "prob": -1.0}
    cont_cnt = Occurrences(engine, " ".join([*prompt, cont])).count()
    return {"prompt_cnt": prompt_cnt, "cont_cnt": cont_cnt, "prob": cont_cnt / prompt_cnt}


def infgram_prob(engine: Engine, text: str) -> dict:
    """∞-gram over words: back off to the longest suffix of the prompt (in words, `suffix_len`)
    that occurs; with none, the denominator is the index's token count, as for an empty prompt."""
    words = _words(text)
    prompt, cont = words[:-1], words[-1]
    suffix_len = _longest_seen(engine, prompt, check_end=True)
    return {**_word_prob(engine, prompt[len(prompt) - suffix_len :], cont), "suffix_len": suffix_len}


def infgram_ntd(engine: Engine, text: str, max_support: int) -> dict:
    words = text.split()
    if not words:
        raise QueryError("the phrase is empty")
    suffix_len = _longest_seen(engine, words, check_end=False)
    if suffix_len == 0:
        return {**engine._ntd(np.zeros(0, np.uint8), max_support), "suffix_len": 0}
    return {**ntd(engine, " ".join(words[len(words) - suffix_len :]), max_support), "suffix_len": suffix_len}


def _longest_seen(engine: Engine, words: list[str], check_end: bool) -> int:
    """Words in the longest suffix of `words` that occurs as a phrase (counts only shrink as a
    phrase grows, so bisection)."""
    seen, unseen = 0, len(words) + 1
    while unseen - seen > 1:
        mid = (seen + unseen) // 2
        if Occurrences(engine, " ".join(words[len(words) - mid :]), check_end).count() > 0:
            seen = mid
        else:
            unseen = mid
    return seen


def search_docs(engine: Engine, text: str, maxnum: int, max_disp_len: int) -> dict:
    """Up to `maxnum` occurrences drawn at random (with replacement), with their documents; the
    needle is the phrase's first token (for a spaced path, the token holding the space before it)."""
    occ = Occurrences(engine, text)
    cnt = occ.count()
    if cnt == 0:
        return {"cnt": 0, "approx": False, "documents": []}
    picks = occ.sample(np.random.default_rng(), maxnum)
    return {
        "cnt": cnt,
        "approx": False,
        "documents": [engine.get_doc_by_rank(s, rank, max_disp_len) for s, rank in picks],
    }


# How each query type answers text: (engine, text, bounded options) -> result. The HTTP API and
# the CLI send text here and token ids to the engine's own methods.
TEXT_QUERIES = {
    "count": lambda e, text, o: count(e, text),
    "prob": lambda e, text, o: prob(e, text),
    "infgram_prob": lambda e, text, o: infgram_prob(e, text),
    "ntd": lambda e, text, o: ntd(e, text, o.get("max_support") or e.max_support),
    "infgram_ntd": lambda e, text, o: infgram_ntd(e, text, o.get("max_support") or e.max_support),
    "search_docs": lambda e, text, o: search_docs(
        e, text, o.get("maxnum") or e.maxnum, o.get("max_disp_len") or e.max_disp_len
    ),
}
