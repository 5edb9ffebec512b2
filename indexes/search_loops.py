"""Compiled hot loops (numba, nogil) over one memory-mapped shard.

Everything works on raw bytes: `ds` is the uint8 view of `tokenized.{s}`, `sa` the uint8 view of
`table.{s}` with `pw`-byte little-endian pointers, `w` the token width. Suffixes compare by memcmp
of their little-endian bytes, truncated at the end of `ds`, which is the order the suffix array
was sorted in. Rank ranges are half-open [start, end).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(nogil=True, cache=True)


@njit(**_JIT)
def pointer_at(sa, pw, rank):
    """The byte offset stored at `rank`."""
    base = rank * pw
    ptr = np.int64(0)
    for b in range(pw):
        ptr |= np.int64(sa[base + b]) << (8 * b)
    return ptr


@njit(**_JIT)
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


@njit(**_JIT)
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


@njit(**_JIT)
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


@njit(**_JIT)
def count_many(ds, sa, pw, queries, bounds, out):
    """Batched count: queries[bounds[i]:bounds[i+1]] is query i (bytes); adds its count to out[i]."""
    n = sa.size // pw
    for i in range(bounds.size - 1):
        start, end = find_range(ds, sa, pw, queries[bounds[i] : bounds[i + 1]], 0, 0, n)
        out[i] += end - start


@njit(**_JIT)
def next_token_counts(ds, sa, pw, w, num_bytes, start, end, unit, eos):
    """Next-token frequencies over ranks [start, end), sampling one rank per `unit` ranks.

    Same divide and conquer as infini-gram's engine, so approximate answers agree: a segment
    shorter than 4*unit is sampled at the middle of each unit; a segment whose first and last
    suffix continue with the same token is entirely that token; anything else is halved.
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
        first = token_at(ds, w, pointer_at(sa, pw, a) + num_bytes, eos)
        last = token_at(ds, w, pointer_at(sa, pw, b - 1) + num_bytes, eos)
        if first == last:
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


@njit(**_JIT)
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


@njit(**_JIT)
def pointers_in(sa, pw, start, end):
    out = np.empty(end - start, np.int64)
    for r in range(start, end):
        out[r - start] = pointer_at(sa, pw, r)
    return out


@njit(**_JIT)
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


@njit(**_JIT)
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


@njit(**_JIT)
def ranges_without_separator(ds, w, lo, hi):
    """For each byte range [lo[i], hi[i]), whether it stays inside one document."""
    keep = np.empty(lo.size, np.bool_)
    for i in range(lo.size):
        keep[i] = not contains_separator(ds, w, lo[i], hi[i])
    return keep


@njit(**_JIT)
def longest_matches(ds, sa, pw, w, query):
    """For each token position i of `query` (bytes), the length in tokens of the longest prefix
    of query[i:] that occurs in the shard."""
    n_tokens = query.size // w
    out = np.zeros(n_tokens, np.int64)
    for i in range(n_tokens):
        out[i] = longest_prefix_match(ds, sa, pw, w, query[i * w :])
    return out


@njit(**_JIT)
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


@njit(**_JIT)
def _valid_kgram(ds, w, p, k):
    return _same_kgram(ds, w, p, p, k)


@njit(**_JIT)
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


@njit(**_JIT)
def kgrams_seen_in(ds_from, positions, w, k, ds, sa, pw):
    """For token positions of shard `ds_from`, whether their k-gram occurs in the other shard."""
    n = sa.size // pw
    out = np.zeros(positions.size, np.bool_)
    for i in range(positions.size):
        p = positions[i] * w
        start, end = find_range(ds, sa, pw, ds_from[p : p + k * w], 0, 0, n)
        out[i] = end > start
    return out
