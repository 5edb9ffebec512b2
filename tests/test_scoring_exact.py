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
