"""∞-gram + neural perplexity with the real Gemma 3 270M (llama.cpp, CPU) over an index built with
Gemma's own GGUF vocabulary: the index's ids are the model's, the official engine reads the u32
index, the neural probabilities equal llama-cpp-python's own logprobs, and `curate index
perplexity` fits λ and beats the neural model on text that overlaps the index."""

from __future__ import annotations

import gzip
import json
import random
import shutil

import numpy as np
import pytest
from llama_cpp import Llama

from curate.cli import main
from curate.local_model import gemma_path
from curate.tokenizer import train_tokenizer
from indexes.build import build_index, write_index
from indexes.cli import _perplexity_text
from indexes.engine import Engine
from indexes.layout import CARD_NAME, IndexFormatError
from indexes.neural import NeuralModel
from indexes.perplexity import infgram_token_probs
from tests.index_support import DATA, official_engine

INDEXED = DATA / "wiki" / "wikitext2_valid.jsonl.gz"  # 60 articles, 254k Gemma tokens
UNSEEN = DATA / "wiki" / "wikitext2_raw_test.jsonl.gz"


def _texts(path, n: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(next(f))["text"] for _ in range(n)]


@pytest.fixture(scope="module")
def gemma_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma")
    card = build_index([str(INDEXED)], gemma_path(), root / "ix", log=lambda m: None)
    return {"dir": root / "ix", "card": card, "engine": Engine(root / "ix")}


@pytest.fixture(scope="module")
def model():
    return NeuralModel(context=64, threads=1)


def test_gguf_tokenized_index_records_the_model_and_tokenizes_like_it(gemma_index):
    card, engine = gemma_index["card"], gemma_index["engine"]
    assert card["token_width"] == 4 and card["vocab_size"] == 262_144 and card["eos_token_id"] == 1
    assert card["tokenizer"] == gemma_path() and not any(p.suffix == ".gguf" for p in gemma_index["dir"].iterdir())
    text = _texts(INDEXED, 1)[0][:2000]
    gguf = Llama(model_path=gemma_path(), vocab_only=True, verbose=False)
    ids = engine.tokenize(text)
    assert ids == gguf.tokenize(text.encode(), add_bos=False, special=False)
    assert engine.detokenize(ids) == text
    assert engine.count(ids[:30])["count"] >= 1  # the article is in the index
    offsets = engine.tokenizer.offsets(text)
    assert "".join(text[s:e] for s, e in offsets) == text and len(offsets) == len(ids)
    gguf.close()


def test_opening_an_index_whose_gguf_is_missing_or_changed_is_a_clear_error(gemma_index, tmp_path):
    copy = tmp_path / "ix"
    shutil.copytree(gemma_index["dir"], copy)
    card = json.loads((copy / CARD_NAME).read_text())
    (copy / CARD_NAME).write_text(json.dumps(card | {"tokenizer": str(tmp_path / "gone.gguf")}))
    with pytest.raises(IndexFormatError, match="gone.gguf, which is missing"):
        Engine(copy)
    (copy / CARD_NAME).write_text(json.dumps(card | {"tokenizer_fingerprint": "0" * 16}))
    with pytest.raises(IndexFormatError, match="other token ids"):
        Engine(copy)


def test_official_engine_counts_agree_on_the_u32_index(gemma_index):
    engine = gemma_index["engine"]
    ref = official_engine(gemma_index["dir"], engine.eos_token_id, token_width=4)
    tokens = np.frombuffer(engine.shards[0].tokens, dtype="<u4")
    rng = random.Random(0)
    for _ in range(300):
        n = rng.choice([1, 2, 3, 5, 8, 13])
        i = rng.randrange(tokens.size - n)
        ids = [int(t) for t in tokens[i : i + n]]
        if rng.random() < 0.2:
            ids[rng.randrange(n)] = rng.randrange(262_144)
        assert engine.count(ids) == ref.count(ids), ids
    ids = engine.tokenize(" the European lobster")
    assert engine.infgram_prob(ids[:-1], ids[-1]) == ref.infgram_prob(ids[:-1], ids[-1])


def test_neural_probabilities_equal_llama_cpp_logprobs(gemma_index, model):
    ids = gemma_index["engine"].tokenize(_texts(UNSEEN, 1)[0])[:200]
    probs = model.token_probs(ids)
    assert probs.shape == (len(ids) - 1,) == infgram_token_probs(gemma_index["engine"], ids)["prob"].shape
    assert np.all((probs > 0) & (probs <= 1))
    # A second evaluation path: another llama.cpp model over the same windows (63 tokens after BOS,
    # one every 31, the later ones scoring their second half), normalised by llama-cpp-python's own
    # log-softmax. Each window is one batch on both sides: llama.cpp's kernels round differently
    # for other batch shapes (up to ~30% on a few tokens' probabilities).
    other = Llama(model_path=gemma_path(), n_ctx=64, logits_all=True, n_threads=1, verbose=False)
    expected = np.full(len(ids) - 1, np.nan)
    for start in range(0, len(ids) - 32, 31):
        window = ids[start : start + 63]
        other.reset()
        other.eval([other.token_bos(), *window])
        logprobs = Llama.logits_to_logprobs(other.scores[: len(window)])
        for j in range(1 if start == 0 else 32, len(window)):
            expected[start + j - 1] = np.exp(logprobs[j, window[j]])
    other.close()
    np.testing.assert_allclose(probs, expected, rtol=1e-4)


def test_perplexity_cli_fits_lambda_and_beats_the_neural_model_on_overlapping_text(gemma_index, tmp_path, capsys):
    # held-out and eval: two indexed articles and two unseen ones each (their first 120 tokens)
    indexed, unseen = _texts(INDEXED, 4), _texts(UNSEEN, 4)
    for name, docs in (("heldout", indexed[:2] + unseen[:2]), ("eval", indexed[2:] + unseen[2:])):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": str(k), "text": t}) + "\n" for k, t in enumerate(docs))
        )
    args = [
        "index",
        "perplexity",
        str(gemma_index["dir"]),
        "--heldout",
        str(tmp_path / "heldout.jsonl"),
        "--eval",
        str(tmp_path / "eval.jsonl"),
    ]
    assert main([*args, "--max-tokens", "120", "--context", "128", "--threads", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert "eval document 4: 119 tokens scored" in err
    ev = report["eval"]
    assert ev["documents"] == 4 and ev["tokens"] == 4 * 119
    assert 0 < report["lambda_sparse"] < 1 and 0 <= report["lambda_non_sparse"] < 1
    assert ev["interpolated_perplexity"] < 0.8 * ev["neural_perplexity"]
    assert report["heldout"]["interpolated_perplexity"] < report["heldout"]["neural_perplexity"]
    assert 0.3 < ev["sparse_fraction"] < 1 and ev["infgram_nonzero_fraction"] > 0.5
    text = _perplexity_text(report)
    assert "interpolated perplexity" in text and f"sparse {report['lambda_sparse']:.2f}" in text

    assert main([*args[:3], "--heldout", str(tmp_path / "nope.jsonl"), "--eval", str(tmp_path / "eval.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "curate: error: input" in err and "nope.jsonl" in err


def test_perplexity_refuses_an_index_with_another_tokenizer(tmp_path, capsys):
    texts = _texts(UNSEEN, 3)
    tok = train_tokenizer(texts, tmp_path / "tok.json", 400)
    write_index(
        ((ids, {}) for ids in tok.encode_batch(texts)),
        tmp_path / "ix",
        tok.vocab_size,
        tok.eos_token_id,
        tok,
        log=lambda m: None,
    )
    (tmp_path / "docs.jsonl").write_text(json.dumps({"id": "a", "text": texts[0]}) + "\n")
    docs = str(tmp_path / "docs.jsonl")
    assert main(["index", "perplexity", str(tmp_path / "ix"), "--heldout", docs, "--eval", docs, "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "curate: error:" in err and "gives other ids than the model" in err and "--tokenizer" in err
