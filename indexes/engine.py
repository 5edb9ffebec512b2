"""Query an index the way infini-gram's engine does: same method names, same result dicts.

Inputs are lists of token ids (use `tokenize` for text). Every answer is summed over shards;
rank ranges (`segment_by_shard`) and byte pointers (`ptrs_by_shard`) are per shard. Invalid input
raises `QueryError` (infini-gram returns `{'error': ...}` instead; the HTTP server does that).
Differences from infini-gram: CNF clause subsampling (approximate answers only) draws from numpy's
generator (same seed) and scales counts by the exact ratio, not an integer one; a document fetched
by a pointer on its separator has needle_offset -1 where infini-gram's unsigned arithmetic wraps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.tokenizer import TextTokenizer, fingerprint, load_tokenizer
from indexes import search_loops
from indexes.layout import IndexFormatError, read_card
from indexes.shards import Shard, open_shards

CNF_SEED = 19260817


class QueryError(ValueError):
    """A query the engine cannot answer as asked (wrong types, out-of-range ids or positions)."""


class Engine:
    """An opened index: memory-mapped shards plus the tokenizer it was built with."""

    def __init__(
        self,
        index_dir: str | Path,
        max_support: int = 1000,
        max_clause_freq: int = 50000,
        max_diff_tokens: int = 100,
        maxnum: int = 1,
        max_disp_len: int = 1000,
        shard_ids: list[int] | None = None,
    ):
        """`shard_ids` opens only those shards (a serving replica's group; see indexes/serve_ray.py)."""
        self.index_dir = Path(index_dir)
        self.card = read_card(self.index_dir)
        self.shards: list[Shard] = open_shards(self.index_dir, self.card, shard_ids)
        self.token_width: int = self.card["token_width"]
        self.eos_token_id: int = self.card["eos_token_id"]
        self.token_id_max = (1 << (8 * self.token_width)) - 1
        self._dtype = np.dtype("<u2" if self.token_width == 2 else "<u4")
        self.tokenizer = self._load_tokenizer()
        self.max_support, self.max_clause_freq, self.max_diff_tokens = max_support, max_clause_freq, max_diff_tokens
        self.maxnum, self.max_disp_len = maxnum, max_disp_len

    # -- text ---------------------------------------------------------------------------------

    def _load_tokenizer(self) -> TextTokenizer | None:
        """The card names a file in the index, or the absolute path of the .gguf it was built with
        (and, since a file left in place can change, the fingerprint of its ids)."""
        if not self.card.get("tokenizer"):
            return None
        path = self.index_dir / self.card["tokenizer"]
        if not path.is_file():
            raise IndexFormatError(
                f"{self.index_dir} was tokenized with {path}, which is missing; "
                "restore that file (or rebuild the index)"
            )
        tokenizer = load_tokenizer(path)
        recorded = self.card.get("tokenizer_fingerprint")
        if recorded and fingerprint(tokenizer) != recorded:
            raise IndexFormatError(
                f"{path} now gives other token ids than when {self.index_dir} was built; "
                "restore that file (or rebuild the index)"
            )
        return tokenizer

    def tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise QueryError("this index was built without a tokenizer; query with token ids")
        return self.tokenizer.encode(text)

    def detokenize(self, token_ids: list[int]) -> str:
        if self.tokenizer is None:
            raise QueryError("this index was built without a tokenizer")
        return self.tokenizer.decode(token_ids)

    # -- counting -----------------------------------------------------------------------------

    def find(self, input_ids: list[int]) -> dict:
        """Rank range [start, end) of the n-gram in each shard."""
        segments = self._segments(self._bytes(input_ids))
        return {"cnt": sum(e - s for s, e in segments), "segment_by_shard": segments}

    def count(self, input_ids: list[int]) -> dict:
        """Occurrences of the n-gram; the empty n-gram counts every token (separators included)."""
        return {"count": self.find(input_ids)["cnt"], "approx": False}

    def count_batch(self, list_of_input_ids: list[list[int]]) -> list[dict]:
        """Many counts in one compiled loop per shard (no per-query Python work past encoding)."""
        encoded = [self._bytes(ids) for ids in list_of_input_ids]
        bounds = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([q.size for q in encoded], out=bounds[1:])
        queries = np.concatenate(encoded) if encoded else np.zeros(0, np.uint8)
        counts = np.zeros(len(encoded), np.int64)
        for shard in self.shards:
            search_loops.count_many(shard.tokens, shard.table, shard.pointer_width, queries, bounds, counts)
        return [{"count": int(c), "approx": False} for c in counts]

    def prob(self, prompt_ids: list[int], cont_id: int) -> dict:
        """n-gram probability of `cont_id` after the prompt; prob is -1.0 when the prompt is unseen."""
        prompt = self._bytes(prompt_ids)
        cont = self._bytes([self._token(cont_id, "cont_id")])
        return self._prob(prompt, cont)

    def prob_batch(self, prompts_and_conts: list[tuple[list[int], int]]) -> list[dict]:
        return [self.prob(prompt, cont) for prompt, cont in prompts_and_conts]

    def ntd(self, prompt_ids: list[int], max_support: int | None = None) -> dict:
        """Next-token distribution; past `max_support` occurrences it is sampled (approx=True)."""
        max_support = self._positive(self.max_support if max_support is None else max_support, "max_support")
        return self._ntd(self._bytes(prompt_ids), max_support)

    def infgram_prob(self, prompt_ids: list[int], cont_id: int) -> dict:
        """∞-gram probability: back off to the longest suffix of the prompt that occurs."""
        prompt = self._bytes(prompt_ids)
        cont = self._bytes([self._token(cont_id, "cont_id")])
        suffix_len = self._longest_seen_suffix(prompt)
        result = self._prob(prompt[prompt.size - suffix_len * self.token_width :], cont)
        return {**result, "suffix_len": suffix_len}

    def infgram_ntd(self, prompt_ids: list[int], max_support: int | None = None) -> dict:
        max_support = self._positive(self.max_support if max_support is None else max_support, "max_support")
        prompt = self._bytes(prompt_ids)
        suffix_len = self._longest_seen_suffix(prompt)
        return {
            **self._ntd(prompt[prompt.size - suffix_len * self.token_width :], max_support),
            "suffix_len": suffix_len,
        }

    # -- CNF (AND of ORs within a token window) -------------------------------------------------

    def find_cnf(
        self, cnf: list[list[list[int]]], max_clause_freq: int | None = None, max_diff_tokens: int | None = None
    ) -> dict:
        """Start pointers of windows where every clause has a match within `max_diff_tokens`
        tokens, inside one document; clauses above `max_clause_freq` matches are subsampled."""
        max_clause_freq = self._positive(
            self.max_clause_freq if max_clause_freq is None else max_clause_freq, "max_clause_freq"
        )
        max_diff_tokens = self._positive(
            self.max_diff_tokens if max_diff_tokens is None else max_diff_tokens, "max_diff_tokens"
        )
        clauses = [self._clause(clause, max_clause_freq) for clause in self._cnf(cnf)]
        if any(sum(c["cnt_by_shard"]) == 0 for c in clauses):
            return {"cnt": 0, "approx": False, "ptrs_by_shard": []}
        parts = self._cnf_parts(clauses, max_diff_tokens)
        return {
            "cnt": sum(cnt for cnt, _, _ in parts),
            "approx": any(factor != 1.0 for _, factor, _ in parts),
            "ptrs_by_shard": [ptrs for _, _, ptrs in parts],
        }

    def _cnf_parts(self, clauses: list[dict], max_diff_tokens: int) -> list[tuple[int, float, list[int]]]:
        """(count, subsampling factor, window start pointers) of each shard; shards are independent."""
        parts = []
        for s, shard in enumerate(self.shards):
            ordered = sorted(clauses, key=lambda c: c["cnt_by_shard"][s])
            lo = self._clause_pointers(shard, ordered[0]["segments_by_shard"][s], sort=False)
            hi = lo.copy()
            factor = ordered[0]["factor_by_shard"][s]
            window = max_diff_tokens * self.token_width
            for clause in ordered[1:]:
                lo, hi = _join_within_window(
                    lo, hi, self._clause_pointers(shard, clause["segments_by_shard"][s], sort=True), window
                )
                factor *= clause["factor_by_shard"][s]
            keep = search_loops.ranges_without_separator(shard.tokens, self.token_width, lo, hi)
            lo = lo[keep]
            parts.append((int(lo.size * factor), factor, lo.tolist()))
        return parts

    def count_cnf(
        self, cnf: list[list[list[int]]], max_clause_freq: int | None = None, max_diff_tokens: int | None = None
    ) -> dict:
        result = self.find_cnf(cnf, max_clause_freq, max_diff_tokens)
        return {"count": result["cnt"], "approx": result["approx"]}

    # -- documents ----------------------------------------------------------------------------

    def search_docs(self, input_ids: list[int], maxnum: int | None = None, max_disp_len: int | None = None) -> dict:
        """Up to `maxnum` occurrences sampled at random (with replacement), with their documents."""
        maxnum = self._positive(self.maxnum if maxnum is None else maxnum, "maxnum")
        max_disp_len = self._positive(self.max_disp_len if max_disp_len is None else max_disp_len, "max_disp_len")
        found = self.find(input_ids)
        if found["cnt"] == 0:
            return {"cnt": 0, "approx": False, "idxs": [], "documents": []}
        sizes = np.array([e - s for s, e in found["segment_by_shard"]], np.int64)
        rng = np.random.default_rng()
        idxs, docs = [], []
        for idx in rng.integers(0, found["cnt"], size=maxnum):
            s = int(np.searchsorted(np.cumsum(sizes), idx, side="right"))
            rank = found["segment_by_shard"][s][0] + int(idx - sizes[:s].sum())
            idxs.append(int(idx))
            docs.append(self.get_doc_by_rank(s, rank, max_disp_len))
        return {"cnt": found["cnt"], "approx": False, "idxs": idxs, "documents": docs}

    def search_docs_cnf(
        self,
        cnf: list[list[list[int]]],
        maxnum: int | None = None,
        max_disp_len: int | None = None,
        max_clause_freq: int | None = None,
        max_diff_tokens: int | None = None,
    ) -> dict:
        maxnum = self._positive(self.maxnum if maxnum is None else maxnum, "maxnum")
        max_disp_len = self._positive(self.max_disp_len if max_disp_len is None else max_disp_len, "max_disp_len")
        found = self.find_cnf(cnf, max_clause_freq, max_diff_tokens)
        flat = [(s, p) for s, ptrs in enumerate(found["ptrs_by_shard"]) for p in ptrs]
        if found["cnt"] == 0 or not flat:
            return {"cnt": 0, "approx": False, "idxs": [], "documents": []}
        rng = np.random.default_rng()
        picks = rng.integers(0, len(flat), size=maxnum)
        idxs = [int(i / len(flat) * found["cnt"]) for i in picks]
        docs = [self.get_doc_by_ptr(*flat[i], max_disp_len) for i in picks]
        return {"cnt": found["cnt"], "approx": found["approx"], "idxs": idxs, "documents": docs}

    def get_doc_by_rank(self, s: int, rank: int, max_disp_len: int | None = None) -> dict:
        shard = self._shard(s)
        if not (_is_int(rank) and 0 <= rank < shard.token_count):
            raise QueryError(f"rank must be an integer in range [0, {shard.token_count})")
        return self.get_doc_by_ptr(
            s, int(search_loops.pointer_at(shard.table, shard.pointer_width, rank)), max_disp_len
        )

    def get_doc_by_ptr(self, s: int, ptr: int, max_disp_len: int | None = None) -> dict:
        """The document holding byte `ptr`, displayed as a window of `max_disp_len` tokens around it."""
        max_disp_len = self._positive(self.max_disp_len if max_disp_len is None else max_disp_len, "max_disp_len")
        shard = self._shard(s)
        w = self.token_width
        if not (_is_int(ptr) and 0 <= ptr < shard.tokens.size and ptr % w == 0):
            raise QueryError(f"ptr must be a multiple of {w} in range [0, {shard.tokens.size})")
        local = int(np.searchsorted(shard.doc_offsets, np.uint64(ptr), side="right")) - 1
        doc_start, doc_end = self._doc_bounds(shard, local)
        disp_start = max(doc_start, ptr - w * (max_disp_len // 2))
        disp_end = min(doc_end, ptr + w * ((max_disp_len + 1) // 2))
        return self._doc_result(s, local, doc_start, doc_end, disp_start, disp_end, (ptr - disp_start) // w)

    def get_doc_by_ix(self, doc_ix: int, max_disp_len: int | None = None) -> dict:
        """Document number `doc_ix` (counted across shards), from its start."""
        max_disp_len = self._positive(self.max_disp_len if max_disp_len is None else max_disp_len, "max_disp_len")
        total = self.get_total_doc_cnt()
        if not (_is_int(doc_ix) and 0 <= doc_ix < total):
            raise QueryError(f"doc_ix must be an integer in range [0, {total})")
        s, local = 0, doc_ix
        while local >= self.shards[s].doc_count:
            local -= self.shards[s].doc_count
            s += 1
        doc_start, doc_end = self._doc_bounds(self.shards[s], local)
        return self._doc_result(
            s, local, doc_start, doc_end, doc_start, min(doc_end, doc_start + self.token_width * max_disp_len), 0
        )

    def get_total_doc_cnt(self) -> int:
        return sum(shard.doc_count for shard in self.shards)

    def doc_metadata(self, s: int, local: int) -> str:
        """The metadata line of document `local` of shard `s` ("" when the index has none)."""
        shard = self.shards[s]
        if shard.metadata is None:
            return ""
        m0 = int(shard.meta_offsets[local])
        m1 = int(shard.meta_offsets[local + 1]) if local + 1 < shard.doc_count else shard.metadata.size
        return bytes(shard.metadata[m0:m1]).decode("utf-8", errors="replace")

    # -- internals ----------------------------------------------------------------------------

    def _bytes(self, ids) -> np.ndarray:
        if not isinstance(ids, (list, tuple)) or not all(_is_int(i) and 0 <= i <= self.token_id_max for i in ids):
            raise QueryError(f"token ids must be a list of integers in range [0, {self.token_id_max}]")
        return np.asarray(ids, dtype=self._dtype).view(np.uint8)

    def _token(self, token_id, name: str) -> int:
        if not (_is_int(token_id) and 0 <= token_id <= self.token_id_max):
            raise QueryError(f"{name} must be an integer in range [0, {self.token_id_max}]")
        return token_id

    @staticmethod
    def _positive(value, name: str) -> int:
        if not (_is_int(value) and value > 0):
            raise QueryError(f"{name} must be a positive integer")
        return value

    def _shard(self, s) -> Shard:
        if not (_is_int(s) and 0 <= s < len(self.shards)):
            raise QueryError(f"s must be an integer in range [0, {len(self.shards)})")
        return self.shards[s]

    def _segments(self, query: np.ndarray, hints: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
        segments = []
        for s, shard in enumerate(self.shards):
            lo, hi = hints[s] if hints else (0, shard.token_count)
            start, end = search_loops.find_range(shard.tokens, shard.table, shard.pointer_width, query, 0, lo, hi)
            segments.append((int(start), int(end)))
        return segments

    def _count_bytes(self, query: np.ndarray) -> int:
        return sum(e - s for s, e in self._segments(query))

    def _prob(self, prompt: np.ndarray, cont: np.ndarray) -> dict:
        segments = self._segments(prompt)
        prompt_cnt = sum(e - s for s, e in segments)
        if prompt_cnt == 0:
            return {"prompt_cnt": 0, "cont_cnt": 0, "prob": -1.0}
        cont_cnt = sum(e - s for s, e in self._segments(np.concatenate([prompt, cont]), hints=segments))
        return {"prompt_cnt": prompt_cnt, "cont_cnt": cont_cnt, "prob": cont_cnt / prompt_cnt}

    def _ntd(self, prompt: np.ndarray, max_support: int) -> dict:
        segments = self._segments(prompt)
        prompt_cnt = sum(e - s for s, e in segments)
        if prompt_cnt == 0:
            return {"prompt_cnt": 0, "result_by_token_id": {}, "approx": False}
        unit = 1
        while prompt_cnt > unit * max_support:
            unit <<= 1
        freq = self._next_token_freq(prompt, segments, unit)
        result = {t: {"cont_cnt": c, "prob": c / prompt_cnt} for t, c in sorted(freq.items())}
        return {"prompt_cnt": prompt_cnt, "result_by_token_id": result, "approx": unit > 1}

    def _next_token_freq(self, prompt: np.ndarray, segments: list[tuple[int, int]], unit: int) -> dict[int, int]:
        """Next-token counts summed over shards, one sample every `unit` occurrences (the same `unit`
        on every shard, which is what keeps a merge over shard groups exact)."""
        freq: dict[int, int] = {}
        for shard, (start, end) in zip(self.shards, segments):
            if start == end:
                continue
            tokens, counts = search_loops.next_token_counts(
                shard.tokens,
                shard.table,
                shard.pointer_width,
                self.token_width,
                prompt.size,
                start,
                end,
                unit,
                self.eos_token_id,
            )
            for token, count in zip(tokens.tolist(), counts.tolist()):
                freq[token] = freq.get(token, 0) + count
        return freq

    def _longest_seen_suffix(self, prompt: np.ndarray) -> int:
        """Longest suffix (in tokens) with a non-zero count: doubling, then bisection."""
        length = prompt.size // self.token_width
        w = self.token_width
        seen, unseen = 0, 1
        while unseen <= length and self._count_bytes(prompt[prompt.size - unseen * w :]) > 0:
            seen, unseen = unseen, unseen * 2
        unseen = min(unseen, length + 1)
        while unseen - seen > 1:
            mid = (seen + unseen) // 2
            if self._count_bytes(prompt[prompt.size - mid * w :]) > 0:
                seen = mid
            else:
                unseen = mid
        return seen

    def _cnf(self, cnf) -> list[list[np.ndarray]]:
        message = (
            "cnf must be a non-empty list of non-empty lists of non-empty lists of token ids "
            f"in range [0, {self.token_id_max}]"
        )
        well_formed = (
            isinstance(cnf, list)
            and cnf
            and all(isinstance(c, list) and c and all(isinstance(t, list) and t for t in c) for c in cnf)
        )
        if not well_formed:
            raise QueryError(message)
        try:
            return [[self._bytes(term) for term in clause] for clause in cnf]
        except QueryError:
            raise QueryError(message) from None

    def _clause(self, terms: list[np.ndarray], max_clause_freq: int) -> dict:
        """An OR clause: each term's rank range per shard, subsampled when the clause is too frequent."""
        per_shard_cap = -(-max_clause_freq // len(self.shards))
        segments_by_term = [self._segments(term) for term in terms]
        cnt_by_shard, segments_by_shard, factor_by_shard = [], [], []
        for s in range(len(self.shards)):
            segments = [by_shard[s] for by_shard in segments_by_term]
            cnt = sum(e - b for b, e in segments)
            factor = 1.0
            if cnt > per_shard_cap:
                rng = np.random.default_rng(CNF_SEED)
                kept = []
                for b, e in segments:
                    length = -(-(e - b) * per_shard_cap // cnt)
                    start = b + int(rng.integers(0, e - b - length + 1))
                    kept.append((start, start + length))
                factor = cnt / sum(e - b for b, e in kept)
                segments = kept
            cnt_by_shard.append(cnt)
            segments_by_shard.append(segments)
            factor_by_shard.append(factor)
        return {
            "cnt_by_shard": cnt_by_shard,
            "segments_by_shard": segments_by_shard,
            "factor_by_shard": factor_by_shard,
        }

    @staticmethod
    def _clause_pointers(shard: Shard, segments: list[tuple[int, int]], sort: bool) -> np.ndarray:
        parts = [search_loops.pointers_in(shard.table, shard.pointer_width, b, e) for b, e in segments]
        ptrs = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return np.sort(ptrs) if sort else ptrs

    def _doc_bounds(self, shard: Shard, local: int) -> tuple[int, int]:
        start = int(shard.doc_offsets[local]) + self.token_width  # skip the separator
        end = int(shard.doc_offsets[local + 1]) if local + 1 < shard.doc_count else shard.tokens.size
        return start, end

    def _doc_result(
        self, s: int, local: int, doc_start: int, doc_end: int, disp_start: int, disp_end: int, needle_offset: int
    ) -> dict:
        shard = self.shards[s]
        return {
            "doc_ix": sum(sh.doc_count for sh in self.shards[:s]) + local,
            "doc_len": (doc_end - doc_start) // self.token_width,
            "disp_len": (disp_end - disp_start) // self.token_width,
            "needle_offset": needle_offset,
            "metadata": self.doc_metadata(s, local),
            "token_ids": shard.tokens[disp_start:disp_end].view(self._dtype).tolist(),
            "blocked": False,
        }


def _join_within_window(lo: np.ndarray, hi: np.ndarray, ptrs: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Extend each range [lo, hi] to the nearest match of the next clause on either side, keeping
    extensions that stay within `window` bytes; a range with both sides in reach becomes one range,
    otherwise each side in reach gives its own (infini-gram's AND step)."""
    if ptrs.size == 0:
        return lo[:0], hi[:0]
    before = np.searchsorted(ptrs, hi, side="left") - 1  # last match < hi
    after = np.searchsorted(ptrs, lo, side="left")  # first match >= lo
    has_before, has_after = before >= 0, after < ptrs.size
    new_lo = np.where(has_before, np.minimum(lo, ptrs[np.maximum(before, 0)]), lo)
    new_hi = np.where(has_after, np.maximum(hi, ptrs[np.minimum(after, ptrs.size - 1)]), hi)
    left_ok = has_before & (new_lo + window >= lo)
    right_ok = has_after & (new_hi <= hi + window)
    both = left_ok & right_ok
    # Up to two ranges each, in this order: [new_lo, new_hi] if both sides are in reach, else
    # [new_lo, hi] if the left one is, and [lo, new_hi] if the right one is.
    out_lo = np.stack([new_lo, lo], axis=1)
    out_hi = np.stack([np.where(both, new_hi, hi), new_hi], axis=1)
    keep = np.stack([left_ok, right_ok & ~both], axis=1)
    return out_lo[keep], out_hi[keep]


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
