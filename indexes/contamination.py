"""Is an eval set in the corpus? Per eval document: the longest span found in the index and the
fraction of its 13-grams that occur there (the usual n-gram overlap test)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from indexes import search_loops
from indexes.engine import Engine
from indexes.options import DEFAULT_NGRAM


def longest_matches(engine: Engine, token_ids: list[int]) -> np.ndarray:
    """For every position, the longest run of tokens starting there that occurs in the index."""
    query = np.asarray(token_ids, dtype=f"<u{engine.token_width}").view(np.uint8)
    best = np.zeros(len(token_ids), np.int64)
    for shard in engine.shards:
        best = np.maximum(
            best,
            search_loops.longest_matches(shard.tokens, shard.table, shard.pointer_width, engine.token_width, query),
        )
    return best


def contamination_report(engine: Engine, documents: Iterable[dict], ngram: int = DEFAULT_NGRAM) -> Iterator[dict]:
    """One result per eval document ({id, text}): tokens, longest match (tokens and text),
    n-grams checked and the fraction found (null when the document is shorter than n)."""
    for doc in documents:
        ids = engine.tokenize(doc["text"])
        matches = longest_matches(engine, ids)
        start = int(np.argmax(matches)) if ids else 0
        longest = int(matches[start]) if ids else 0
        windows = max(0, len(ids) - ngram + 1)
        found = int(np.sum(matches[:windows] >= ngram))
        yield {
            "id": doc.get("id"),
            "tokens": len(ids),
            "longest_match_tokens": longest,
            "longest_match_text": engine.detokenize(ids[start : start + longest]) if longest else "",
            "ngram": ngram,
            "ngrams": windows,
            "ngrams_found": found,
            "ngram_found_fraction": round(found / windows, 6) if windows else None,
        }
