"""The fast scoring path (batch normalisation, distinct lines, the compiled unigram search of
curate/unigram.py, KenLM per distinct line) gives exactly what the plain per-line reference
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


def reference(encoder: PieceEncoder, lines: list[str]) -> tuple[list[bytes], list[int]]:
    """What KenLM is given for each line by the reference call: the pieces joined, and their number."""
    pieces = encoder.sp.encode(lines, out_type=str)
    return [" ".join(p).encode() for p in pieces], [len(p) for p in pieces]


def encoded(encoder: PieceEncoder, lines: list[str]) -> tuple[list[bytes], list[int]]:
    texts, counts = encoder.encode(lines)
    return [t if isinstance(t, bytes) else t.encode() for t in texts], counts.tolist()


def test_pieces_equal_sentencepiece(texts, models):
    lines = DocumentLines.of(texts).distinct
    for name in ("wiki", "harmful"):
        encoder = LanguageModel(models[name]).encoder
        assert encoder.unigram is not None and encoder.raw_ascii, f"the compiled search must serve the {name} model"
        fast = [line for line in lines if line.isascii() and line.isprintable()]
        unknown = [line for line in lines if encoder.sp.unk_id() in encoder.sp.encode(line)]
        assert len(fast) < len(lines) and unknown, "the data must hold non-ASCII lines and lines with unknowns"
        assert encoded(encoder, lines) == reference(encoder, lines)


def test_scores_equal_the_reference_float_for_float(texts, models):
    """The quality model here; the harmful stage's three models in the next test."""
    model = LanguageModel(models["wiki"])
    assert model.ids is not None, "make setup builds the KenLM id scorer (curate/kenlm_ids.cc)"
    sums, tokens = model.score_many(texts)
    reference = [score_reference(model, text) for text in texts]
    assert sums.tolist() == [s for s, _ in reference]
    assert tokens.tolist() == [n for _, n in reference]
    model.ids = None  # the `kenlm` module's string path, taken where the shim is not built
    assert model.score_many(texts)[0].tolist() == sums.tolist()
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
        assert encoded(wiki_encoder, [line]) == reference(wiki_encoder, [line])


def edited_model(models, tmp_path: Path, edit) -> PieceEncoder:  # noqa: ANN001
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((Path(models["wiki"]) / "sp.model").read_bytes())
    edit(proto)
    (tmp_path / "sp.model").write_bytes(proto.SerializeToString())
    return PieceEncoder(tmp_path / "sp.model")


def test_a_normaliser_that_changes_ascii_normalises_every_line(texts, models, tmp_path):
    """Case folding may change ASCII: every line then goes through SentencePiece's normaliser."""
    encoder = edited_model(models, tmp_path, lambda p: setattr(p.normalizer_spec, "name", "nmt_nfkc_cf"))
    assert encoder.unigram is not None and not encoder.raw_ascii
    lines = DocumentLines.of(texts[:300]).distinct + ["Hello  World", "ÉCOLE"]
    assert encoded(encoder, lines) == reference(encoder, lines)


def test_unused_pieces_are_never_chosen(texts, models, tmp_path):
    """UNUSED pieces stay in SentencePiece's trie but are skipped: frequent ones here, so the
    search must route around them."""
    lines = DocumentLines.of(texts[:300]).distinct

    def unuse(proto) -> None:  # noqa: ANN001
        for p in proto.pieces[3:400]:
            p.type = sentencepiece_model_pb2.ModelProto.SentencePiece.UNUSED

    encoder = edited_model(models, tmp_path, unuse)
    assert encoder.unigram is not None
    assert encoded(encoder, lines) == reference(encoder, lines)


def test_models_the_search_does_not_reproduce_take_sentencepiece(models, tmp_path):
    def user_defined(proto) -> None:  # noqa: ANN001
        proto.pieces[5].type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED

    encoder = edited_model(models, tmp_path, user_defined)
    assert encoder.unigram is None
    assert encoded(encoder, ["hello world", "ÉCOLE"]) == reference(encoder, ["hello world", "ÉCOLE"])


def test_very_long_lines_shift_their_running_scores_as_sentencepiece_does(texts, models):
    """Past a running score of -1e5 SentencePiece shifts the kept scores back to 0 (float32
    subtractions that can change a near-tie): lines of tens of thousands of pieces."""
    encoder = LanguageModel(models["wiki"]).encoder
    words = " ".join(DocumentLines.of(texts).distinct).split()
    lines = [" ".join(words[i : i + 40000]) for i in range(0, 120000, 40000)]
    lines.append("ε" + lines[0])  # the same through SentencePiece's normaliser
    ref = reference(encoder, lines)
    assert min(ref[1]) > 20000
    assert encoded(encoder, lines) == ref
