"""Defaults and names of the index tools that the CLI shows in its help. Standard library only, so
that `curate --help` can show them without loading numba, numpy or llama.cpp."""

MAX_SHARD_TOKENS = 500_000_000  # tokens per shard at most, by default (bounds a sort's memory)
MIN_SHARD_TOKENS = 4_000_000  # tokens per shard at least when a corpus is split over cores
DEFAULT_NGRAM = 13  # contamination: n-gram length checked against the index
DEFAULT_MIN_TOKENS = 50  # dedup: shortest repeated span removed
DEFAULT_CONTEXT = 1024  # neural perplexity: the model's window in tokens
DEFAULT_ATTRIBUTE_MIN_TOKENS = 8  # attribute: shortest verbatim span reported
QUERY_TYPES = (
    "count", "prob", "ntd", "infgram_prob", "infgram_ntd",
    "find", "find_cnf", "search_docs", "get_doc_by_rank", "get_doc_by_ptr", "attribute",
)  # fmt: skip
