"""Exact-substring deduplication on a built index (Lee et al., 2022, "ExactSubstr").

Every span of at least `min_tokens` tokens that occurs more than once is kept at its first
occurrence (corpus order: shard, then position) and removed from all later ones. A span is
removed token-wise: the union of every repeated `min_tokens`-gram window, so a 200-token repeat
loses 200 tokens, not 50. Spans never cross documents (separators break them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.tokenizer import TextTokenizer
from indexes import search_loops
from indexes.engine import Engine
from indexes.options import DEFAULT_MIN_TOKENS


def repeated_spans(engine: Engine, min_tokens: int = DEFAULT_MIN_TOKENS) -> list[dict]:
    """Per document: {doc_ix, id, removed_tokens, removed_spans: [[start, end), ...]} in token
    offsets within the document, for every document of the index (in index order)."""
    if min_tokens < 1:
        raise ValueError(f"min_tokens must be positive, got {min_tokens}")
    w = engine.token_width
    results = []
    for s, shard in enumerate(engine.shards):
        repeated, first = search_loops.repeated_kgram_starts(
            shard.tokens, shard.table, shard.pointer_width, w, min_tokens
        )
        candidates = np.flatnonzero(first)
        for earlier in engine.shards[:s]:  # a k-gram first seen here may still be in an earlier shard
            seen = search_loops.kgrams_seen_in(
                shard.tokens, candidates, w, min_tokens, earlier.tokens, earlier.table, earlier.pointer_width
            )
            repeated[candidates[seen]] = True
            candidates = candidates[~seen]
        removed = _covered(repeated, min_tokens)
        starts = shard.doc_offsets.astype(np.int64) // w + 1  # first token after each separator
        ends = np.append(shard.doc_offsets[1:].astype(np.int64) // w, shard.token_count)
        for local, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
            spans = _runs(removed[a:b])
            results.append(
                {
                    "doc_ix": len(results),
                    "id": _doc_id(engine, s, local),
                    "removed_tokens": int(sum(e - b0 for b0, e in spans)),
                    "removed_spans": spans,
                }
            )
    return results


def dedup_table(index_dir: str | Path, min_tokens: int = DEFAULT_MIN_TOKENS) -> pa.Table:
    """The dedup result as Arrow rows: id, doc_ix, removed_tokens, removed_spans (token offsets)."""
    rows = repeated_spans(Engine(index_dir), min_tokens)
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("doc_ix", pa.int64()),
                ("id", pa.string()),
                ("removed_tokens", pa.int64()),
                ("removed_spans", pa.list_(pa.list_(pa.int64(), 2))),
            ]
        ),
    )


def dedup_documents(documents: pa.Table, index_dir: str | Path, min_tokens: int = DEFAULT_MIN_TOKENS) -> pa.Table:
    """The documents (rows with `id` and `text`, e.g. a run's kept shard) with repeated spans cut
    from `text` and their count in a new `dedup_removed_tokens` column. The index must have been
    built from these documents (ids are matched through its metadata)."""
    engine = Engine(index_dir)
    if engine.tokenizer is None:
        raise ValueError(f"{index_dir} has no tokenizer; dedup of text needs the one the index was built with")
    by_id = {row["id"]: row for row in repeated_spans(engine, min_tokens)}
    texts, removed = [], []
    for doc_id, text in zip(documents.column("id").to_pylist(), documents.column("text").to_pylist()):
        row = by_id.get(doc_id)
        if row is None:
            raise ValueError(f"document {doc_id!r} is not in the index {index_dir}")
        texts.append(remove_spans(text, engine.tokenizer, row["removed_spans"]))
        removed.append(row["removed_tokens"])
    documents = documents.set_column(
        documents.schema.get_field_index("text"), "text", pa.array(texts, pa.large_string())
    )
    return documents.append_column("dedup_removed_tokens", pa.array(removed, pa.int64()))


def remove_spans(text: str, tokenizer: TextTokenizer, spans: list[list[int]]) -> str:
    """The text without the given token spans (offsets from re-encoding it with the index's
    tokenizer, which is deterministic, so they line up with the indexed tokens)."""
    if not spans:
        return text
    offsets = tokenizer.offsets(text)
    pieces, cursor = [], 0
    for start, end in spans:
        pieces.append(text[cursor : offsets[start][0]])
        cursor = offsets[end - 1][1]
    pieces.append(text[cursor:])
    return "".join(pieces)


def _covered(starts: np.ndarray, k: int) -> np.ndarray:
    """Tokens covered by a k-token window starting at any marked position."""
    delta = np.zeros(starts.size + k + 1, np.int32)
    idx = np.flatnonzero(starts)
    np.add.at(delta, idx, 1)
    np.add.at(delta, idx + k, -1)
    return np.cumsum(delta[: starts.size]) > 0


def _runs(mask: np.ndarray) -> list[list[int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return [[int(a), int(b)] for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]


def _doc_id(engine: Engine, s: int, local: int) -> str | None:
    line = engine.doc_metadata(s, local)
    return (json.loads(line).get("metadata") or {}).get("id") if line else None
