"""The suffix array of one shard, in infini-gram's `table.{s}` format.

Two sorters give byte-identical tables:
- `libsais`: libsais over the token alphabet (indexes/sort_shard.c, compiled by `make setup`),
  one symbol per token, so half the suffixes of a byte-level sort; the faster one;
- `pydivsufsort`: libdivsufsort over the little-endian bytes, keeping the token-aligned entries;
  needs no compiled part of ours and takes shards of any size.
`auto` takes libsais when it is built and the shard fits its limits (2^30 tokens, ids below
2^24), else pydivsufsort. Kept light to import: a Ray task or a benchmark process that sorts
with libsais loads only the standard library.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from functools import cache
from pathlib import Path

from curate.atomic import atomic_path
from indexes.layout import pointer_width, shard_path

SORTERS = ("auto", "libsais", "pydivsufsort")
SORT_SHARD_SOURCE = Path(__file__).with_name("sort_shard.c")
LIBSAIS_CACHE = Path.home() / ".cache" / "curate" / "libsais"
LIBSAIS_MAX_TOKENS = 2**30  # sort_shard.c sorts with 32-bit indices and keeps room beside them

# The status codes of sort_shard.c's enum, as messages.
IDS_TOO_LARGE = 7  # the one libsais refusal that `auto` answers by sorting the bytes instead
_SORT_ERRORS = {
    1: "cannot read it (missing or empty)",
    2: "its size is not a multiple of the token width",
    3: f"it has more than {LIBSAIS_MAX_TOKENS:,} tokens (use --sorter pydivsufsort or smaller shards)",
    4: "out of memory",
    5: "libsais failed",
    6: "cannot write the table",
    IDS_TOO_LARGE: "it holds token ids of 2^24 or more (use --sorter pydivsufsort)",
}


class SortError(RuntimeError):
    """A shard that could not be suffix-sorted."""


@cache
def _source_digest() -> str:
    return hashlib.sha256(SORT_SHARD_SOURCE.read_bytes()).hexdigest()[:12]


def sort_shard_library() -> Path:
    """Where `make setup` puts the compiled sort_shard.c: named by the source's hash, so an edited
    source is never run through a stale build."""
    return LIBSAIS_CACHE / f"sort_shard-{_source_digest()}.so"


@cache
def _sort_shard_function():
    path = sort_shard_library()
    if not path.is_file():
        raise SortError(f"{path} is not built: run `make setup` (or pass --sorter pydivsufsort)")
    function = ctypes.CDLL(str(path)).curate_sort_shard
    function.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def check_sorter(sorter: str) -> None:
    if sorter not in SORTERS:
        raise ValueError(f"unknown sorter {sorter!r}: choose one of {', '.join(SORTERS)}")


def choose_sorter(sorter: str, tokens: int) -> str:
    """The sorter that `sorter` means for a shard of `tokens` tokens."""
    check_sorter(sorter)
    if sorter != "auto":
        return sorter
    return "libsais" if sort_shard_library().is_file() and tokens <= LIBSAIS_MAX_TOKENS else "pydivsufsort"


def build_suffix_array(index_dir: str | Path, s: int, token_width: int, sorter: str = "auto") -> str:
    """Write `table.{s}`: the token-aligned suffixes of `tokenized.{s}` in the memcmp order of its
    little-endian bytes, as byte offsets in ceil(log2(bytes)/8) bytes each. Returns the sorter used."""
    index_dir = Path(index_dir)
    tokenized = shard_path(index_dir, "tokenized", s)
    size = tokenized.stat().st_size
    if size == 0:
        raise SortError(f"{tokenized}: the shard is empty")
    chosen = choose_sorter(sorter, size // token_width)
    with atomic_path(shard_path(index_dir, "table", s)) as tmp:
        if chosen == "libsais":
            status = _sort_shard_function()(os.fsencode(tokenized), os.fsencode(tmp), token_width, pointer_width(size))
            if status == IDS_TOO_LARGE and sorter == "auto":
                chosen = "pydivsufsort"  # ids from hashing or a custom scheme, not a tokenizer's
            elif status != 0:
                raise SortError(f"{tokenized}: {_SORT_ERRORS.get(status, f'error {status}')}")
        if chosen == "pydivsufsort":
            _sort_bytes(tokenized, tmp, token_width, pointer_width(size))
    return chosen


def _sort_bytes(tokenized: Path, table_path: Path, token_width: int, pw: int) -> None:
    """pydivsufsort over the little-endian bytes, token-aligned entries packed to `pw` bytes."""
    import numpy as np
    from pydivsufsort import divsufsort

    from indexes.search_loops import pack_even_pointers

    ds = np.fromfile(tokenized, dtype=np.uint8)
    byte_sa = divsufsort(ds)
    n = ds.size // token_width
    table = np.memmap(table_path, dtype=np.uint8, mode="w+", shape=(n * pw,))
    written = pack_even_pointers(byte_sa, token_width, pw, table)
    if written != n:
        raise SortError(f"{tokenized}: packed {written} suffixes, expected {n}")
    table.flush()
