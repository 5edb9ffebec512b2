"""The default build puts one shard on every CPU: the last shard is cut at document boundaries once
the corpus has ended. Answers must not change: the official engine on the same multi-shard files,
and curate's one-shard index of the same corpus, give the same counts and next-token counts."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import ray

from indexes import build
from indexes.build import ShardInfo, ShardWriter, build_index, default_shard_count, split_shard, write_index
from indexes.engine import Engine
from indexes.layout import shard_path
from tests.index_support import DATA, official_engine, small_tokenizer

QUERIES = 1000
MIN_TOKENS = 300_000  # the shipped samples (about 3M tokens here) then fill every core of this machine


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    root = tmp_path_factory.mktemp("default")
    tok = small_tokenizer(root / "tok.json")
    inputs = [str(DATA / "web"), str(DATA / "wiki")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "MIN_SHARD_TOKENS", MIN_TOKENS)
        card = build_index(inputs, tok, root / "default", log=lambda m: None)
    one = build_index(inputs, tok, root / "one", shard_tokens=10**9, log=lambda m: None)
    return {"card": card, "ours": Engine(root / "default"), "one": Engine(root / "one"), "root": root, "one_card": one}


def test_default_build_has_one_shard_per_cpu(indexes):
    card, cpus = indexes["card"], int(ray.cluster_resources()["CPU"])
    assert cpus >= 2, "this test needs a Ray with two CPUs or more"
    assert card["shards"] == min(cpus, card["tokens"] // MIN_TOKENS) >= 2
    assert indexes["one_card"]["shards"] == 1
    assert (card["tokens"], card["documents"]) == (indexes["one_card"]["tokens"], indexes["one_card"]["documents"])
    sizes = [s.token_count for s in indexes["ours"].shards]
    assert max(sizes) - min(sizes) < 0.05 * card["tokens"]  # cut near equal shares


def test_default_shards_answer_as_official_engine_and_as_one_shard(indexes):
    ours, one = indexes["ours"], indexes["one"]
    ref = official_engine(indexes["root"] / "default", indexes["card"]["eos_token_id"])
    corpus = np.frombuffer(one.shards[0].tokens, dtype="<u2")
    rng = random.Random(7)
    for _ in range(QUERIES):
        n = rng.choice([1, 1, 2, 3, 5, 8, 20])
        i = rng.randrange(0, corpus.size - n)
        ids = [int(t) for t in corpus[i : i + n]]
        if rng.random() < 0.2:
            ids[rng.randrange(n)] = rng.randrange(indexes["card"]["vocab_size"])
        found = ours.find(ids)
        assert found == ref.find(ids), ids
        assert found["cnt"] == one.count(ids)["count"], ids
        if n <= 3:  # infini-gram's ntd errs when a shard ends with the prompt (indexes/search_loops.py)
            assert ours.ntd(ids, max_support=100_000) == one.ntd(ids, max_support=100_000), ids
    for s in range(len(ours.shards)):  # every document reads back whole, at its shard's rank 0
        assert (
            ours.get_doc_by_rank(s, 0, max_disp_len=50)["token_ids"]
            == ref.get_doc_by_rank(s, 0, max_disp_len=50)["token_ids"]
        )


def test_next_tokens_when_a_shard_ends_with_the_prompt(tmp_path):
    """The end of a shard and a separator both read as eos but sort at opposite ends: exact ntd
    must still count each continuation (infini-gram's halving took the whole range for eos)."""
    rng = np.random.default_rng(5)
    docs = [list(rng.integers(1, 9, size=int(rng.integers(2, 30)))) + [5] for _ in range(60)]
    card = write_index([(d, {}) for d in docs], tmp_path / "ix", 100, 0, shard_tokens=200, log=lambda m: None)
    engine = Engine(tmp_path / "ix")
    ends = [np.frombuffer(s.tokens, "<u2")[-1] for s in engine.shards]
    assert card["shards"] >= 3 and all(t == 5 for t in ends)
    for prompt in ([5], [3, 5], [2], []):
        expected: dict[int, int] = {}
        for d in docs:
            for i in range(len(d) - len(prompt) + 1):
                if d[i : i + len(prompt)] == prompt:
                    nxt = int(d[i + len(prompt)]) if i + len(prompt) < len(d) else 0  # a document's end: eos
                    expected[nxt] = expected.get(nxt, 0) + 1
        got = engine.ntd(prompt, max_support=10**6)["result_by_token_id"]
        assert {t: r["cont_cnt"] for t, r in got.items()} == expected, prompt


def test_a_corpus_below_the_minimum_stays_one_shard(tmp_path):
    docs = [([1 + i % 50] * 40, {"i": i}) for i in range(100)]
    assert write_index(docs, tmp_path / "ix", 100, 0, log=lambda m: None)["shards"] == 1
    assert default_shard_count(10 * build.MIN_SHARD_TOKENS, 4) == 4
    assert default_shard_count(10 * build.MIN_SHARD_TOKENS - 1, 16) == 9
    assert default_shard_count(build.MIN_SHARD_TOKENS - 1, 16) == 1


@pytest.mark.parametrize("pieces", [2, 3, 7, 40])
def test_split_shard_cuts_at_document_boundaries(tmp_path, pieces):
    rng = np.random.default_rng(pieces)
    docs = [rng.integers(0, 60000, size=int(rng.integers(0, 300))) for _ in range(25)]
    writer = ShardWriter(tmp_path, 0, 2)
    for i, ids in enumerate(docs):
        writer.add(ids, {"doc": i})
    writer.close()
    original = {kind: shard_path(tmp_path, kind, 0).read_bytes() for kind in ("tokenized", "metadata")}
    infos = split_shard(tmp_path, ShardInfo(0, writer.tokens, writer.docs), pieces, 2)

    assert [i.s for i in infos] == list(range(len(infos))) and 1 < len(infos) <= pieces
    assert sum(i.docs for i in infos) == len(docs) and sum(i.tokens for i in infos) == writer.tokens
    tokens = b"".join(shard_path(tmp_path, "tokenized", i.s).read_bytes() for i in infos)
    metadata = b"".join(shard_path(tmp_path, "metadata", i.s).read_bytes() for i in infos)
    assert (tokens, metadata) == (original["tokenized"], original["metadata"])
    seen = []
    for info in infos:
        ds = shard_path(tmp_path, "tokenized", info.s).read_bytes()
        offsets = np.fromfile(shard_path(tmp_path, "offset", info.s), "<u8")
        lines = shard_path(tmp_path, "metadata", info.s).read_bytes().splitlines(keepends=True)
        metaoff = np.fromfile(shard_path(tmp_path, "metaoff", info.s), "<u8")
        assert offsets.size == metaoff.size == len(lines) == info.docs and len(ds) == 2 * info.tokens
        ends = [*offsets[1:].tolist(), len(ds)]
        for a, b, line, moff in zip(offsets.tolist(), ends, lines, metaoff.tolist()):
            doc = json.loads(line)["doc"]
            assert ds[a : a + 2] == b"\xff\xff" and ds[a + 2 : b] == docs[doc].astype("<u2").tobytes()
            assert moff == sum(len(x) for x in lines[: lines.index(line)])
            seen.append(doc)
    assert seen == list(range(len(docs)))
