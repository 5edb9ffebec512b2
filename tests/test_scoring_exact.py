"""The fast scoring path (batch normalisation, distinct lines, SentencePiece ids through a table,
the opt-in word cache, KenLM per distinct line) gives exactly what the plain per-line reference
gives: the same normalised lines, the same pieces, the same floats, on all the shipped data.
Pieces are compared as KenLM gets them, joined by spaces, with their number (no piece holds a
space: SentencePiece writes whitespace as U+2581)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sentencepiece import sentencepiece_model_pb2

from curate import pieces
from curate.documents import read_texts
from curate.harmful import harmfulness
from curate.lm import LanguageModel, perplexity, score_reference
from curate.normalize import DocumentLines, normalize, normalize_reference
from curate.pieces import PieceEncoder

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """The shipped web pages (many languages and scripts) and the first documents of every other
    shipped file: Wikipedia, tweets, talk-page comments, code, legal, medical and science text
    (digits, punctuation, accents, empty lines, repeated boilerplate), plus a few corner cases."""
    docs = [d["text"] for d in read_texts([str(DATA / "web")])]
    for path in sorted((DATA / "wiki").glob("*.gz")) + sorted((DATA / "harmful").glob("*.gz")):
        docs += [d["text"] for d in itertools.islice(read_texts([str(path)]), 300)]
    for path in sorted((DATA / "domains").glob("*.gz")):
        docs += [d["text"] for d in itertools.islice(read_texts([str(path)]), 50)]
    corners = ["", "\n\n", "  \t ", "ÉCOLE — «été» 2019…\n\n１２３ ٣\x07", "a  b\u3000c\u00a0d", "?!]|\n[?]", "x\ud7ff"]
    return docs + corners


def test_normalised_lines_equal_the_reference(texts):
    lines = DocumentLines.of(texts)
    reference = [[normalize_reference(line) for line in text.split("\n")] for text in texts]
    got = [[] for _ in texts]
    for d, i in zip(lines.doc, lines.line, strict=True):
        got[d].append(lines.distinct[i])
    assert got == [[line for line in doc if line] for doc in reference]
    assert lines.empty.tolist() == [sum(not line for line in doc) for doc in reference]
    assert len(lines.distinct) < len(lines.line)  # boilerplate repeats: each distinct line is scored once


def reference(encoder: PieceEncoder, lines: list[str]) -> tuple[list[str], list[int]]:
    """What KenLM is given for each line by the reference call: the pieces joined, and their number."""
    pieces = encoder.sp.encode(lines, out_type=str)
    return [" ".join(p) for p in pieces], [len(p) for p in pieces]


def test_pieces_equal_sentencepiece(texts, models):
    lines = DocumentLines.of(texts).distinct
    for name in ("wiki", "harmful"):
        encoder = LanguageModel(models[name]).encoder
        assert encoder.ascii is not None, f"the fast path must be taken for the {name} model"
        fast = [line for line in lines if line.isascii() and line.isprintable()]
        unknown = [line for line in fast if encoder.unk in encoder.sp.encode(line)]
        assert len(fast) < len(lines) and unknown, "the data must hold non-ASCII lines and ASCII lines with unknowns"
        assert encoder.encode(lines) == reference(encoder, lines)


def test_scores_equal_the_reference_float_for_float(texts, models):
    """The quality model here; the harmful stage's three models in the next test."""
    model = LanguageModel(models["wiki"])
    sums, tokens = model.score_many(texts)
    reference = [score_reference(model, text) for text in texts]
    assert sums.tolist() == [s for s, _ in reference]
    assert tokens.tolist() == [n for _, n in reference]
    ref_sums, ref_tokens = (np.array(column) for column in zip(*reference, strict=True))
    assert perplexity(sums, tokens).tolist() == perplexity(ref_sums, ref_tokens).tolist()


def test_harmful_columns_equal_the_reference(texts, models):
    harm, ref = LanguageModel(models["harmful"]), LanguageModel(models["benign"])
    scores = harmfulness(harm, ref, texts, guard=LanguageModel(models["wiki"]))
    by_model = {
        name: np.array([score_reference(model, t) for t in texts])
        for name, model in (("harm", harm), ("ref", ref), ("guard", LanguageModel(models["wiki"])))
    }
    # the contrast (curate.harmful.CONTRAST): log10-probability difference over the harmful model's tokens
    versus = {name: (by_model["harm"][:, 0] - s[:, 0]) / by_model["harm"][:, 1] for name, s in by_model.items()}
    assert scores["harmful_ppl"].tolist() == perplexity(by_model["harm"][:, 0], by_model["harm"][:, 1]).tolist()
    assert scores["harmful_ref_ppl"].tolist() == perplexity(by_model["ref"][:, 0], by_model["ref"][:, 1]).tolist()
    assert scores["harmful_score"].tolist() == versus["ref"].tolist()
    assert scores["harmful_guard_margin"].tolist() == versus["guard"].tolist()


@pytest.fixture(scope="module")
def wiki_encoder(models) -> PieceEncoder:
    return PieceEncoder(Path(models["wiki"]) / "sp.model")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60) | st.text(max_size=30))
def test_pieces_of_any_line(wiki_encoder, text):
    line = normalize(text)
    if line:
        assert wiki_encoder.encode([line]) == reference(wiki_encoder, [line])


def test_a_normaliser_that_changes_ascii_takes_the_reference_path(models, tmp_path):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((Path(models["wiki"]) / "sp.model").read_bytes())
    proto.normalizer_spec.name = "nmt_nfkc_cf"  # case folding: may change ASCII
    (tmp_path / "sp.model").write_bytes(proto.SerializeToString())
    encoder = PieceEncoder(tmp_path / "sp.model")
    assert encoder.ascii is None
    assert encoder.encode(["hello world"]) == reference(encoder, ["hello world"])


# The word cache (curate/pieces.py, WordCache): exact word by word, or the whole-line call.


@pytest.fixture(scope="module")
def all_lines() -> list[str]:
    """Every distinct normalised line of every shipped file: web pages, Wikipedia pages, all the
    Davidson tweets, talk-page comments and the domain samples."""
    docs = [d["text"] for folder in ("web", "wiki", "harmful", "domains") for d in read_texts([str(DATA / folder)])]
    return DocumentLines.of(docs).distinct


@pytest.fixture(scope="module")
def cached(models) -> dict[str, PieceEncoder]:
    """An encoder with the word cache per test model, shared so the cache fills as in an actor."""
    return {name: PieceEncoder(Path(models[name]) / "sp.model", word_cache=True) for name in models}


def test_word_cache_equals_sentencepiece_on_all_shipped_lines(all_lines, cached):
    for name, encoder in cached.items():
        assert encoder.words is not None, f"the word cache must be on for the {name} model"
        for start in range(0, len(all_lines), 20_000):  # a cache carried across batches, as in an actor
            batch = all_lines[start : start + 20_000]
            assert encoder.encode(batch) == reference(encoder, batch), name
        fast = [i for i, line in enumerate(all_lines) if line.isascii() and line.isprintable()]
        rest = encoder.words.encode(all_lines, fast, [""] * len(all_lines), [0] * len(all_lines))
        assert len(rest) < 0.1 * len(fast), f"the word cache must serve most ASCII lines ({name})"


def naive_differs(encoder: PieceEncoder, lines: list[str]) -> list[str]:
    """The ASCII lines whose pieces, made word by word with the Viterbi call and joined, are not
    the whole line's: in-context tie-breaking, what the margin check must catch."""
    fast = [line for line in lines if line.isascii() and line.isprintable()]
    words = list(dict.fromkeys(w for line in fast for w in line.split()))
    alone = dict(zip(words, (" ".join(p) for p in encoder.sp.encode(words, out_type=str)), strict=True))
    joined, _ = reference(encoder, fast)
    return [line for line, ref in zip(fast, joined, strict=True) if " ".join(map(alone.get, line.split())) != ref]


def test_the_margin_check_catches_what_word_by_word_gets_wrong(all_lines, cached):
    for name, encoder in cached.items():
        lines = naive_differs(encoder, all_lines)
        assert lines, f"the data must hold lines that word-by-word encoding gets wrong ({name})"
        texts, counts = [""] * len(lines), [0] * len(lines)
        assert encoder.words.encode(lines, list(range(len(lines))), texts, counts) == list(range(len(lines)))
        assert encoder.encode(lines) == reference(encoder, lines)


def test_word_cache_corner_cases(cached, all_lines):
    encoder = cached["wiki"]
    ascii_words = sorted({w for line in all_lines if line.isascii() and line.isprintable() for w in line.split()})
    unknown = sorted(set("".join(chr(c) for c in range(33, 127))) - encoder.known)
    assert unknown, "the wiki test model must lack some ASCII characters"
    lines = [
        "0",
        "000 0000 00000 0000000000 00.000 0,000,000 0-0-0 000000000000000000000000000000",
        "the",
        "a" * 300,
        "antidisestablishmentarianism",
        "x" + "".join(unknown) + "y " + unknown[0] * 3 + " the" + unknown[-1],
        " ".join(ascii_words[:3000]),  # ~30k characters: the bound grows past many margins
        " ".join(ascii_words[::7][:200]) * 3,
        "  spaced   out  words ",
    ]
    assert encoder.encode(lines) == reference(encoder, lines)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("0 1.,-ab"), max_size=80)
    | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
)
def test_word_cache_on_any_line(cached, text):
    line = normalize(text)
    if line:
        assert cached["harmful"].encode([line]) == reference(cached["harmful"], [line])


def test_a_full_word_cache_is_emptied_and_stays_exact(all_lines, models, monkeypatch):
    monkeypatch.setattr(pieces, "WORD_CACHE_SIZE", 500)
    encoder = PieceEncoder(Path(models["benign"]) / "sp.model", word_cache=True)
    lines = all_lines[:3000]
    for start in range(0, len(lines), 100):
        batch = lines[start : start + 100]
        assert encoder.encode(batch) == reference(encoder, batch)
        assert len(encoder.words.limit) <= max(500, len({w for line in batch for w in line.split()}))


@pytest.mark.parametrize(
    "change",
    ["space inside a piece", "pieces across words", "bpe"],
)
def test_models_the_word_argument_does_not_cover_have_no_word_cache(models, tmp_path, change):
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((Path(models["wiki"]) / "sp.model").read_bytes())
    if change == "space inside a piece":
        proto.pieces[-1].piece = "q\u2581z"
    elif change == "pieces across words":
        proto.trainer_spec.split_by_whitespace = False
    else:
        proto.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    (tmp_path / "sp.model").write_bytes(proto.SerializeToString())
    encoder = PieceEncoder(tmp_path / "sp.model", word_cache=True)
    assert encoder.words is None
    assert encoder.encode(["hello world 0000"]) == reference(encoder, ["hello world 0000"])
