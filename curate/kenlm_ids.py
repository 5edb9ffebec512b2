"""KenLM scoring of many lines of vocabulary ids per call, through KenLM's own C++ library.

The `kenlm` module's `Model.score(text)` splits each line into words and looks each up by its
bytes. A tokenizer that yields piece ids can map them to KenLM's vocabulary once (`word_ids` of
every piece) and score whole batches of lines as flat id arrays (`score`): no Python object per
word, and no GIL held while KenLM scores (ctypes releases it). The per-line sums are the floats
`Model.score(line)` gives. The compiled part is curate/kenlm_ids.cc, built by `make setup` into
a library named by the source's hash; without it `IdScorer` raises `IdScorerUnavailable`, which
callers catch to score through the `kenlm` module instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import weakref
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("kenlm_ids.cc")
CACHE = Path.home() / ".cache" / "curate" / "kenlm_ids"
_ERROR_SIZE = 4096


class IdScorerUnavailable(RuntimeError):
    """The compiled library is not built (a plain `pip install` without `make setup`)."""


def library_path() -> Path:
    """Where `make setup` puts the compiled kenlm_ids.cc: named by the source's hash, so an edited
    source is never run through a stale build."""
    if not SOURCE.is_file():
        raise IdScorerUnavailable(f"{SOURCE} is missing: install curate from its source tree and run `make setup`")
    return CACHE / f"kenlm_ids-{hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]}.so"


@cache
def _library() -> ctypes.CDLL:
    path = library_path()
    if not path.is_file():
        raise IdScorerUnavailable(f"{path} is not built: run `make setup` (scripts/setup.sh builds it)")
    lib = ctypes.CDLL(str(path))
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.curate_kenlm_load.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.curate_kenlm_load.restype = p
    lib.curate_kenlm_free.argtypes = [p]
    lib.curate_kenlm_free.restype = None
    lib.curate_kenlm_vocabulary_size.argtypes = [p]
    lib.curate_kenlm_vocabulary_size.restype = ctypes.c_uint32
    lib.curate_kenlm_word_ids.argtypes = [p, p, p, i64, p]
    lib.curate_kenlm_word_ids.restype = None
    lib.curate_kenlm_score.argtypes = [p, p, p, i64, p]
    lib.curate_kenlm_score.restype = i64
    return lib


class IdScorer:
    """KenLM scoring of many lines of vocabulary ids per call, equal to kenlm.Model.score(line)."""

    def __init__(self, binary_path: str | Path):
        """Loads the model as `kenlm.Model(binary_path)` does (binary probing or trie, or ARPA);
        FileNotFoundError or OSError with KenLM's reason when it cannot."""
        lib = _library()
        self.path = Path(binary_path).absolute()
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such KenLM model file")
        error = ctypes.create_string_buffer(_ERROR_SIZE)
        handle = lib.curate_kenlm_load(os.fsencode(self.path), error, _ERROR_SIZE)
        if not handle:
            reason = " ".join(error.value.decode("utf-8", errors="replace").split())
            raise OSError(f"{self.path}: KenLM cannot read this model ({reason})")
        self._lib = lib
        self._handle = handle
        self._free = weakref.finalize(self, lib.curate_kenlm_free, handle)
        self.vocabulary_size: int = lib.curate_kenlm_vocabulary_size(handle)

    def word_ids(self, words: Sequence[bytes]) -> np.ndarray:
        """uint32 per word: KenLM's vocabulary index of the word's bytes (0: <unk>), the lookup
        Model.score makes for each whitespace-separated word of a line."""
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        ends = np.cumsum(lengths, dtype=np.int64)
        data = b"".join(words)
        out = np.empty(len(words), dtype=np.uint32)
        self._lib.curate_kenlm_word_ids(self._handle, data, ends.ctypes.data, len(words), out.ctypes.data)
        return out

    def score(self, ids: np.ndarray, line_ends: np.ndarray) -> np.ndarray:
        """float32 per line: log10 p(words </s> | <s>), added in a float in word order as
        Model.score does, so each value is the float it returns. `ids` holds the uint32 words of
        all lines back to back; `line_ends` the int64 end offset of each line in `ids`."""
        ids = _vector(ids, np.uint32, "ids")
        line_ends = _vector(line_ends, np.int64, "line_ends")
        _check_line_ends(line_ends, len(ids))
        out = np.empty(len(line_ends), dtype=np.float32)
        bad = self._lib.curate_kenlm_score(
            self._handle, ids.ctypes.data, line_ends.ctypes.data, len(line_ends), out.ctypes.data
        )
        if bad >= 0:
            line = int(np.searchsorted(line_ends, bad, side="right"))
            raise ValueError(
                f"ids[{bad}] = {ids[bad]} (line {line}) is not a word id of {self.path}: "
                f"its vocabulary has {self.vocabulary_size} words"
            )
        return out


def _vector(array: np.ndarray, dtype: type, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != dtype or array.ndim != 1:
        raise TypeError(f"{name} must be a 1-D {np.dtype(dtype).name} array, got {array.ndim}-D {array.dtype}")
    return np.ascontiguousarray(array)


def _check_line_ends(line_ends: np.ndarray, words: int) -> None:
    """Line ends must cut `words` ids into back-to-back lines: non-decreasing, the last at the end."""
    if len(line_ends) == 0:
        if words:
            raise ValueError(f"line_ends is empty but ids holds {words} words")
        return
    if line_ends[0] < 0:
        raise ValueError(f"line_ends[0] = {line_ends[0]} is negative")
    back = np.flatnonzero(line_ends[1:] < line_ends[:-1])
    if len(back):
        k = int(back[0]) + 1
        raise ValueError(f"line_ends[{k}] = {line_ends[k]} is before line_ends[{k - 1}] = {line_ends[k - 1]}")
    if line_ends[-1] != words:
        raise ValueError(f"the last line ends at {line_ends[-1]}, but ids holds {words} words")
