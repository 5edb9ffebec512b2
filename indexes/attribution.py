"""Where did this text come from? The maximal spans of a text that occur verbatim in the index
(OLMoTrace's question about a model's output), each with its count and the documents holding it.

A span [i, j) of the text's tokens is maximal when it occurs in the index and neither [i-1, j) nor
[i, j+1) does. With L[i] the longest match starting at token i, the maximal spans are exactly
[i, i + L[i]) where i + L[i] > (i-1) + L[i-1]: a match from i-1 covers everything a match from i
covers but its end. L comes from the engine's own range searches (so the Ray Serve front, whose
shards answer elsewhere, attributes too): since L[i] >= L[i-1] - 1, about two searches per token.
Spans are token spans of the text tokenized as one document.
"""

from __future__ import annotations

from indexes.engine import Engine, QueryError
from indexes.options import DEFAULT_ATTRIBUTE_MIN_TOKENS


def longest_matches(engine: Engine, token_ids: list[int]) -> list[int]:
    """For every position, the length of the longest run of tokens from there that occurs."""
    out, length = [], 0
    for i in range(len(token_ids)):
        length = max(length - 1, 0)  # a suffix of the previous match occurs too
        while i + length < len(token_ids) and engine._count_bytes(engine._bytes(token_ids[i : i + length + 1])):
            length += 1
        out.append(length)
    return out


def maximal_spans(engine: Engine, token_ids: list[int], min_tokens: int) -> list[tuple[int, int]]:
    """(start, end) token positions of the maximal spans of at least `min_tokens` tokens, longest
    first (then by position)."""
    spans, prev_end = [], 0
    for i, length in enumerate(longest_matches(engine, token_ids)):
        if length and i + length > prev_end:
            if length >= min_tokens:
                spans.append((i, i + length))
            prev_end = i + length
    return sorted(spans, key=lambda s: (s[0] - s[1], s[0]))


def attribute(
    engine: Engine,
    text: str,
    min_tokens: int | None = None,
    maxnum: int | None = None,
    max_disp_len: int | None = None,
) -> dict:
    """The maximal spans of `text` found verbatim in the index, longest first: token and character
    positions, the span's text, its count, and its first `maxnum` occurrences' documents (in
    suffix-array order, so the same every time), each shown as `max_disp_len` tokens around it.
    `min_tokens` defaults to DEFAULT_ATTRIBUTE_MIN_TOKENS."""
    if not isinstance(text, str) or not text:
        raise QueryError("attribute needs a non-empty text")
    maxnum = engine._positive(engine.maxnum if maxnum is None else maxnum, "maxnum")
    min_tokens = engine._positive(DEFAULT_ATTRIBUTE_MIN_TOKENS if min_tokens is None else min_tokens, "min_tokens")
    ids = engine.tokenize(text)
    offsets = engine.tokenizer.offsets(text)
    spans = []
    for start, end in maximal_spans(engine, ids, min_tokens):
        found = engine.find(ids[start:end])
        documents = []
        for s, (lo, hi) in enumerate(found["segment_by_shard"]):
            for rank in range(lo, min(hi, lo + maxnum - len(documents))):
                doc = engine.get_doc_by_rank(s, rank, max_disp_len)
                documents.append(doc | {"text": engine.detokenize(doc["token_ids"])})
        char_start, char_end = offsets[start][0], offsets[end - 1][1]
        spans.append(
            {
                "start": start,
                "end": end,
                "length": end - start,
                "char_start": char_start,
                "char_end": char_end,
                "text": text[char_start:char_end],
                "count": found["cnt"],
                "documents": documents,
            }
        )
    return {"spans": spans, "tokens": len(ids), "min_tokens": min_tokens}
