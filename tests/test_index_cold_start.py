"""Cold start of index queries: the search loops compiled ahead of time (indexes/compile_loops.py)
answer exactly as numba's JIT does, a one-shot `curate index query` loads neither numba nor any
other heavy library, a build of another source is never loaded, and the phrase vocabulary stored
on disk gives the answers a fresh build gives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curate.tokenizer import train_tokenizer
from indexes import phrases, search_loops
from indexes.build import write_index
from indexes.compile_loops import compile_loops
from indexes.engine import Engine
from tests.index_support import real_texts

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("numba", "llvmlite", "ray", "torch", "polars", "pyarrow", "scipy", "llama_cpp", "fastapi", "uvicorn")

# Runs in a fresh interpreter: every kind of loop over the index, answers as JSON.
PROBE = """
import hashlib, json, random, shutil, sys
from pathlib import Path
from indexes import search_loops
from indexes.contamination import longest_matches
from indexes.dedup import dedup_table
from indexes.engine import Engine
from indexes.suffix_array import build_suffix_array

index = Path(sys.argv[1])
engine = Engine(index)
rng = random.Random(0)
tokens = [t for s in engine.shards for t in s.tokens.view("<u2").tolist() if t != 0xFFFF]
def ngram(n):
    i = rng.randrange(len(tokens) - n)
    return tokens[i : i + n]
out = {"backend": search_loops.BACKEND}
queries = [ngram(rng.randint(1, 6)) for _ in range(300)]
out["count"] = [engine.count(q)["count"] for q in queries]
out["count_batch"] = [r["count"] for r in engine.count_batch(queries)]
out["find"] = [engine.find(q) for q in queries[:100]]
out["ntd"] = [engine.ntd(q[:2], max_support=support) for q in queries[:60] for support in (5, 1000)]
out["infgram_prob"] = [engine.infgram_prob(ngram(30), rng.randrange(500)) for _ in range(60)]
out["cnf"] = [engine.count_cnf([[ngram(1)], [ngram(1), ngram(2)]], max_clause_freq=50) for _ in range(30)]
out["docs"] = [engine.get_doc_by_rank(0, rng.randrange(engine.shards[0].token_count)) for _ in range(30)]
out["longest"] = longest_matches(engine, ngram(80) + [499, 498] + ngram(40)).tolist()
out["dedup"] = dedup_table(index, 8).to_pylist()
copy = Path(sys.argv[2])
shutil.copytree(index, copy)
build_suffix_array(copy, 0, 2, "pydivsufsort")
out["table"] = hashlib.sha256((copy / "table.0").read_bytes()).hexdigest()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def aot_build() -> Path:
    return compile_loops()  # a minute on one core the first time; then found by its digest


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    """Two shards of Zipf-like token ids with repeated passages (so dedup and ntd have work)."""
    rng = np.random.default_rng(3)
    passages = [rng.zipf(1.3, size=60) % 497 + 1 for _ in range(20)]
    docs = []
    for i in range(400):
        parts = [rng.zipf(1.3, size=int(rng.integers(5, 80))) % 497 + 1]
        if i % 3 == 0:
            parts.append(passages[int(rng.integers(len(passages)))])
        docs.append((np.concatenate(parts), {"i": i}))
    root = tmp_path_factory.mktemp("cold")
    write_index(docs, root / "ix", 500, 0, shard_tokens=12_000, log=lambda m: None)
    return root / "ix"


def _probe(index: Path, tmp: Path, backend: str) -> dict:
    env = {**os.environ, "CURATE_INDEX_LOOPS": backend}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(index), str(tmp / f"copy-{backend}")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ahead_of_time_loops_answer_as_the_jit(aot_build, index, tmp_path):
    aot, jit = _probe(index, tmp_path, "aot"), _probe(index, tmp_path, "jit")
    assert (aot.pop("backend"), jit.pop("backend")) == ("aot", "jit")
    assert json.loads((index / "index.json").read_text())["shards"] >= 2 and sum(aot["count"]) > 300
    assert any(row["removed_tokens"] for row in aot["dedup"]) and any(n["approx"] for n in aot["ntd"])
    for key in aot:
        assert aot[key] == jit[key], key


@pytest.mark.parametrize("query", [["count", "[5, 7]", "--ids"], ["count", "of the"]])
def test_one_shot_query_loads_nothing_heavy(aot_build, text_index, query):
    probe = (
        "import contextlib, io, json, sys\n"
        "from curate.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    code = main(['index', 'query', {str(text_index)!r}, *{query!r}])\n"
        f"print(json.dumps([code, json.loads(out.getvalue()), sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CURATE_INDEX_LOOPS"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    code, answer, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert code == 0 and answer["latency"] > 0 and (answer["count"] > 0 or "--ids" in query)
    assert heavy == []


def test_a_build_of_another_source_is_not_loaded(aot_build, tmp_path, monkeypatch):
    assert aot_build == search_loops.aot_path() and aot_build.is_file()
    monkeypatch.setattr(search_loops, "AOT_CACHE", tmp_path)
    stale = tmp_path / "0123456789ab" / aot_build.name  # what an earlier source left
    stale.parent.mkdir()
    shutil.copyfile(aot_build, stale)
    assert search_loops._load_aot() is None
    monkeypatch.setattr(search_loops, "AOT_CACHE", aot_build.parent.parent)
    assert search_loops._load_aot() is not None
    monkeypatch.setenv("CURATE_INDEX_LOOPS", "jit")
    assert search_loops._load_aot() is None


@pytest.fixture(scope="module")
def text_index(tmp_path_factory) -> Path:
    """A small index of the shipped samples with its tokenizer (so text queries work)."""
    root = tmp_path_factory.mktemp("text")
    texts = real_texts(limit_per_file=20)
    tokenizer = train_tokenizer(texts, root / "tok.json", vocab_size=400)
    docs = [(ids, {}) for ids in tokenizer.encode_batch(texts)]
    write_index(docs, root / "ix", tokenizer.vocab_size, tokenizer.eos_token_id, tokenizer, log=lambda m: None)
    return root / "ix"


def test_phrase_vocabulary_is_stored_and_reloaded(text_index, tmp_path, monkeypatch):
    monkeypatch.setattr(phrases, "VOCABULARY_CACHE", tmp_path / "cache")
    queries = ["the", "of the", "United States", "in a", "zzqx"]

    built = [phrases.count(Engine(text_index), q)["count"] for q in queries]
    stored = list((tmp_path / "cache").glob("*.pickle"))
    assert len(stored) == 1 and built[0] > 100 and built[-1] == 0

    def no_build(self, engine):
        raise AssertionError("the stored vocabulary was rebuilt")

    monkeypatch.setattr(phrases.Vocabulary, "__init__", no_build)  # unpickling does not call it
    assert [phrases.count(Engine(text_index), q)["count"] for q in queries] == built  # loaded, not rebuilt
    monkeypatch.undo()
    monkeypatch.setattr(phrases, "VOCABULARY_CACHE", tmp_path / "cache")
    stored[0].write_bytes(b"torn")  # a damaged file is rebuilt and replaced
    assert [phrases.count(Engine(text_index), q)["count"] for q in queries] == built
    assert stored[0].read_bytes() != b"torn"
