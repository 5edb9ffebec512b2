"""CCNet's per-character normalisation steps (lower-casing, NFD, accents, digits, punctuation,
control characters) as one compiled pass over many lines at once.

Each of these steps maps characters on their own, so their chain is a table from a code point to
its normalised text; a batch of lines goes through it in one call, read as UTF-32 and written as
UTF-8. Two things depend on a character's neighbours: lower-casing a capital sigma (final or not)
and NFD's reordering of the combining marks that survive normalisation (a few dozen code points).
Lines holding one of these are flagged for the step-by-step path. The table is learnt per code
point the first time a text holds it, from the chain `curate.normalize` defines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
from numba import njit

KEEP, DELETE, CONTEXT, UNSEEN = -1, -2, -3, -4
NEWLINE = ord("\n")


class _Table:
    """Per code point: KEEP, DELETE, CONTEXT (its neighbours matter), the index of its
    replacement in `bounds`/`chars`, or UNSEEN until a text holds it."""

    def __init__(self) -> None:
        self.action = np.full(sys.maxunicode + 1, UNSEEN, dtype=np.int32)
        self.action[NEWLINE] = KEEP
        self.replacements: list[str] = []
        self.bounds = np.zeros(1, dtype=np.int64)
        self.chars = np.zeros(0, dtype=np.uint32)

    def learn(self, codes: np.ndarray, chain: Callable[[int], str | None]) -> None:
        new = np.unique(codes[self.action[codes] == UNSEEN])
        for code in new.tolist():
            value = chain(code)
            if value is None:
                self.action[code] = CONTEXT
            elif value == "":
                self.action[code] = DELETE
            elif value == chr(code):
                self.action[code] = KEEP
            else:
                self.action[code] = len(self.replacements)
                self.replacements.append(value)
        if len(self.replacements) != len(self.bounds) - 1:
            lengths = [len(r) for r in self.replacements]
            self.bounds = np.cumsum([0] + lengths, dtype=np.int64)
            self.chars = np.array([ord(c) for r in self.replacements for c in r], dtype=np.uint32)


_TABLE = _Table()


def map_lines(text: str, chain: Callable[[int], str | None]) -> tuple[list[str], list[int]]:
    """The lines of `text` (split at line breaks) with each character replaced by `chain(code)`,
    and the numbers of the lines that hold a character whose `chain` is None (their mapped text
    is not to be used). `chain` is always `curate.normalize`'s: a code point's entry, once learnt,
    is kept for the process."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    out, flagged, complete = _apply(codes, _TABLE.action, _TABLE.bounds, _TABLE.chars)
    if not complete:  # a code point not seen before: learn the text's, then map
        _TABLE.learn(codes, chain)
        out, flagged, complete = _apply(codes, _TABLE.action, _TABLE.bounds, _TABLE.chars)
    return str(out, "utf-8").split("\n"), flagged.tolist()


@njit(cache=True, nogil=True)
def _apply(codes, action, bounds, chars):  # noqa: ANN001, ANN202
    """(UTF-8 of the mapped text, lines with a CONTEXT character, True), or (empty, empty, False)
    at the first UNSEEN code point."""
    longest = 1
    for i in range(len(bounds) - 1):
        longest = max(longest, bounds[i + 1] - bounds[i])
    out = np.empty(4 * longest * len(codes), dtype=np.uint8)  # UTF-8: up to 4 bytes a character
    flagged = np.empty(len(codes) + 1, dtype=np.int64)
    n_flagged = 0
    line = 0
    n = 0
    for c in codes:
        a = action[c]
        if a == UNSEEN:
            return out[:0], flagged[:0], False
        if a == KEEP:
            n = _put_utf8(out, n, c)
            if c == NEWLINE:
                line += 1
        elif a == CONTEXT:
            if n_flagged == 0 or flagged[n_flagged - 1] != line:
                flagged[n_flagged] = line
                n_flagged += 1
        elif a != DELETE:
            for k in range(bounds[a], bounds[a + 1]):
                n = _put_utf8(out, n, chars[k])
    return out[:n], flagged[:n_flagged], True


@njit(cache=True, nogil=True, inline="always")
def _put_utf8(out, n, c):  # noqa: ANN001, ANN202
    """Write code point `c` as UTF-8 at `out[n:]`; the next free position."""
    if c < 0x80:
        out[n] = c
        return n + 1
    if c < 0x800:
        out[n], out[n + 1] = 0xC0 | (c >> 6), 0x80 | (c & 0x3F)
        return n + 2
    if c < 0x10000:
        out[n], out[n + 1], out[n + 2] = 0xE0 | (c >> 12), 0x80 | ((c >> 6) & 0x3F), 0x80 | (c & 0x3F)
        return n + 3
    out[n], out[n + 1] = 0xF0 | (c >> 18), 0x80 | ((c >> 12) & 0x3F)
    out[n + 2], out[n + 3] = 0x80 | ((c >> 6) & 0x3F), 0x80 | (c & 0x3F)
    return n + 4
