"""curate's engine against the official infini-gram engine on the same index files.

The index is built by curate (tokenizer, v4 files, pydivsufsort table, several shards) from the
shipped web and wiki samples; both engines open the same directory and must agree exactly on
1,000+ random queries of every type.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from indexes.build import build_index, write_index
from indexes.engine import Engine, QueryError
from tests.index_support import DATA, official_engine, small_tokenizer

QUERIES = 1000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    tok = small_tokenizer(root / "tok.json")
    card = build_index(
        [str(DATA / "web"), str(DATA / "wiki")], tok, root / "ix", shard_tokens=1_500_000, log=lambda m: None
    )
    ours = Engine(root / "ix")
    tokens = [np.frombuffer(s.tokens, dtype="<u2") for s in ours.shards]
    return {"card": card, "ours": ours, "ref": official_engine(root / "ix", card["eos_token_id"]), "tokens": tokens}


def _sampler(corpus, seed: int):
    """Random n-grams: mostly cut from the corpus (seen), some with a replaced token or random ids."""
    rng = random.Random(seed)
    vocab = corpus["card"]["vocab_size"]

    def ngram(n: int) -> list[int]:
        kind = rng.random()
        if kind < 0.1:
            return [rng.randrange(vocab) for _ in range(n)]
        shard = rng.choice(corpus["tokens"])
        i = rng.randrange(0, shard.size - n)
        ids = [int(t) for t in shard[i : i + n]]
        if kind < 0.25 and n:
            ids[rng.randrange(n)] = rng.randrange(vocab)
        return ids

    return rng, ngram


def test_index_is_sharded_and_in_v4_layout(corpus):
    card, ours = corpus["card"], corpus["ours"]
    assert card["shards"] >= 2 and card["token_width"] == 2
    for shard in ours.shards:
        assert shard.pointer_width == math.ceil(math.log2(shard.tokens.size) / 8)  # 3 bytes for these 3 MB shards
        assert shard.table.size == shard.pointer_width * shard.token_count
        assert bytes(shard.tokens[:2]) == b"\xff\xff"  # every document starts with a separator
    assert sum(s.doc_count for s in ours.shards) == card["documents"]


def test_count_and_find(corpus):
    rng, ngram = _sampler(corpus, 1)
    ours, ref = corpus["ours"], corpus["ref"]
    for _ in range(QUERIES):
        ids = ngram(rng.choice([0, 1, 1, 2, 3, 5, 8, 20, 60]))
        assert ours.count(ids) == ref.count(ids), ids
        found, expected = ours.find(ids), ref.find(ids)
        assert found["cnt"] == expected["cnt"]
        assert [tuple(x) for x in found["segment_by_shard"]] == [tuple(x) for x in expected["segment_by_shard"]]


def test_count_batch_matches_single_counts(corpus):
    rng, ngram = _sampler(corpus, 2)
    queries = [ngram(rng.choice([0, 1, 2, 4, 12])) for _ in range(QUERIES)]
    assert corpus["ours"].count_batch(queries) == [corpus["ref"].count(q) for q in queries]


def test_prob(corpus):
    rng, ngram = _sampler(corpus, 3)
    ours, ref = corpus["ours"], corpus["ref"]
    pairs = []
    for _ in range(QUERIES):
        ids = ngram(rng.choice([1, 2, 3, 4, 6, 10]))
        pairs.append((ids[:-1], ids[-1]))
        assert ours.prob(ids[:-1], ids[-1]) == ref.prob(ids[:-1], ids[-1]), ids
    assert ours.prob_batch(pairs) == [ref.prob(p, c) for p, c in pairs]


def test_next_token_distribution_exact_and_sampled(corpus):
    rng, ngram = _sampler(corpus, 4)
    ours, ref = corpus["ours"], corpus["ref"]
    approx = 0
    for _ in range(QUERIES):
        prompt = ngram(rng.choice([0, 1, 1, 2, 3, 5]))
        max_support = rng.choice([1000, 100, 7])
        result = ours.ntd(prompt, max_support)
        approx += result["approx"]
        if _ends_a_shard(corpus, prompt):  # infini-gram errs there (README: Differences): check the text
            exact = ours.ntd(prompt, 10**9)["result_by_token_id"]
            assert {t: r["cont_cnt"] for t, r in exact.items()} == _next_tokens(corpus, prompt), prompt
            continue
        assert result == ref.ntd(prompt, max_support), (prompt, max_support)
    assert 50 < approx < QUERIES  # both exact and sampled (approx) answers were compared


def _ends_a_shard(corpus, prompt: list[int]) -> bool:
    """Whether some shard's last tokens are the prompt (where infini-gram's ntd mistakes the range
    for eos: the end of the shard and a separator both read as eos but sort at opposite ends)."""
    return bool(prompt) and any(t[t.size - len(prompt) :].tolist() == prompt for t in corpus["tokens"])


def _next_tokens(corpus, prompt: list[int]) -> dict[int, int]:
    """Brute force: what follows each occurrence of the prompt in the shards' token streams."""
    eos, found = corpus["card"]["eos_token_id"], {}
    for t in corpus["tokens"]:
        separator = (1 << (8 * t.dtype.itemsize)) - 1
        t = t.astype(np.int64)
        starts = np.arange(t.size - len(prompt) + 1)
        for j, token in enumerate(prompt):
            starts = starts[t[starts + j] == token]
        after = np.append(t, separator)[starts + len(prompt)]
        for token, n in zip(*np.unique(np.where(after == separator, eos, after), return_counts=True)):
            found[int(token)] = found.get(int(token), 0) + int(n)
    return found


def test_infgram_prob_and_ntd(corpus):
    rng, ngram = _sampler(corpus, 5)
    ours, ref = corpus["ours"], corpus["ref"]
    suffix_lens = set()
    for i in range(QUERIES):
        ids = ngram(rng.choice([1, 2, 5, 10, 30, 80]))
        if rng.random() < 0.5 and len(ids) > 2:  # an unseen prefix forces a real back-off
            ids[rng.randrange(len(ids) - 1)] = rng.randrange(corpus["card"]["vocab_size"])
        result = ours.infgram_prob(ids[:-1], ids[-1])
        assert result == ref.infgram_prob(ids[:-1], ids[-1]), ids
        suffix_lens.add(result["suffix_len"])
        if i % 3 == 0:
            mine = ours.infgram_ntd(ids, 200)
            if not _ends_a_shard(corpus, ids[len(ids) - mine["suffix_len"] :]):  # see _ends_a_shard
                assert mine == ref.infgram_ntd(ids, 200), ids
    assert len(suffix_lens) > 10


def test_document_hits(corpus):
    """Every occurrence of random n-grams resolves to the same document window in both engines."""
    rng, ngram = _sampler(corpus, 6)
    ours, ref = corpus["ours"], corpus["ref"]
    checked = 0
    while checked < QUERIES:
        ids = ngram(rng.choice([1, 3, 6, 12]))
        found = ours.find(ids)
        if not 0 < found["cnt"] <= 40:
            continue
        disp = rng.choice([1, 7, 50, 1000])
        for s, (start, end) in enumerate(found["segment_by_shard"]):
            for rank in range(start, end):
                doc = ours.get_doc_by_rank(s, rank, disp)
                assert _same_doc(doc, ref.get_doc_by_rank(s, rank, disp))
                assert (
                    doc["token_ids"][doc["needle_offset"] : doc["needle_offset"] + len(ids)]
                    == ids[: max(0, doc["disp_len"] - doc["needle_offset"])]
                )
                checked += 1
        sample = ours.search_docs(ids, maxnum=3, max_disp_len=disp)
        assert sample["cnt"] == ref.search_docs(ids, maxnum=3, max_disp_len=disp)["cnt"] == found["cnt"]
        assert len(sample["documents"]) == 3


def test_get_doc_by_ptr_and_ix(corpus):
    rng = random.Random(7)
    ours, ref = corpus["ours"], corpus["ref"]
    for _ in range(QUERIES):
        s = rng.randrange(len(ours.shards))
        ptr = 2 * rng.randrange(ours.shards[s].token_count)
        disp = rng.choice([1, 2, 9, 100, 5000])
        assert _same_doc(ours.get_doc_by_ptr(s, ptr, disp), ref.get_doc_by_ptr(s, ptr, disp))
        doc_ix = rng.randrange(ours.get_total_doc_cnt())
        assert ours.get_doc_by_ix(doc_ix, disp) == ref.get_doc_by_ix(doc_ix, disp)


def test_cnf_queries(corpus):
    """AND of ORs within a token window: same windows (pointers) and counts as the official engine."""
    rng, ngram = _sampler(corpus, 8)
    ours, ref = corpus["ours"], corpus["ref"]
    nonzero = 0
    for _ in range(QUERIES):
        cnf = [
            [ngram(rng.choice([1, 2, 2, 3])) for _ in range(rng.choice([1, 2]))] for _ in range(rng.choice([1, 2, 3]))
        ]
        diff = rng.choice([3, 20, 100])
        result = ours.find_cnf(cnf, max_clause_freq=10**9, max_diff_tokens=diff)
        assert result == ref.find_cnf(cnf, max_clause_freq=10**9, max_diff_tokens=diff), cnf
        nonzero += result["cnt"] > 0
        assert ours.count_cnf(cnf, 10**9, diff) == ref.count_cnf(cnf, 10**9, diff)
    assert nonzero > 200


def test_sampled_cnf_against_the_official_engine(corpus):
    """Clauses above max_clause_freq are subsampled: both engines then say `approx`, and their
    estimates (different samplers, README: Differences) agree with each other and with the exact
    count in total over pairs of the corpus's most frequent tokens."""
    ours, ref = corpus["ours"], corpus["ref"]
    counts = sum(np.bincount(t, minlength=65536) for t in corpus["tokens"])
    counts[65535] = 0  # the separator
    top = [int(t) for t in np.argsort(counts)[::-1][:12]]
    exact_total, ours_total, ref_total = 0, 0, 0
    for a, b in [(0, 1), (2, 5), (3, 8), (4, 9), (6, 7), (10, 11)]:
        cnf = [[[top[a]]], [[top[b]]]]
        exact = ours.count_cnf(cnf, max_clause_freq=10**9, max_diff_tokens=20)
        assert exact == ref.count_cnf(cnf, max_clause_freq=10**9, max_diff_tokens=20) and not exact["approx"]
        for freq in (2000, 20000):
            mine, theirs = (e.count_cnf(cnf, max_clause_freq=freq, max_diff_tokens=20) for e in (ours, ref))
            assert mine["approx"] and theirs["approx"], (cnf, freq)
            assert (mine["count"] > 0) == (theirs["count"] > 0)
            exact_total, ours_total, ref_total = (
                exact_total + exact["count"],
                ours_total + mine["count"],
                ref_total + theirs["count"],
            )
    assert 0.67 < ours_total / exact_total < 1.5 and 0.67 < ref_total / exact_total < 1.5
    assert 0.67 < ours_total / ref_total < 1.5


def test_hand_checked_small_index(tmp_path):
    """Repeats, document boundaries, empty documents and unseen queries, checked by hand."""
    docs = [[1, 2, 3, 1, 2], [1, 2], [], [5, 1]]
    card = write_index(
        ((d, {"n": i}) for i, d in enumerate(docs)), tmp_path / "ix", vocab_size=10, eos_token_id=9, log=lambda m: None
    )
    ours, ref = Engine(tmp_path / "ix"), official_engine(tmp_path / "ix", 9)
    assert card["tokens"] == 9 + 4  # tokens plus one separator per document
    assert ours.count([])["count"] == 13
    assert ours.count([1, 2])["count"] == 3
    assert ours.count([2, 1])["count"] == 0  # 2 is followed by 3 or a separator, never by 1
    assert ours.count([65535])["count"] == 4  # one separator per document
    assert ours.count([7])["count"] == 0
    assert ours.prob([7], 1) == {"prompt_cnt": 0, "cont_cnt": 0, "prob": -1.0}
    assert ours.prob([1], 2) == {"prompt_cnt": 4, "cont_cnt": 3, "prob": 0.75}
    # after [1,2]: 3 once, and the end of a document (a separator, read as eos) twice
    assert ours.ntd([1, 2])["result_by_token_id"] == {
        3: {"cont_cnt": 1, "prob": 1 / 3},
        9: {"cont_cnt": 2, "prob": 2 / 3},
    }
    assert ours.ntd([5, 1])["result_by_token_id"] == {9: {"cont_cnt": 1, "prob": 1.0}}  # end of the shard reads as eos
    assert ours.infgram_prob([7, 3, 1], 2) == {"prompt_cnt": 1, "cont_cnt": 1, "prob": 1.0, "suffix_len": 2}
    assert ours.infgram_prob([8, 8], 1)["suffix_len"] == 0
    doc = ours.get_doc_by_ix(2)
    assert doc["doc_len"] == 0 and doc["token_ids"] == []
    assert ours.get_doc_by_ix(3)["metadata"] == '{"n": 3}\n'
    for query in ([], [1], [1, 2], [2, 1], [3, 1, 2], [65535, 1], [5, 1, 65535]):
        assert ours.count(query) == ref.count(query)
        assert ours.ntd(query) == ref.ntd(query)
        assert ours.infgram_ntd(query) == ref.infgram_ntd(query)
    for ptr in range(0, 26, 2):
        assert _same_doc(ours.get_doc_by_ptr(0, ptr, 3), ref.get_doc_by_ptr(0, ptr, 3))


def _same_doc(ours: dict, ref: dict) -> bool:
    """Equal, except that a pointer on a separator has needle_offset -1 in curate and an
    unsigned underflow in infini-gram (the needle sits just before the displayed document)."""
    if ours["needle_offset"] == -1:
        return {**ours, "needle_offset": None} == {**ref, "needle_offset": None} and ref["needle_offset"] > 2**62
    return ours == ref


def test_u32_index_for_large_vocabularies(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.choice([70000, 70001, 123456, 5, 65535 + 1000], size=rng.integers(0, 30)).tolist() for _ in range(200)]
    card = write_index(((d, {}) for d in docs), tmp_path / "ix", vocab_size=200_000, eos_token_id=0, log=lambda m: None)
    assert card["token_width"] == 4
    ours, ref = Engine(tmp_path / "ix"), official_engine(tmp_path / "ix", 0, token_width=4)
    corpus = {"tokens": [np.frombuffer(s.tokens, "<u4") for s in ours.shards], "card": card}
    for _ in range(300):
        doc = docs[rng.integers(len(docs))]
        n = int(rng.integers(0, 4))
        i = int(rng.integers(0, max(1, len(doc) - n)))
        query = doc[i : i + n]
        assert ours.count(query) == ref.count(query)
        if _ends_a_shard(corpus, query):  # infini-gram errs there: check the text instead
            exact = ours.ntd(query, 10**9)["result_by_token_id"]
            assert {t: r["cont_cnt"] for t, r in exact.items()} == _next_tokens(corpus, query), query
        else:
            assert ours.ntd(query, 50) == ref.ntd(query, 50)
        if query:
            assert ours.infgram_prob(query[:-1], query[-1]) == ref.infgram_prob(query[:-1], query[-1])


def test_invalid_queries_raise_clear_errors(corpus):
    ours = corpus["ours"]
    for bad in ("abc", [1, -1], [1, 2**16], [1.5], [True], None):
        with pytest.raises(QueryError, match="token ids"):
            ours.count(bad)
    with pytest.raises(QueryError, match="max_support"):
        ours.ntd([1], 0)
    with pytest.raises(QueryError, match="rank"):
        ours.get_doc_by_rank(0, -1)
    with pytest.raises(QueryError, match="ptr"):
        ours.get_doc_by_ptr(0, 3)
    with pytest.raises(QueryError, match="s must be"):
        ours.get_doc_by_ptr(99, 0)
    with pytest.raises(QueryError, match="cnf"):
        ours.find_cnf([[[]]])
