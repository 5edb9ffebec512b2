"""SentencePiece pieces of CCNet-normalised lines, as the space-joined strings KenLM scores.

`sp.encode(lines, out_type=str)` is what the models were trained with, and the reference. Most of
its time goes into SentencePiece's own normaliser, its Viterbi search and making a Python string
per piece. For lines that are printable ASCII (after CCNet normalisation, most web lines),
`PieceEncoder` asks a copy of the model with the normaliser switched off for ids (the normalisers
this accepts change no printable ASCII character) and maps them to pieces through a table. An
unknown piece has no table entry: SentencePiece gives its surface, the run of characters no piece
knows, which is cut from the line here the same way. Other lines, and models this cannot vouch
for, take the reference call.

With `word_cache=True`, printable-ASCII lines are first tried word by word (`WordCache`). Why that
is exact: in a unigram model whose pieces hold the whitespace mark only first (split_by_whitespace),
no piece crosses a word boundary (nor does an unknown character's one-character node), so every
segmentation of "▁w1▁w2..." is a concatenation of segmentations of each
"▁wk", and all paths pass through each word's start. SentencePiece's Viterbi adds float32 piece
scores along each path; from a word's start value S (shared by all paths through the word), a
path through the word's c = len(w) + 1 characters takes at most c additions, each rounded by at
most u*M (u = 2**-24, M = (len(line) + 1) * the largest |score|, an unknown's included, bounds
every partial sum).
So if the word's best segmentation beats its second best by more than 2*c*u*M (exactly, in real
numbers), the line's Viterbi keeps it whatever S is: at every node of the word the best path's
prefix beats any other prefix, whose completion is another path. The best and second best come
from SentencePiece's own n-best (A* in float32), whose two results are summed again here in
float64; allowing another 4*c*u*M for the n-best's own rounding, a word is trusted in a line when
(best - second) / c > 8*u*M. A line whose words are all trusted is the concatenation of their
cached pieces; any other line (a tie such as a digit run's, a line so long that the bound grows
past a margin) takes the whole-line call. The cache holds words only, never lines, for the
encoder's lifetime, and is emptied when it reaches `WORD_CACHE_SIZE`. It is off by default: an
n-best costs about 25 times the whole-line Viterbi's share of a word, so it pays back only on text
whose words were nearly all seen before (README, "Benchmarks").
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

# SentencePiece normalisers that leave printable ASCII as it is (NFKC maps no ASCII character;
# the nmt_ variants only control characters, which CCNet normalisation has already removed)
ASCII_IDENTITY = {"nfkc", "nmt_nfkc", "identity"}
SPACE = "\u2581"  # SentencePiece's whitespace mark: a piece of every model the fast path takes
ROUNDING = 8 * 2.0**-24  # 8 float32 unit roundoffs: the margin a word needs per character and per unit of M
WORD_CACHE_SIZE = 1 << 18  # words (about 90 MB of Python strings at most)
UNK_PENALTY = 10.0  # SentencePiece's kUnkPenalty: an unknown character scores the lowest piece score less this
SHORT_LINE = 1024  # characters: most lines; their words are checked by one lookup each


class WordCache:
    """Pieces of single words, with the longest line each is trusted in: the margin of its best
    segmentation over the second best, against the bound of the module docstring."""

    def __init__(self, sp: spm.SentencePieceProcessor, scores: list[float], pieces: Callable[[str, list[int]], str]):
        self.sp, self.scores, self.pieces = sp, scores, pieces
        self.rounding = ROUNDING * max(map(abs, scores))  # times (len(line) + 1): the bound per character
        self.text: dict[str, str] = {}  # word -> its pieces joined by spaces
        self.limit: dict[str, float] = {}  # word -> trusted in lines shorter than this
        self.short: dict[str, str] = {}  # the words trusted in every line of up to SHORT_LINE characters
        self.encoded = 0  # words n-best encoded so far

    def encode(self, lines: list[str], which: list[int], texts: list[str], counts: list[int]) -> list[int]:
        """Fill in `texts` and `counts` for the lines of `which` (printable ASCII) whose words are
        all trusted in them, n-best encoding words not seen before; returns the other indexes."""
        short = self.short.__getitem__
        missed = []
        for i in which:  # the common case first: a short line of trusted words
            line = lines[i]
            if len(line) <= SHORT_LINE:
                try:
                    text = texts[i] = " ".join(map(short, line.split()))
                    counts[i] = text.count(" ") + 1  # no ASCII piece holds a space
                    continue
                except KeyError:
                    pass
            missed.append(i)
        split = [lines[i].split() for i in missed]
        self._add(split)
        rest = []
        for i, words in zip(missed, split, strict=True):
            if min(map(self.limit.__getitem__, words)) <= len(lines[i]):
                rest.append(i)
            else:
                text = texts[i] = " ".join(map(self.text.__getitem__, words))
                counts[i] = text.count(" ") + 1
        return rest

    def _add(self, split_lines: list[list[str]]) -> None:
        """Cache every word of these lines: n-best of the new ones (all of them when the cache is
        full and emptied)."""
        words = set(itertools.chain.from_iterable(split_lines))
        new = words.difference(self.limit)
        if len(self.limit) + len(new) > WORD_CACHE_SIZE:
            for cached in (self.text, self.limit, self.short):
                cached.clear()
            new = words
        self.encoded += len(new)
        score = self.scores.__getitem__
        for word, best in zip(new, self.sp.nbest_encode(list(new), nbest_size=2), strict=True):
            first = best[0]
            text = self.text[word] = self.pieces(word, first)
            if len(best) == 1:
                limit = math.inf
            else:
                margin = (sum(map(score, first)) - sum(map(score, best[1]))) / (len(word) + 1)
                limit = margin / self.rounding - 1
            self.limit[word] = limit
            if limit > SHORT_LINE:
                self.short[word] = text


class PieceEncoder:
    """Pieces of normalised non-empty lines, equal to `sp.encode(line, out_type=str)`."""

    def __init__(self, model_file: Path, word_cache: bool = False):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file), num_threads=1)
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(Path(model_file).read_bytes())
        self.table = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        self.unk = self.sp.unk_id()
        kind = sentencepiece_model_pb2.ModelProto.SentencePiece
        normal = [p for p in proto.pieces if p.type == kind.NORMAL]
        self.known = frozenset(p.piece for p in normal if len(p.piece) == 1)
        unknown = "".join(chr(c) for c in range(32, 127) if chr(c) not in self.known and chr(c) != " ")
        self.unknown_run = re.compile(f"[{re.escape(unknown)}]+" if unknown else "(?!)")
        user_defined = any(p.type == kind.USER_DEFINED for p in proto.pieces)
        within_words = self._pieces_within_words(proto, [p.piece for p in normal])
        self.ascii = None if user_defined else self._ascii_processor(proto, [p.piece for p in normal])
        self.words = None
        if word_cache and self.ascii is not None and within_words:
            scores = [p.score for p in proto.pieces]
            scores[self.unk] = min(p.score for p in normal) - UNK_PENALTY  # as SentencePiece scores an unknown
            self.words = WordCache(self.ascii, scores, self._joined)

    @staticmethod
    def _pieces_within_words(proto: sentencepiece_model_pb2.ModelProto, normal: list[str]) -> bool:
        """Whether no piece can cross a word boundary and the search is the unigram one: the
        conditions of the word cache's argument."""
        spec = proto.trainer_spec
        unigram = spec.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM
        bytes_ = spec.byte_fallback or any(p.type == p.BYTE for p in proto.pieces)
        return unigram and spec.split_by_whitespace and not bytes_ and not any(SPACE in p[1:] for p in normal)

    def _ascii_processor(
        self, proto: sentencepiece_model_pb2.ModelProto, normal: list[str]
    ) -> spm.SentencePieceProcessor | None:
        """The model without its normaliser, when the fast path gives the reference's pieces:
        ASCII left as it is, whitespace handled as usual, no user-defined symbols, and every
        character of every piece a piece itself (so an unknown piece is exactly a run of unknown
        characters)."""
        spec = proto.normalizer_spec
        usual = spec.add_dummy_prefix and spec.remove_extra_whitespaces and spec.escape_whitespaces
        if spec.name not in ASCII_IDENTITY or not usual or proto.trainer_spec.treat_whitespace_as_suffix:
            return None
        if SPACE not in self.known or any(c not in self.known for p in normal for c in p):
            return None
        spec.name = "identity"
        spec.precompiled_charsmap = b""
        return spm.SentencePieceProcessor(model_proto=proto.SerializeToString(), num_threads=1)

    def encode(self, lines: list[str]) -> tuple[list[str], list[int]]:
        """Per line, its pieces joined by spaces (what KenLM scores) and their number."""
        fast = (
            [i for i, line in enumerate(lines) if line.isascii() and line.isprintable()]
            if self.ascii is not None
            else []
        )
        texts: list[str] = [""] * len(lines)
        counts: list[int] = [0] * len(lines)
        if len(fast) < len(lines):
            slow = sorted(set(range(len(lines))).difference(fast))
            for i, pieces in zip(slow, self.sp.encode([lines[i] for i in slow], out_type=str), strict=True):
                texts[i], counts[i] = " ".join(pieces), len(pieces)
        if fast and self.words is not None:
            fast = self.words.encode(lines, fast, texts, counts)
        if fast:
            for i, ids in zip(fast, self.ascii.encode([lines[i] for i in fast]), strict=True):
                texts[i], counts[i] = self._joined(lines[i], ids), len(ids)
        return texts, counts

    def _joined(self, line: str, ids: list[int]) -> str:
        """The pieces of these ids of an ASCII line, joined by spaces."""
        return " ".join(self._with_unknown(line, ids) if self.unk in ids else map(self.table.__getitem__, ids))

    def _with_unknown(self, line: str, ids: list[int]) -> list[str]:
        """Pieces of an ASCII line whose ids hold unknown pieces. No known piece holds an unknown
        character and SentencePiece merges neighbouring unknown pieces, so the k-th unknown piece
        is the k-th run of unknown characters of the line."""
        pieces = list(map(self.table.__getitem__, ids))
        k = -1
        for run in self.unknown_run.findall(line):
            k = ids.index(self.unk, k + 1)
            pieces[k] = run
        return pieces
