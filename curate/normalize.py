"""CCNet text normalisation (cc_net/text_normalizer.py, `normalize` with its defaults).

The KenLM models are trained and scored on normalised text, so the exact same function must run
at training and at scoring time: a mismatch moves perplexities by orders of magnitude.

Steps, in CCNet's order: strip, lower-case, strip accents (NFD, drop combining marks), every
decimal digit to "0", ~34 unicode punctuation marks to ASCII, drop control characters.
`normalize` does it with one `str.translate` table; `normalize_reference` is the plain
step-by-step version it is tested against (and the baseline of benchmarks/perplexity.py).
`DocumentLines` normalises a batch of documents once for every model that scores it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# CCNet's UNICODE_PUNCT mapping (punct=1). "１" is in CCNet's table too, but digits are replaced
# first, so it always becomes "0".
UNICODE_PUNCT = {
    "，": ",",
    "。": ". ",
    "、": ",",
    "„": '"',
    "”": '"',
    "“": '"',
    "«": '"',
    "»": '"',
    "１": '"',
    "」": '"',
    "「": '"',
    "《": '"',
    "》": '"',
    "´": "'",
    "∶": ":",
    "：": ":",
    "？": "?",
    "！": "!",
    "（": "(",
    "）": ")",
    "；": ";",
    "–": "-",
    "—": " - ",
    "．": ". ",
    "～": "~",
    "’": "'",
    "…": "...",
    "━": "-",
    "〈": "<",
    "〉": ">",
    "【": "[",
    "】": "]",
    "％": "%",
    "►": "-",
}
NON_PRINTING = [chr(c) for c in list(range(0, 32)) + list(range(127, 160))]

_DIGIT_RE = re.compile(r"\d")
_NON_PRINTING_RE = re.compile("[" + "".join(NON_PRINTING) + "]")


class _Table(dict):
    """Translate table for every step after NFD, filled lazily per code point. Later CCNet steps
    never see characters produced by earlier ones, so merging them is exact, provided digits win
    over the punctuation map (as they do in CCNet's order)."""

    def __missing__(self, code: int) -> str | None:
        ch = chr(code)
        cat = unicodedata.category(ch)
        if cat == "Mn" or ch in _NON_PRINTING_SET:
            value = None
        elif cat == "Nd":
            value = "0"
        else:
            value = UNICODE_PUNCT.get(ch, ch)
        self[code] = value
        return value


_NON_PRINTING_SET = frozenset(NON_PRINTING)
TABLE = _Table()
CAPITAL_SIGMA = 0x3A3


def normalize(line: str) -> str:
    """CCNet-normalise one line of text."""
    return _after_strip(line.strip())


def _after_strip(text: str) -> str:
    """Every CCNet step after the strip: lower-case, NFD (nothing to do on ASCII), `TABLE`."""
    text = text.lower()
    if not text.isascii():
        text = unicodedata.normalize("NFD", text)
    return text.translate(TABLE)


def normalize_lines(lines: list[str]) -> list[str]:
    """`normalize` of each of many lines: after the strip, one compiled pass over all of them
    joined by line breaks maps each character to its `normalized_char` (no step makes or removes
    a line break); the few lines where a character's neighbours matter take `normalize`."""
    from curate.char_map import map_lines  # numba: not for the CLI's light paths

    stripped = [line.strip() for line in lines]
    mapped, flagged = map_lines("\n".join(stripped), normalized_char)
    for i in flagged:
        mapped[i] = normalize(stripped[i])
    return mapped


def normalized_char(code: int) -> str | None:
    """A character after every CCNet step but the strip, or None where its neighbours matter: a
    capital sigma (lower-cased by whether it ends a word), and characters that keep a combining
    mark after normalisation (NFD orders neighbouring marks)."""
    if code == CAPITAL_SIGMA:
        return None
    text = _after_strip(chr(code))
    return None if any(unicodedata.combining(c) for c in text) else text


def normalize_reference(line: str) -> str:
    """CCNet's normalisation written step by step, as cc_net/text_normalizer.py does it."""
    line = line.strip()
    if not line:
        return line
    line = line.lower()
    line = "".join(c for c in unicodedata.normalize("NFD", line) if unicodedata.category(c) != "Mn")
    line = _DIGIT_RE.sub("0", line)
    line = "".join(UNICODE_PUNCT.get(c, c) for c in line)
    return _NON_PRINTING_RE.sub("", line)


@dataclass(frozen=True)
class DocumentLines:
    """A batch of documents cut into CCNet lines and normalised once. Each distinct non-empty line
    is kept once, so a model scores boilerplate that repeats across the batch once, and the
    harmful stage's two or three models share the work; empty lines are only counted (they
    score the same everywhere)."""

    distinct: list[str]  # the distinct non-empty normalised lines, in order of first appearance
    doc: np.ndarray  # the document of each non-empty line, in document then line order
    line: np.ndarray  # for each of those, its index in `distinct`
    empty: np.ndarray  # empty lines per document

    @classmethod
    def of(cls, texts: Iterable[str]) -> DocumentLines:
        index: dict[str, int] = {}
        doc: list[int] = []
        line: list[int] = []
        empty: list[int] = []
        split = [text.split("\n") for text in texts]
        normalized = normalize_lines([raw for lines in split for raw in lines])
        start = 0
        for d, raw in enumerate(split):
            lines, start = normalized[start : start + len(raw)], start + len(raw)
            nonempty = [index.setdefault(norm, len(index)) for norm in lines if norm]
            line += nonempty
            doc += [d] * len(nonempty)
            empty.append(len(lines) - len(nonempty))
        return cls(list(index), np.asarray(doc, np.int64), np.asarray(line, np.int64), np.asarray(empty, np.int64))

    def __len__(self) -> int:
        return len(self.empty)
