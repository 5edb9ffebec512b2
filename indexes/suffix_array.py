"""The suffix array of one shard, in infini-gram's `table.{s}` format (kept light to import: a
Ray task or a benchmark process loads only numpy, pydivsufsort and the packing kernel)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from pydivsufsort import divsufsort

from indexes.kernels import pack_even_pointers
from indexes.layout import pointer_width, shard_path


def build_suffix_array(index_dir: str | Path, s: int, token_width: int) -> float:
    """Write `table.{s}`: pydivsufsort over the little-endian bytes, token-aligned entries packed
    to ceil(log2(bytes)/8) bytes each. This equals infini-gram's order (memcmp of the LE bytes).
    Returns the seconds spent."""
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    ds = np.fromfile(shard_path(index_dir, "tokenized", s), dtype=np.uint8)
    if ds.size == 0:
        raise ValueError(f"shard {s} is empty")
    byte_sa = divsufsort(ds)
    pw = pointer_width(ds.size)
    n = ds.size // token_width
    tmp = shard_path(index_dir, "table", s).with_name(f".partial-{s}")
    table = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(n * pw,))
    written = pack_even_pointers(byte_sa, token_width, pw, table)
    if written != n:
        raise RuntimeError(f"shard {s}: packed {written} suffixes, expected {n}")
    table.flush()
    del table, byte_sa
    os.replace(tmp, shard_path(index_dir, "table", s))
    return time.perf_counter() - t0
