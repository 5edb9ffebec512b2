"""Index-backed curation: exact-substring dedup, contamination, ∞-gram perplexity, each checked
against a brute-force reading of its definition."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from indexes.build import build_index, write_index
from indexes.contamination import contamination_report, longest_matches
from indexes.dedup import dedup_documents, dedup_table, remove_spans, repeated_spans
from indexes.engine import Engine
from indexes.perplexity import fit_lambdas, infgram_token_probs, interpolated_perplexity
from tests.index_support import official_engine, real_texts, small_tokenizer


def _brute_force_dedup(docs: list[list[int]], k: int) -> list[list[int]]:
    """Removed-token mask per document: a k-gram seen earlier (corpus order) is removed."""
    seen, masks = set(), []
    for doc in docs:
        mask = [0] * len(doc)
        for p in range(len(doc) - k + 1):
            gram = tuple(doc[p : p + k])
            if gram in seen:
                mask[p : p + k] = [1] * k
            seen.add(gram)
        masks.append(mask)
    return masks


@pytest.mark.parametrize("seed, k, shard_tokens", [(0, 3, 10**9), (1, 4, 700), (2, 2, 300)])
def test_dedup_matches_brute_force(tmp_path, seed, k, shard_tokens):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 4, size=rng.integers(0, 40)).tolist() for _ in range(120)]
    planted = rng.integers(0, 4, size=15).tolist()
    for i in (5, 60, 61, 119):  # a long repeat across documents and shards
        docs[i] = docs[i][:3] + planted + docs[i][3:]
    write_index(
        ((d, {"metadata": {"id": f"d{i}"}}) for i, d in enumerate(docs)),
        tmp_path / "ix",
        vocab_size=10,
        eos_token_id=9,
        shard_tokens=shard_tokens,
        log=lambda m: None,
    )
    engine = Engine(tmp_path / "ix")
    assert (len(engine.shards) > 1) == (shard_tokens < 10**6)  # cross-shard repeats are covered too
    results = repeated_spans(engine, min_tokens=k)
    for doc, mask, result in zip(docs, _brute_force_dedup(docs, k), results):
        got = [0] * len(doc)
        for a, b in result["removed_spans"]:
            got[a:b] = [1] * (b - a)
        assert got == mask
        assert result["removed_tokens"] == sum(mask)
    assert [r["id"] for r in results] == [f"d{i}" for i in range(len(docs))]
    assert results[60]["removed_tokens"] >= len(planted)  # the planted repeat goes from later copies


def test_dedup_removes_a_repeated_paragraph_from_later_documents(tmp_path):
    tok = small_tokenizer(tmp_path / "tok.json")
    texts = real_texts(limit_per_file=6)
    paragraph = texts[0][:600]
    texts[3] = texts[3][:200] + paragraph + texts[3][200:]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    build_index([str(docs)], tok, tmp_path / "ix", log=lambda m: None)
    table = dedup_table(tmp_path / "ix", min_tokens=50).to_pylist()
    assert table[0]["removed_tokens"] == 0
    assert table[3]["id"] == "t3" and table[3]["removed_tokens"] > 50
    cleaned = remove_spans(texts[3], Engine(tmp_path / "ix").tokenizer, table[3]["removed_spans"])
    assert paragraph[100:500] not in cleaned and texts[3][:150] in cleaned
    assert len(texts[3]) - len(cleaned) < len(paragraph) + 20
    shard = pa.table(
        {
            "id": [f"t{i}" for i in range(len(texts))],
            "text": pa.array(texts, pa.large_string()),
            "score": list(range(len(texts))),
        }
    )
    deduped = dedup_documents(shard, tmp_path / "ix", min_tokens=50)
    assert deduped.column("text").to_pylist()[3] == cleaned and deduped.column("text").to_pylist()[0] == texts[0]
    assert deduped.column("dedup_removed_tokens").to_pylist() == [row["removed_tokens"] for row in table]
    assert deduped.column("score").to_pylist() == list(range(len(texts)))


@pytest.fixture(scope="module")
def text_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    tok = small_tokenizer(root / "tok.json")
    docs = root / "docs.jsonl"
    texts = real_texts(limit_per_file=40)
    docs.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    card = build_index([str(docs)], tok, root / "ix", log=lambda m: None)
    return {"engine": Engine(root / "ix"), "ref": official_engine(root / "ix", card["eos_token_id"]), "texts": texts}


def test_longest_matches_match_counts(text_index):
    engine = text_index["engine"]
    rng = np.random.default_rng(0)
    ids = (
        engine.tokenize(text_index["texts"][7][:400])
        + rng.integers(0, 2000, size=20).tolist()
        + engine.tokenize(" of the United States")
    )
    matches = longest_matches(engine, ids)
    for i in range(len(ids)):
        m = int(matches[i])
        assert engine.count(ids[i : i + m])["count"] > 0
        assert i + m == len(ids) or engine.count(ids[i : i + m + 1])["count"] == 0


def _longest_found(ref, ids: list[int]) -> int:
    """The longest span of `ids` that the official engine counts at least once (by extension from
    every start: a span occurs only if its prefixes do)."""
    best = 0
    for i in range(len(ids)):
        while i + best < len(ids) and ref.count(ids[i : i + best + 1])["count"] > 0:
            best += 1
    return best


def test_contamination_report(text_index):
    engine, texts = text_index["engine"], text_index["texts"]
    evals = [
        {"id": "in", "text": texts[2]},
        {"id": "half", "text": texts[5][:800] + " Zygomorphic quokka parliament " * 30},
        {"id": "short", "text": "Hi"},
    ]
    rows = list(contamination_report(engine, evals))
    assert rows[0]["ngram_found_fraction"] == 1.0 and rows[0]["longest_match_tokens"] == rows[0]["tokens"]
    assert rows[2]["ngram_found_fraction"] is None and rows[2]["ngrams"] == 0
    # brute force: every 13-gram of the half-copied document counted by the official engine, and
    # the longest span of it that occurs anywhere
    ref, ids = text_index["ref"], engine.tokenize(evals[1]["text"])
    found = [ref.count(ids[i : i + 13])["count"] > 0 for i in range(len(ids) - 12)]
    assert rows[1]["ngrams"] == len(found) and rows[1]["ngrams_found"] == sum(found)
    assert rows[1]["ngram_found_fraction"] == pytest.approx(sum(found) / len(found), abs=1e-6)
    assert 0.05 < rows[1]["ngram_found_fraction"] < 0.95
    assert rows[1]["longest_match_tokens"] == _longest_found(ref, ids) > 13


def test_infgram_perplexity_and_interpolation(text_index):
    engine, ref = text_index["engine"], text_index["ref"]
    ids = engine.tokenize(text_index["texts"][11][:300] + " and the rest of a new sentence that nobody wrote before")
    scores = infgram_token_probs(engine, ids)
    for i in range(1, len(ids)):
        expected = ref.infgram_prob(ids[:i], ids[i])
        assert (
            scores["prob"][i - 1] == max(expected["prob"], 0.0)
            and scores["suffix_len"][i - 1] == expected["suffix_len"]
        )
        suffix = ids[i - expected["suffix_len"] : i]
        assert scores["sparse"][i - 1] == (len(ref.ntd(suffix, max_support=10**9)["result_by_token_id"]) == 1)
    assert scores["sparse"].any() and (~scores["sparse"]).any()
    # A weak "neural" model: uniform over the vocabulary. The mixture must beat it.
    neural = np.full(len(ids) - 1, 1 / engine.card["vocab_size"])
    lambdas = fit_lambdas(scores, neural)
    assert 0 < lambdas[0] < 1 and 0 <= lambdas[1] < 1
    # brute force: the held-out NLL of each part on a grid 10x finer than the fit's; the fitted λ
    # must be within one of the fit's grid steps of its argmin and no worse than its minimum
    fine = np.linspace(0.0, 0.99, 991)
    for lam, mask in zip(lambdas, (scores["sparse"], ~scores["sparse"])):
        p, q = scores["prob"][mask], neural[mask]
        nll = [-sum(math.log(g * a + (1 - g) * b) for a, b in zip(p, q)) for g in fine]
        fitted = -sum(math.log(lam * a + (1 - lam) * b) for a, b in zip(p, q))
        assert abs(lam - fine[int(np.argmin(nll))]) <= 0.011 and fitted <= min(nll) + 1e-3 * len(p)
    assert (
        interpolated_perplexity(scores, neural, lambdas)
        < interpolated_perplexity(scores, neural, (0.0, 0.0))
        == pytest.approx(engine.card["vocab_size"])
    )
