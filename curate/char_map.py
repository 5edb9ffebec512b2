"""CCNet's per-character steps (accents, digits, punctuation, control characters) as one compiled
pass over many lines at once.

`str.translate` with a dict looks every character of a non-ASCII string up in the dict, and a
single curly quote makes a line non-ASCII; here the table is an array indexed by code point, and
a batch of lines goes through in one call as UTF-32. The table is `curate.normalize`'s own, read
for each code point the first time a text holds it, line breaks kept.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import numpy as np
from numba import njit

KEEP, DELETE, UNSEEN = -1, -2, -3


class _Table:
    """Per code point: KEEP, DELETE, the index of its replacement in `bounds`/`chars`, or UNSEEN
    until a text holds it (then the table passed says, as it does for str.translate)."""

    def __init__(self) -> None:
        self.action = np.full(sys.maxunicode + 1, UNSEEN, dtype=np.int32)
        self.action[ord("\n")] = KEEP
        self.replacements: list[str] = []
        self.bounds = np.zeros(1, dtype=np.int64)
        self.chars = np.zeros(0, dtype=np.uint32)

    def learn(self, codes: np.ndarray, table: Mapping[int, str | None]) -> None:
        new = np.unique(codes[self.action[codes] == UNSEEN])
        for code in new.tolist():
            value = table[code]
            if value is None:
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


def map_chars(text: str, table: Mapping[int, str | None]) -> str:
    """`text.translate(table)`, line breaks kept; `table` is always `curate.normalize.TABLE`
    (a code point's action, once learnt, is kept for the process)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    _TABLE.learn(codes, table)
    return _apply(codes, _TABLE.action, _TABLE.bounds, _TABLE.chars).tobytes().decode("utf-32-le")


@njit(cache=True, nogil=True)
def _apply(codes, action, bounds, chars):  # noqa: ANN001, ANN202
    longest = 1
    for i in range(len(bounds) - 1):
        longest = max(longest, bounds[i + 1] - bounds[i])
    out = np.empty(longest * len(codes), dtype=np.uint32)
    n = 0
    for c in codes:
        a = action[c]
        if a == KEEP:
            out[n] = c
            n += 1
        elif a != DELETE:
            for k in range(bounds[a], bounds[a + 1]):
                out[n] = chars[k]
                n += 1
    return out[:n]
