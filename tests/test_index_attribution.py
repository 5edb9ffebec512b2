"""Attribution (`curate index attribute`, HTTP `attribute`) against a brute-force search: every
maximal span of the text's tokens that occurs in the documents, its count and its documents."""

from __future__ import annotations

import json
import random

import pytest

from curate.cli import main
from indexes.attribution import attribute
from indexes.build import build_index
from indexes.engine import Engine, QueryError
from indexes.server import answer
from tests.index_support import real_texts, small_tokenizer


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("attr")
    docs = real_texts(limit_per_file=6)
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    tok = small_tokenizer(root / "tok.json", vocab=1000)
    build_index([str(root / "docs.jsonl")], tok, root / "ix", shard_tokens=20_000, log=lambda m: None)
    engine = Engine(root / "ix")
    doc_ids = [engine.tokenize(t) for t in docs]
    return root / "ix", engine, docs, doc_ids


def _occurrences(doc_ids: list[list[int]], span: list[int]) -> list[tuple[int, int]]:
    n = len(span)
    return [(d, i) for d, ids in enumerate(doc_ids) for i in range(len(ids) - n + 1) if ids[i : i + n] == span]


def _brute_spans(doc_ids: list[list[int]], ids: list[int], min_tokens: int) -> list[tuple[int, int, int]]:
    """(start, end, count) of each span that occurs and cannot grow on either side: a plain
    substring search with one character per token, documents apart."""
    corpus = "\x00".join("".join(chr(0x100 + t) for t in d) for d in doc_ids)

    def occurs(i: int, j: int) -> bool:
        return "".join(chr(0x100 + t) for t in ids[i:j]) in corpus

    spans = []
    for i in range(len(ids)):
        j = i
        while j < len(ids) and occurs(i, j + 1):
            j += 1
        if j - i >= min_tokens and not (i > 0 and occurs(i - 1, j)):
            spans.append((i, j, len(_occurrences(doc_ids, ids[i:j]))))
    return sorted(spans, key=lambda s: (s[0] - s[1], s[0]))


def _texts_to_trace(docs: list[str], seed: int) -> list[str]:
    """Model-output-like texts: pieces copied from the documents, stitched with unseen words."""
    rng = random.Random(seed)
    out = []
    for _ in range(12):
        parts = []
        for _ in range(rng.randint(1, 4)):
            doc = rng.choice(docs)
            start = rng.randrange(max(1, len(doc) - 200))
            parts.append(doc[start : start + rng.randint(10, 160)])
            parts.append(rng.choice([" zqxv blorft ", " and then ", "; ", " Qwerty "]))
        out.append("".join(parts))
    return out


def test_attribution_equals_brute_force(small_index):
    _, engine, docs, doc_ids = small_index
    for min_tokens in (1, 4, 8):
        for text in _texts_to_trace(docs, min_tokens):
            ids = engine.tokenize(text)
            result = attribute(engine, text, min_tokens=min_tokens, maxnum=3, max_disp_len=50)
            got = [(s["start"], s["end"], s["count"]) for s in result["spans"]]
            assert got == _brute_spans(doc_ids, ids, min_tokens), text
            for span in result["spans"]:
                want = _occurrences(doc_ids, ids[span["start"] : span["end"]])
                assert len(span["documents"]) == min(3, len(want))
                assert {d["doc_ix"] for d in span["documents"]} <= {d for d, _ in want}
                assert span["text"] == text[span["char_start"] : span["char_end"]]
                assert span["text"] and span["text"] in docs[span["documents"][0]["doc_ix"]]


def test_attribution_from_cli_and_http(small_index, capsys):
    index_dir, engine, docs, _ = small_index
    text = docs[0][100:400] + " zqxv blorft " + docs[1][50:200]
    assert main(["index", "attribute", str(index_dir), "--text", text, "--min-tokens", "5", "--maxnum", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == attribute(engine, text, 5, 2)
    assert printed["spans"] and printed["spans"][0]["length"] >= printed["spans"][-1]["length"]
    over_http = answer(engine, {"query_type": "attribute", "query": text, "min_tokens": 5, "maxnum": 2})
    assert {k: v for k, v in over_http.items() if k != "latency"} == printed
    with pytest.raises(QueryError, match="min_tokens"):
        answer(engine, {"query_type": "attribute", "query": text, "min_tokens": 0})
    with pytest.raises(QueryError, match="attribute needs"):
        answer(engine, {"query_type": "attribute", "query_ids": [1, 2]})
    assert main(["index", "attribute", str(index_dir), "--text", "", "--maxnum", "2"]) == 2
    assert "curate: error: attribute needs a non-empty text" in capsys.readouterr().err
