"""Compiled hot loops (numba) over one memory-mapped shard.

Everything works on raw bytes: `ds` is the uint8 view of `tokenized.{s}`, `sa` the uint8 view of
`table.{s}` with `pw`-byte little-endian pointers, `w` the token width. Suffixes compare by memcmp
of their little-endian bytes, truncated at the end of `ds`, which is the order the suffix array
was sorted in. Rank ranges are half-open [start, end).

The functions below are plain Python until `_bind` at the end of this module replaces each with
its compiled form: the ahead-of-time build of this exact source (indexes/compile_loops.py, made by
`make setup`; importing it costs about a millisecond and loads no numba), else numba's JIT with its
on-disk cache (importing numba alone takes 0.3-0.5 s, which a one-shot query would pay every time;
from an installed, read-only package numba keeps that cache under ~/.cache/numba instead).
The JIT's loops release the GIL (`nogil`), the ahead-of-time ones cannot (numba's pycc has no such
option): a threaded server that runs long queries side by side sets CURATE_INDEX_LOOPS=jit before
importing this module, which forces the JIT.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sysconfig
from pathlib import Path

import numpy as np

AOT_CACHE = Path.home() / ".cache" / "curate" / "search_loops"
AOT_MODULE = "_curate_search_loops"


def pointer_at(sa, pw, rank):
    """The byte offset stored at `rank`."""
    base = rank * pw
    ptr = np.int64(0)
    for b in range(pw):
        ptr |= np.int64(sa[base + b]) << (8 * b)
    return ptr


def token_at(ds, w, ptr, eos):
    """The token id at byte offset `ptr`; a separator or the end of the shard reads as `eos`."""
    if ptr >= ds.size:
        return eos
    tok = np.int64(0)
    for b in range(w):
        tok |= np.int64(ds[ptr + b]) << (8 * b)
    if tok == (np.int64(1) << (8 * w)) - 1:
        return eos
    return tok


def _next_key(ds, w, ptr, eos):
    """token_at, but -1 at the end of the shard (see next_token_counts)."""
    return -1 if ptr >= ds.size else token_at(ds, w, ptr, eos)


def _compare(ds, ptr, query, skip):
    """memcmp of the suffix at `ptr`, truncated to len(query) bytes, against `query`: -1, 0 or 1.
    The first `skip` bytes are known to be equal."""
    n = query.size
    avail = ds.size - ptr
    m = n if avail > n else avail
    for i in range(skip, m):
        a = ds[ptr + i]
        b = query[i]
        if a != b:
            return -1 if a < b else 1
    return 0 if m == n else -1


def find_range(ds, sa, pw, query, skip, lo, hi):
    """Ranks in [lo, hi) whose suffix starts with `query` (bytes), as (start, end); every suffix
    in [lo, hi) is known to share the first `skip` bytes of `query`."""
    if query.size == 0:
        return lo, hi
    a, b = lo, hi
    while a < b:  # first rank whose suffix is >= query
        mid = (a + b) >> 1
        if _compare(ds, pointer_at(sa, pw, mid), query, skip) < 0:
            a = mid + 1
        else:
            b = mid
    start = a
    b = hi
    while a < b:  # first rank whose suffix is > query
        mid = (a + b) >> 1
        if _compare(ds, pointer_at(sa, pw, mid), query, skip) <= 0:
            a = mid + 1
        else:
            b = mid
    return start, a


def count_many(ds, sa, pw, queries, bounds, out):
    """Batched count: queries[bounds[i]:bounds[i+1]] is query i (bytes); adds its count to out[i]."""
    n = sa.size // pw
    for i in range(bounds.size - 1):
        start, end = find_range(ds, sa, pw, queries[bounds[i] : bounds[i + 1]], 0, 0, n)
        out[i] += end - start


def next_token_counts(ds, sa, pw, w, num_bytes, start, end, unit, eos):
    """Next-token frequencies over ranks [start, end), sampling one rank per `unit` ranks.

    Same divide and conquer as infini-gram's engine, so approximate answers agree: a segment
    shorter than 4*unit is sampled at the middle of each unit; a segment whose first and last
    suffix continue with the same token is entirely that token; anything else is halved. One
    difference: the end of the shard reads as eos, as infini-gram reads it, but it sorts first and
    a separator last, so the halving tells them apart (infini-gram takes a whole segment for eos
    when the shard's last token ends the prompt and another occurrence ends a document).
    Returns parallel arrays (tokens, counts) that may repeat tokens.
    """
    cap = 2 * ((end - start) // unit) + 16
    tokens = np.empty(cap, np.int64)
    counts = np.empty(cap, np.int64)
    k = 0
    stack = np.empty((128, 2), np.int64)
    stack[0, 0] = start
    stack[0, 1] = end
    depth = 1
    while depth > 0:
        depth -= 1
        a = stack[depth, 0]
        b = stack[depth, 1]
        if b - a < 4 * unit:
            r = a
            while r < b:
                full = r + unit <= b
                mid = r + (unit >> 1) if full else (r + b) >> 1
                tokens[k] = token_at(ds, w, pointer_at(sa, pw, mid) + num_bytes, eos)
                counts[k] = unit if full else b - r
                k += 1
                r += unit
            continue
        first = _next_key(ds, w, pointer_at(sa, pw, a) + num_bytes, eos)
        last = _next_key(ds, w, pointer_at(sa, pw, b - 1) + num_bytes, eos)
        if first == last:  # never both the end of the shard: only one suffix reaches it
            tokens[k] = first
            counts[k] = b - a
            k += 1
            continue
        mid = (a + b) >> 1
        stack[depth, 0] = mid  # right half popped second
        stack[depth, 1] = b
        stack[depth + 1, 0] = a
        stack[depth + 1, 1] = mid
        depth += 2
    return tokens[:k], counts[:k]


def longest_prefix_match(ds, sa, pw, w, query):
    """Tokens of the longest prefix of `query` (bytes, whole tokens) that occurs in the shard."""
    n = sa.size // pw
    lo, hi = 0, n
    matched = 0
    while matched * w < query.size:
        lo, hi = find_range(ds, sa, pw, query[: (matched + 1) * w], matched * w, lo, hi)
        if lo == hi:
            break
        matched += 1
    return matched


def pointers_in(sa, pw, start, end):
    out = np.empty(end - start, np.int64)
    for r in range(start, end):
        out[r - start] = pointer_at(sa, pw, r)
    return out


def contains_separator(ds, w, lo, hi):
    """Whether bytes [lo, hi) contain `w` consecutive 0xFF bytes at any offset (as infini-gram checks)."""
    run = 0
    for i in range(lo, hi):
        if ds[i] == 0xFF:
            run += 1
            if run >= w:
                return True
        else:
            run = 0
    return False


def pack_even_pointers(sa_bytes, w, pw, out):
    """Keep the token-aligned entries of a byte-level suffix array and write them in `pw` LE bytes."""
    j = 0
    for i in range(sa_bytes.size):
        p = sa_bytes[i]
        if p % w == 0:
            base = j * pw
            for b in range(pw):
                out[base + b] = (p >> (8 * b)) & 0xFF
            j += 1
    return j


def ranges_without_separator(ds, w, lo, hi):
    """For each byte range [lo[i], hi[i]), whether it stays inside one document."""
    keep = np.empty(lo.size, np.bool_)
    for i in range(lo.size):
        keep[i] = not contains_separator(ds, w, lo[i], hi[i])
    return keep


def longest_matches(ds, sa, pw, w, query):
    """For each token position i of `query` (bytes), the length in tokens of the longest prefix
    of query[i:] that occurs in the shard."""
    n_tokens = query.size // w
    out = np.zeros(n_tokens, np.int64)
    for i in range(n_tokens):
        out[i] = longest_prefix_match(ds, sa, pw, w, query[i * w :])
    return out


def _same_kgram(ds, w, p, q, k):
    """Whether the k tokens at byte offsets p and q are equal and hold no separator."""
    span = k * w
    if p + span > ds.size or q + span > ds.size:
        return False
    run = 0
    for i in range(span):
        a = ds[p + i]
        if a != ds[q + i]:
            return False
        if i % w == 0:
            run = 0
        run = run + 1 if a == 0xFF else run
        if run == w:
            return False
    return True


def _valid_kgram(ds, w, p, k):
    return _same_kgram(ds, w, p, p, k)


def repeated_kgram_starts(ds, sa, pw, w, k):
    """Token positions whose k-gram also starts at an earlier position of the shard, and the
    positions that are the first of their k-gram (candidates for an earlier-shard check).

    Suffixes sharing a k-gram are adjacent in the suffix array, so one pass over neighbours finds
    every group; the smallest pointer in a group is the first occurrence.
    """
    n = sa.size // pw
    repeated = np.zeros(ds.size // w, np.bool_)
    first = np.zeros(ds.size // w, np.bool_)
    r = 0
    while r < n:
        p = pointer_at(sa, pw, r)
        if not _valid_kgram(ds, w, p, k):
            r += 1
            continue
        end = r + 1
        smallest = p
        while end < n and _same_kgram(ds, w, p, pointer_at(sa, pw, end), k):
            q = pointer_at(sa, pw, end)
            if q < smallest:
                smallest = q
            end += 1
        for j in range(r, end):
            q = pointer_at(sa, pw, j)
            if q != smallest:
                repeated[q // w] = True
        first[smallest // w] = True
        r = end
    return repeated, first


def kgrams_seen_in(ds_from, positions, w, k, ds, sa, pw):
    """For token positions of shard `ds_from`, whether their k-gram occurs in the other shard."""
    n = sa.size // pw
    out = np.zeros(positions.size, np.bool_)
    for i in range(positions.size):
        p = positions[i] * w
        start, end = find_range(ds, sa, pw, ds_from[p : p + k * w], 0, 0, n)
        out[i] = end > start
    return out


# What the ahead-of-time module exports, with the types the callers pass (C-contiguous 1-D arrays,
# Python ints as i8). pack_even_pointers takes pydivsufsort's int32 or int64 output: two exports.
SIGNATURES = {
    "pointer_at": "i8(u1[::1], i8, i8)",
    "token_at": "i8(u1[::1], i8, i8, i8)",
    "find_range": "UniTuple(i8, 2)(u1[::1], u1[::1], i8, u1[::1], i8, i8, i8)",
    "count_many": "void(u1[::1], u1[::1], i8, u1[::1], i8[::1], i8[::1])",
    "next_token_counts": "Tuple((i8[::1], i8[::1]))(u1[::1], u1[::1], i8, i8, i8, i8, i8, i8, i8)",
    "longest_prefix_match": "i8(u1[::1], u1[::1], i8, i8, u1[::1])",
    "pointers_in": "i8[::1](u1[::1], i8, i8, i8)",
    "contains_separator": "b1(u1[::1], i8, i8, i8)",
    "pack_even_pointers_i4": "i8(i4[::1], i8, i8, u1[::1])",
    "pack_even_pointers_i8": "i8(i8[::1], i8, i8, u1[::1])",
    "ranges_without_separator": "b1[::1](u1[::1], i8, i8[::1], i8[::1])",
    "longest_matches": "i8[::1](u1[::1], u1[::1], i8, i8, u1[::1])",
    "repeated_kgram_starts": "Tuple((b1[::1], b1[::1]))(u1[::1], u1[::1], i8, i8, i8)",
    "kgrams_seen_in": "b1[::1](u1[::1], i8[::1], i8, i8, u1[::1], u1[::1], i8)",
}
KERNELS = (
    "pointer_at", "token_at", "_next_key", "_compare", "find_range", "count_many", "next_token_counts",
    "longest_prefix_match", "pointers_in", "contains_separator", "pack_even_pointers", "ranges_without_separator",
    "longest_matches", "_same_kgram", "_valid_kgram", "repeated_kgram_starts", "kgrams_seen_in",
)  # fmt: skip


def aot_digest() -> str:
    """Names the ahead-of-time build: this source, the numpy it was built against, the ABI."""
    key = Path(__file__).read_bytes() + np.__version__.encode() + str(sysconfig.get_config_var("EXT_SUFFIX")).encode()
    return hashlib.sha256(key).hexdigest()[:12]


def aot_path() -> Path:
    return AOT_CACHE / aot_digest() / f"{AOT_MODULE}{sysconfig.get_config_var('EXT_SUFFIX')}"


def _load_aot():
    path = aot_path()
    if os.environ.get("CURATE_INDEX_LOOPS") == "jit" or not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(AOT_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bind() -> str:
    """Replace every kernel of this module by its compiled form; returns which one ("aot" or "jit")."""
    names = globals()
    module = _load_aot()
    if module is not None:
        for name in SIGNATURES:
            names[name] = getattr(module, name)
        by_dtype = {np.dtype(np.int32): module.pack_even_pointers_i4, np.dtype(np.int64): module.pack_even_pointers_i8}

        def pack_even_pointers(sa_bytes, w, pw, out):
            return by_dtype[sa_bytes.dtype](sa_bytes, w, pw, out)

        names["pack_even_pointers"] = pack_even_pointers
        return "aot"
    from numba import njit

    for name in KERNELS:  # module globals first, so that kernels calling kernels compile as one
        names[name] = njit(nogil=True, cache=True)(names[name])
    return "jit"


BACKEND = _bind()
