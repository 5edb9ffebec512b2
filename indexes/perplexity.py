"""∞-gram language model scores of a text, and their linear interpolation with a neural model.

P∞(w_i | w_<i) backs off to the longest suffix of the context that occurs in the corpus. It can be
0 for the true token, so on its own it has no finite perplexity; mixed with a neural model,
P = λ·P∞ + (1-λ)·P_neural, with one λ for sparse ∞-gram estimates (one token has all the mass)
and one for the rest, fitted on held-out text (Liu et al., 2024).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from curate.tokenizer import fingerprint
from indexes import search_loops
from indexes.engine import Engine
from indexes.neural import NeuralModel

LAMBDA_GRID = np.linspace(0.0, 0.99, 100)


def infgram_token_probs(engine: Engine, token_ids: list[int], max_context: int = 500) -> dict:
    """For tokens 1..n-1: the ∞-gram probability, suffix length and whether the estimate is sparse."""
    probs, suffix_lens, sparse = [], [], []
    for i in range(1, len(token_ids)):
        context = token_ids[max(0, i - max_context) : i]
        result = engine.infgram_prob(context, token_ids[i])
        probs.append(max(result["prob"], 0.0))
        suffix_lens.append(result["suffix_len"])
        sparse.append(_is_sparse(engine, context[len(context) - result["suffix_len"] :]))
    return {"prob": np.array(probs), "suffix_len": np.array(suffix_lens, np.int64), "sparse": np.array(sparse, bool)}


def fit_lambdas(infgram: dict, neural_probs: np.ndarray) -> tuple[float, float]:
    """(λ for sparse, λ for non-sparse) minimising held-out negative log-likelihood on a grid."""
    neural_probs = np.asarray(neural_probs, float)
    if neural_probs.shape != infgram["prob"].shape:
        raise ValueError(f"neural_probs has {neural_probs.size} entries, the ∞-gram scores {infgram['prob'].size}")
    best = []
    for mask in (infgram["sparse"], ~infgram["sparse"]):
        p, q = infgram["prob"][mask], neural_probs[mask]
        nll = [-np.sum(np.log(lam * p + (1 - lam) * q)) for lam in LAMBDA_GRID]
        best.append(float(LAMBDA_GRID[int(np.argmin(nll))]) if mask.any() else 0.0)
    return best[0], best[1]


def interpolated_perplexity(infgram: dict, neural_probs: np.ndarray, lambdas: tuple[float, float]) -> float:
    lam = np.where(infgram["sparse"], lambdas[0], lambdas[1])
    mixed = lam * infgram["prob"] + (1 - lam) * np.asarray(neural_probs, float)
    return float(np.exp(-np.mean(np.log(mixed))))


def check_same_tokenizer(engine: Engine, model: NeuralModel) -> None:
    """The index's ids must be the model's ids, or the two probabilities are of different tokens."""
    if engine.tokenizer is None:
        raise ValueError(
            f"{engine.index_dir} was built without a tokenizer; "
            f"build it with `curate index build --tokenizer {model.path}`"
        )
    if fingerprint(engine.tokenizer) != fingerprint(model.tokenizer):
        raise ValueError(
            f"{engine.index_dir} was tokenized with {engine.tokenizer.source} "
            f"(vocabulary {engine.tokenizer.vocab_size:,}), "
            f"which gives other ids than the model {model.path} (vocabulary {model.tokenizer.vocab_size:,}); "
            f"rebuild the index with `curate index build --tokenizer {model.path}`"
        )


def score_documents(
    engine: Engine,
    model: NeuralModel,
    texts: Iterable[str],
    max_tokens: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """∞-gram scores (`infgram_token_probs`) plus `neural` probabilities of tokens 1..n-1 of each
    document (its first `max_tokens` tokens), concatenated over documents."""
    parts = []
    for k, text in enumerate(texts, 1):
        ids = engine.tokenize(text)[:max_tokens]
        if len(ids) < 2:
            continue
        t0 = time.perf_counter()
        scores = infgram_token_probs(engine, ids) | {"neural": model.token_probs(ids)}
        parts.append(scores)
        log(
            f"document {k}: {len(ids) - 1:,} tokens scored in {time.perf_counter() - t0:.1f} s "
            f"(neural perplexity {_ppl(scores['neural']):.2f})"
        )
    if not parts:
        raise ValueError("no document has two or more tokens to score")
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} | {"documents": len(parts)}


def summarize(scores: dict, lambdas: tuple[float, float]) -> dict:
    """Neural and interpolated perplexity, and how much of the text the ∞-gram covers."""
    sparse, p = scores["sparse"], scores["prob"]
    return {
        "documents": scores["documents"],
        "tokens": int(p.size),
        "neural_perplexity": _ppl(scores["neural"]),
        "interpolated_perplexity": interpolated_perplexity(scores, scores["neural"], lambdas),
        "sparse_fraction": float(sparse.mean()),
        "sparse_correct_fraction": float((p[sparse] == 1.0).mean())
        if sparse.any()
        else None,  # of the sparse estimates
        "infgram_nonzero_fraction": float((p > 0).mean()),
        "mean_suffix_len": float(scores["suffix_len"].mean()),
    }


def _ppl(probs: np.ndarray) -> float:
    return float(np.exp(-np.mean(np.log(probs))))


def _is_sparse(engine: Engine, suffix: list[int]) -> bool:
    """Whether every occurrence of the suffix continues with the same token: in suffix-array order
    the first and last occurrence of each shard agree."""
    num_bytes = len(suffix) * engine.token_width
    tokens = set()
    for shard, (start, end) in zip(engine.shards, engine.find(suffix)["segment_by_shard"]):
        for rank in {start, end - 1} if end > start else ():
            ptr = search_loops.pointer_at(shard.table, shard.pointer_width, rank)
            tokens.add(
                int(search_loops.token_at(shard.tokens, engine.token_width, ptr + num_bytes, engine.eos_token_id))
            )
    return len(tokens) == 1
