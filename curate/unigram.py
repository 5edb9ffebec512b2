"""SentencePiece's unigram segmentation, many lines per call, compiled with numba.

SentencePiece's own search is fast, but each call around it costs more than the search on a short
line: the normaliser with its alignment map, a result proto, a Python list per line. Here the
lines of a batch go in as one UTF-8 buffer and come out as piece ids in one array.

The search is sentencepiece 0.2's (`unigram::Model::EncodeOptimized`), step for step, so the
segmentation is the same, ties included: the best path ending at each byte position is kept, the
pieces starting at a character are found by walking a trie of the pieces' bytes, a candidate
replaces the kept path only when its float32 score is strictly greater (the earliest start wins a
tie), an unknown character scores the lowest piece score minus 10, and running scores beyond
+-1e5 are shifted back to 0 as SentencePiece does on very long lines. Afterwards, as
`SentencePieceProcessor` does, neighbouring unknown pieces merge into one. Unused pieces are in the
trie but never chosen; models with user-defined symbols or byte fallback are not taken (`Unigram.of`
returns None) and keep SentencePiece's own call. tests/test_scoring_exact.py checks equality with
`sp.encode` on the shipped data.

Lines come normalised by SentencePiece's normaliser, or, for printable ASCII under a model whose
normaliser leaves such text as it is, raw: the kernel then applies the whitespace rules itself
(a "▁" in front, runs of spaces as one "▁", none at either end).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from sentencepiece import sentencepiece_model_pb2

UNK_PENALTY = np.float32(10.0)  # below the lowest piece score, as SentencePiece scores an unknown character
SCORE_RESET = np.float32(100000.0)
# bytes of a UTF-8 character from its first byte's high nibble (SentencePiece's OneCharLen)
CHAR_LEN = np.array([1] * 12 + [2, 2, 3, 4], dtype=np.int64)


@dataclass(frozen=True)
class Unigram:
    """A unigram model's pieces as arrays for the compiled search: a double-array trie of the
    pieces' bytes (as SentencePiece's own: from node `s`, byte `c` leads to `t = base[s] + c` when
    `check[t] == s`; a few hundred KB, so a walk stays in cache), the piece each node completes,
    and its score, side by side so that a walk reads neighbouring memory."""

    base: np.ndarray  # int32 per node
    check: np.ndarray  # int32 per node: its parent, -1 for a free slot
    node_piece: np.ndarray  # int32 per node: the NORMAL piece it completes, -1 for none (UNUSED pieces are skipped)
    node_score: np.ndarray  # float32 per node: that piece's score
    unk_id: int
    unk_score: np.float32

    @classmethod
    def of(cls, proto: sentencepiece_model_pb2.ModelProto) -> Unigram | None:
        """The arrays of a unigram model; None for a model the kernel does not reproduce."""
        kind = sentencepiece_model_pb2.ModelProto.SentencePiece
        if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
            return None
        if proto.trainer_spec.byte_fallback or any(p.type == kind.USER_DEFINED for p in proto.pieces):
            return None
        transitions: dict[tuple[int, int], int] = {}
        piece_of = [-1]
        for piece_id, p in enumerate(proto.pieces):
            if p.type not in (kind.NORMAL, kind.UNUSED):
                continue
            node = 0
            for byte in p.piece.encode():
                child = transitions.get((node, byte))
                if child is None:
                    child = transitions[node, byte] = len(piece_of)
                    piece_of.append(-1)
                node = child
            piece_of[node] = piece_id
        edges = sorted((parent, byte, child) for (parent, byte), child in transitions.items())
        parent, byte, child = (np.array(column, dtype=np.int64) for column in zip(*edges, strict=True))
        base, check, node_piece = _double_array(parent, byte, child, np.array(piece_of, dtype=np.int32))
        scores = np.array([p.score for p in proto.pieces], dtype=np.float32)
        usable = np.array([p.type == kind.NORMAL for p in proto.pieces], dtype=bool)
        node_piece[(node_piece >= 0) & ~usable[node_piece]] = -1
        node_score = np.where(node_piece >= 0, scores[node_piece], np.float32(0)).astype(np.float32)
        unk = [i for i, p in enumerate(proto.pieces) if p.type == kind.UNKNOWN]
        min_score = np.float32(scores[usable].min())
        return cls(base, check, node_piece, node_score, unk[0] if unk else 0, min_score - UNK_PENALTY)

    def encode(self, buf: np.ndarray, bounds: np.ndarray, raw: np.ndarray) -> Segmented:
        """Pieces of the lines `buf[bounds[i]:bounds[i + 1]]` (UTF-8 bytes); `raw[i]` marks a line
        that still needs SentencePiece's whitespace rules (see the module docstring)."""
        arrays = (self.base, self.check, self.node_piece, self.node_score)
        ids, line_ends, unk_bounds, unk_bytes = _segment(buf, bounds, raw, *arrays, self.unk_id, self.unk_score)
        return Segmented(ids, line_ends, unk_bytes, unk_bounds)


def byte_slices(data: np.ndarray, bounds: np.ndarray) -> list[bytes]:
    """`data[bounds[i]:bounds[i + 1]]` for each i, as bytes."""
    whole, cuts = data.tobytes(), bounds.tolist()
    return [whole[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


@dataclass(frozen=True)
class Segmented:
    """Piece ids of many lines back to back. An unknown piece (merged, as SentencePiece outputs
    it) has the model's unk id, and its text is the k-th run of `unknown` in order."""

    ids: np.ndarray  # int32
    line_ends: np.ndarray  # int64, the end of each line's pieces in `ids`
    unknown: np.ndarray  # uint8, the texts of the unknown pieces back to back
    unknown_bounds: np.ndarray  # int64, len(unknown pieces) + 1 offsets into `unknown`

    def counts(self) -> np.ndarray:
        return np.diff(self.line_ends, prepend=0)

    def unknown_texts(self) -> list[bytes]:
        return byte_slices(self.unknown, self.unknown_bounds)

    def whole_unknowns(self) -> bool:
        """Whether no unknown piece holds whitespace that KenLM's module would split it at (after
        CCNet's and SentencePiece's normalisation none does)."""
        return not any(byte in self.unknown for byte in b" \t\n\r\x0b\x0c")


@njit(cache=True)
def _free_at_or_after(next_free: np.ndarray, slot: int) -> int:
    """The first free slot from `slot` on (`next_free` links a used slot onwards, path halving)."""
    while next_free[slot] != slot:
        next_free[slot] = next_free[next_free[slot]]
        slot = next_free[slot]
    return slot


@njit(cache=True)
def _double_array(parent, byte, child, piece_of):  # noqa: ANN001, ANN202
    """Place a trie (edges sorted by parent, then byte; node 0 the root) into a double array,
    breadth first, each node's children at the first base whose slots are all free, trying only
    bases that put the first child on a free slot; a crowded start of the array is left behind
    once a node has tried many of its holes in vain (a little space for a build in milliseconds)."""
    nodes = len(piece_of)
    size = 4 * nodes + 1024
    base = np.zeros(size, dtype=np.int32)
    check = np.full(size, -1, dtype=np.int32)
    next_free = np.arange(size + 1)
    slot_of = np.full(nodes, -1, dtype=np.int64)
    slot_of[0] = 0
    check[0] = 0  # the root's slot is taken
    next_free[0] = 1
    search_from = 1
    edges = np.searchsorted(parent, np.arange(nodes + 1))  # node n's edges: edges[n]:edges[n + 1]
    order = np.empty(nodes, dtype=np.int64)  # nodes in breadth-first order, each placed before its children
    order[0] = 0
    placed = 1
    for k in range(nodes):
        node = order[k]
        lo, hi = edges[node], edges[node + 1]
        if lo == hi:
            continue
        slot = _free_at_or_after(next_free, max(search_from, byte[lo] + 1))
        tries = 0
        while True:
            b = slot - byte[lo]
            if b + 256 >= size:  # grow: the new slots are free
                base = np.concatenate((base, np.zeros(size, dtype=np.int32)))
                check = np.concatenate((check, np.full(size, -1, dtype=np.int32)))
                next_free = np.concatenate((next_free[:size], np.arange(size, 2 * size + 1)))
                size *= 2
            fits = True
            for e in range(lo + 1, hi):
                if check[b + byte[e]] != -1:
                    fits = False
                    break
            if fits:
                break
            tries += 1
            if tries == 256:
                search_from = slot
            slot = _free_at_or_after(next_free, slot + 1)
        here = slot_of[node]
        base[here] = b
        for e in range(lo, hi):
            taken = b + byte[e]
            check[taken] = here
            next_free[taken] = taken + 1
            slot_of[child[e]] = taken
            order[placed] = child[e]
            placed += 1
    used = 0
    for i in range(size):
        if check[i] != -1:
            used = i
    size = used + 257  # every base + byte of a walk stays inside
    node_piece = np.full(size, -1, dtype=np.int32)
    for node in range(nodes):
        node_piece[slot_of[node]] = piece_of[node]
    return base[:size].copy(), check[:size].copy(), node_piece


@njit(cache=True, nogil=True)
def _normalized(buf: np.ndarray, start: int, stop: int, raw: bool, work: np.ndarray) -> int:
    """Copy one line into `work`, applying SentencePiece's whitespace rules to a raw ASCII line;
    returns its length in bytes."""
    if not raw:
        work[: stop - start] = buf[start:stop]
        return stop - start
    n = 0
    prev_space = True  # leading spaces are dropped
    for i in range(start, stop):
        c = buf[i]
        if c == 32:
            if not prev_space:
                work[n], work[n + 1], work[n + 2] = 0xE2, 0x96, 0x81
                n += 3
            prev_space = True
        else:
            if n == 0:  # the dummy prefix, before the first character
                work[0], work[1], work[2] = 0xE2, 0x96, 0x81
                n = 3
            work[n] = c
            n += 1
            prev_space = False
    if n > 0 and prev_space:  # a trailing space became a mark: drop it
        n -= 3
    return n


@njit(cache=True, nogil=True)
def _segment(buf, bounds, raw, base, check, node_piece, node_score, unk_id, unk_score):  # noqa: ANN001, ANN202
    lines = len(bounds) - 1
    longest = 0
    for i in range(lines):
        longest = max(longest, bounds[i + 1] - bounds[i])
    work = np.empty(3 * longest + 3, dtype=np.uint8)
    best = np.empty(3 * longest + 4, dtype=np.float32)
    starts = np.empty(3 * longest + 4, dtype=np.int64)
    best_id = np.empty(3 * longest + 4, dtype=np.int32)
    path = np.empty(3 * longest + 4, dtype=np.int64)
    capacity = 3 * (bounds[lines] - bounds[0]) + 3 * lines
    ids = np.empty(capacity, dtype=np.int32)
    line_ends = np.empty(lines, dtype=np.int64)
    unknown = np.empty(capacity, dtype=np.uint8)
    unknown_bounds = np.empty(capacity + 1, dtype=np.int64)
    unknown_bounds[0] = 0
    n_ids = 0
    n_unknown = 0
    for line in range(lines):
        size = _normalized(buf, bounds[line], bounds[line + 1], raw[line], work)
        best[: size + 1] = 0
        starts[: size + 1] = -1
        best_id[: size + 1] = -1
        frontier = 0
        at = 0
        while at < size:
            here = best[at]
            if here < -SCORE_RESET or here > SCORE_RESET:
                for i in range(at, frontier + 1):
                    if i == at or starts[i] != -1:
                        best[i] -= here
                here = np.float32(0.0)
            char_len = min(CHAR_LEN[work[at] >> 4], size - at)
            single = False
            node = np.int64(0)
            pos = at
            while pos < size:
                target = base[node] + work[pos]
                if check[target] != node:
                    break
                node = target
                pos += 1
                piece = node_piece[node]
                if piece < 0:
                    continue
                frontier = max(frontier, pos)
                candidate = np.float32(node_score[node] + here)
                if starts[pos] == -1 or candidate > best[pos]:
                    best[pos], starts[pos], best_id[pos] = candidate, at, piece
                if pos - at == char_len:
                    single = True
            if not single:
                end = at + char_len
                frontier = max(frontier, end)
                candidate = np.float32(unk_score + here)
                if starts[end] == -1 or candidate > best[end]:
                    best[end], starts[end], best_id[end] = candidate, at, unk_id
            at += char_len
        # back from the end, then forward, merging neighbouring unknown pieces
        steps = 0
        end = size
        while end > 0:
            path[steps] = end
            steps += 1
            end = starts[end]
        prev_unknown = False
        for k in range(steps - 1, -1, -1):
            stop = path[k]
            begin = starts[stop]
            piece = best_id[stop]
            is_unknown = piece == unk_id
            if not (is_unknown and prev_unknown):
                ids[n_ids] = piece
                n_ids += 1
                if is_unknown:
                    n_unknown += 1
                    unknown_bounds[n_unknown] = unknown_bounds[n_unknown - 1]
            if is_unknown:
                length = stop - begin
                offset = unknown_bounds[n_unknown]
                unknown[offset : offset + length] = work[begin:stop]
                unknown_bounds[n_unknown] = offset + length
            prev_unknown = is_unknown
        line_ends[line] = n_ids
    unknown = unknown[: unknown_bounds[n_unknown]].copy()
    return ids[:n_ids].copy(), line_ends, unknown_bounds[: n_unknown + 1].copy(), unknown


@njit(cache=True, nogil=True)
def joined_pieces(ids, line_ends, unknown, unknown_bounds, piece_bytes, piece_bounds, unk_id):  # noqa: ANN001, ANN201
    """Each line's pieces joined by spaces, as UTF-8 bytes back to back, with each line's end
    offset: the strings KenLM's Python module scores."""
    size = 0
    for i in range(len(ids)):
        size += piece_bounds[ids[i] + 1] - piece_bounds[ids[i]] + 1
    out = np.empty(size + len(unknown), dtype=np.uint8)
    ends = np.empty(len(line_ends), dtype=np.int64)
    n = 0
    k = 0
    u = 0
    for line in range(len(line_ends)):
        first = True
        while k < line_ends[line]:
            if not first:
                out[n] = 32
                n += 1
            first = False
            piece = ids[k]
            if piece == unk_id:
                a, b = unknown_bounds[u], unknown_bounds[u + 1]
                u += 1
                out[n : n + b - a] = unknown[a:b]
            else:
                a, b = piece_bounds[piece], piece_bounds[piece + 1]
                out[n : n + b - a] = piece_bytes[a:b]
            n += b - a
            k += 1
        ends[line] = n
    return out[:n], ends
