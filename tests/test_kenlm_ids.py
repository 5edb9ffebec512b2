"""IdScorer (curate/kenlm_ids.cc through ctypes) gives the floats kenlm.Model.score gives, line by
line, bit for bit: on every distinct normalised line of the shipped web, wiki and harmful data
in SentencePiece pieces of real trained models, on words outside the vocabulary, empty and very
long lines, and on the other model files the kenlm module loads (trie, quantized trie, ARPA)."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kenlm
import numpy as np
import pytest
import sentencepiece as spm

from curate import kenlm_ids
from curate.documents import read_texts
from curate.kenlm_ids import IdScorer, IdScorerUnavailable
from curate.lm import KENLM_BINARY, SP_MODEL, kenlm_tool
from curate.normalize import DocumentLines

DATA = Path(__file__).resolve().parent.parent / "data"
OOV = ["qqzzxq", "▁notawordzz", "<S>", "", "ä" * 40]  # no model here holds these


@pytest.fixture(scope="module")
def lines() -> list[str]:
    """Every distinct normalised non-empty line of the shipped web, wiki and harmful data."""
    texts = [d["text"] for sub in ("web", "wiki", "harmful") for d in read_texts([str(DATA / sub)])]
    return DocumentLines.of(texts).distinct


def same_floats(got: np.ndarray, want: list[float]) -> bool:
    """Bit-identical float32s (kenlm.Model.score's float, widened to a Python float, narrows exactly)."""
    want32 = np.array(want, dtype=np.float32)
    return got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want32.view(np.uint32))


def piece_lines(model_dir: str, lines: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The lines in SentencePiece ids mapped to KenLM ids through one `word_ids` table, their
    ends, and the same lines as the strings kenlm.Model.score gets (pieces joined by spaces).
    An unknown piece reaches KenLM as its surface text (how `out_type=str` writes it, and so how
    the model was trained), not as "<unk>": those are looked up by their surface."""
    sp = spm.SentencePieceProcessor(model_file=str(Path(model_dir) / SP_MODEL))
    scorer = IdScorer(Path(model_dir) / KENLM_BINARY)
    table = scorer.word_ids([sp.id_to_piece(i).encode() for i in range(sp.get_piece_size())])
    sp_ids = np.concatenate([np.array(e, dtype=np.int64) for e in sp.encode(lines)])
    pieces = sp.encode(lines, out_type=str)
    surfaces = np.array([p for line in pieces for p in line], dtype=object)
    unknown = sp_ids == sp.unk_id()
    ids = table[sp_ids]
    ids[unknown] = scorer.word_ids([p.encode() for p in surfaces[unknown]])
    assert unknown.any() and (ids[unknown] > 0).any()  # surfaces the model knows
    ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
    return ids, ends, [" ".join(p) for p in pieces]


@pytest.mark.parametrize("name", ["wiki", "harmful"])
def test_shipped_lines_score_as_kenlm_module(models, lines, name):
    long_line = " ".join(lines[:3000])  # about 100k pieces in one line
    every = [*lines, "", long_line]
    ids, ends, texts = piece_lines(models[name], every)
    model = kenlm.Model(str(Path(models[name]) / KENLM_BINARY))
    got = IdScorer(Path(models[name]) / KENLM_BINARY).score(ids, ends)
    assert len(got) == len(every) and ends[-1] - ends[-2] > 50_000 and ends[-2] == ends[-3]
    assert (ids == 0).any()  # pieces the model has not seen: <unk>
    assert same_floats(got, [model.score(t) for t in texts])


def word_lines(scorer: IdScorer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Lines of whitespace-separated words as ids through `word_ids`, and their ends."""
    words = [t.split() for t in texts]
    ids = scorer.word_ids([w.encode() for line in words for w in line])
    return ids, np.cumsum([len(w) for w in words], dtype=np.int64)


def test_word_ids_are_the_module_lookups(models):
    """Each word's id scores as the module scores the word, and is 0 exactly where the module
    reports it out of vocabulary; the markers <s>, </s>, <unk> look up as in the module."""
    path = Path(models["wiki"]) / KENLM_BINARY
    sp = spm.SentencePieceProcessor(model_file=str(Path(models["wiki"]) / SP_MODEL))
    words = [sp.id_to_piece(i) for i in range(sp.get_piece_size())] + [w for w in OOV if w] + ["<s>", "</s>"]
    model, scorer = kenlm.Model(str(path)), IdScorer(path)
    ids = scorer.word_ids([w.encode() for w in words])
    assert ids.dtype == np.uint32 and len(set(ids.tolist())) > 0.9 * len(words)
    oov = [list(model.full_scores(w, bos=False, eos=False))[0][2] for w in words]
    assert (ids == 0).tolist() == oov and any(oov) and not all(oov)
    assert same_floats(scorer.score(ids, np.arange(1, len(ids) + 1, dtype=np.int64)), [model.score(w) for w in words])
    assert scorer.word_ids([]).tolist() == [] and scorer.word_ids([b""]).tolist() == [0]


def test_lines_with_unknown_words(models, lines):
    scorer = IdScorer(Path(models["harmful"]) / KENLM_BINARY)
    model = kenlm.Model(str(Path(models["harmful"]) / KENLM_BINARY))
    sp = spm.SentencePieceProcessor(model_file=str(Path(models["harmful"]) / SP_MODEL))
    texts = [" ".join(sp.encode(line, out_type=str) + [w for w in OOV if w]) for line in lines[:500]]
    texts += [" ".join(OOV), "", "   "]
    ids, ends = word_lines(scorer, texts)
    assert (ids == 0).sum() >= 500 * 4
    assert same_floats(scorer.score(ids, ends), [model.score(t) for t in texts])


def test_threads_share_a_scorer(models, lines):
    ids, ends, _ = piece_lines(models["wiki"], lines[:4000])
    scorer = IdScorer(Path(models["wiki"]) / KENLM_BINARY)
    whole = scorer.score(ids, ends)
    cuts = [(0, 1000), (1000, 2500), (2500, 4000)] * 3
    with ThreadPoolExecutor(3) as pool:
        parts = pool.map(lambda c: scorer.score(ids[: ends[c[1] - 1]], ends[: c[1]])[c[0] :], cuts)
        for (a, b), part in zip(cuts, parts, strict=True):
            assert np.array_equal(part.view(np.uint32), whole[a:b].view(np.uint32))


@pytest.fixture(scope="module")
def other_formats(models, lines, tmp_path_factory) -> list[Path]:
    """A 4-gram of the wiki model's pieces of web lines from lmplz, as ARPA, trie, quantized trie."""
    root = tmp_path_factory.mktemp("kenlm_formats")
    sp = spm.SentencePieceProcessor(model_file=str(Path(models["wiki"]) / SP_MODEL))
    (root / "pieces.txt").write_text("".join(" ".join(p) + "\n" for p in sp.encode(lines[:8000], out_type=str)))
    with open(root / "pieces.txt", "rb") as stdin, open(root / "lm.arpa", "wb") as stdout:
        lmplz = [kenlm_tool("lmplz"), "-o", "4", "-S", "10%", "-T", str(root), "--discount_fallback"]
        subprocess.run(lmplz, stdin=stdin, stdout=stdout, stderr=subprocess.DEVNULL, check=True)
    build = kenlm_tool("build_binary")
    subprocess.run([build, "trie", str(root / "lm.arpa"), str(root / "trie.binary")], capture_output=True, check=True)
    quantized = [build, "-q", "8", "-b", "8", "-a", "22", "trie", str(root / "lm.arpa"), str(root / "q8.binary")]
    subprocess.run(quantized, capture_output=True, check=True)
    return [root / "lm.arpa", root / "trie.binary", root / "q8.binary"]


def test_other_model_files_score_as_kenlm_module(models, lines, other_formats):
    sample = lines[4000:12000] + [""]  # half seen in training
    for path in other_formats:
        scorer, model = IdScorer(path), kenlm.Model(str(path))
        sp = spm.SentencePieceProcessor(model_file=str(Path(models["wiki"]) / SP_MODEL))
        texts = [" ".join(p) for p in sp.encode(sample, out_type=str)]
        ids, ends = word_lines(scorer, texts)
        assert same_floats(scorer.score(ids, ends), [model.score(t) for t in texts]), path.name


def test_missing_or_unreadable_model(tmp_path, models):
    with pytest.raises(FileNotFoundError, match="no such KenLM model file"):
        IdScorer(tmp_path / "absent.binary")
    truncated = tmp_path / "truncated.binary"
    truncated.write_bytes((Path(models["wiki"]) / KENLM_BINARY).read_bytes()[:100_000])
    with pytest.raises(OSError, match=r"truncated\.binary: KenLM cannot read this model \(.*Binary file has size"):
        IdScorer(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("not a language model\n")
    with pytest.raises(OSError, match=r"notes\.txt: KenLM cannot read this model \(.*not \\data\\"):
        IdScorer(text)


def test_bad_ids_and_line_ends(models):
    scorer = IdScorer(Path(models["wiki"]) / KENLM_BINARY)
    ids = scorer.word_ids([b"\xe2\x96\x81the", b"\xe2\x96\x81of", b"\xe2\x96\x81a"])
    assert (ids > 0).all()
    too_big = ids.copy()
    too_big[2] = scorer.vocabulary_size
    with pytest.raises(ValueError, match=rf"ids\[2\] = {scorer.vocabulary_size} \(line 1\) is not a word id"):
        scorer.score(too_big, np.array([1, 3], dtype=np.int64))
    with pytest.raises(TypeError, match="ids must be a 1-D uint32 array, got 1-D int64"):
        scorer.score(ids.astype(np.int64), np.array([3], dtype=np.int64))
    with pytest.raises(ValueError, match=r"line_ends\[2\] = 1 is before line_ends\[1\] = 2"):
        scorer.score(ids, np.array([0, 2, 1, 3], dtype=np.int64))
    with pytest.raises(ValueError, match="the last line ends at 2, but ids holds 3 words"):
        scorer.score(ids, np.array([2], dtype=np.int64))
    with pytest.raises(ValueError, match="line_ends is empty but ids holds 3 words"):
        scorer.score(ids, np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match=r"line_ends\[0\] = -1 is negative"):
        scorer.score(ids, np.array([-1, 3], dtype=np.int64))
    assert scorer.score(np.array([], dtype=np.uint32), np.array([], dtype=np.int64)).tolist() == []


def test_unbuilt_library_is_reported(monkeypatch, tmp_path):
    """Without `make setup`'s build, the error the caller catches to score through the kenlm module."""
    monkeypatch.setattr(kenlm_ids, "CACHE", tmp_path)
    kenlm_ids._library.cache_clear()
    try:
        with pytest.raises(IdScorerUnavailable, match=r"kenlm_ids-[0-9a-f]{12}\.so is not built: run `make setup`"):
            IdScorer(tmp_path / "lm.binary")
        monkeypatch.setattr(kenlm_ids, "SOURCE", tmp_path / "kenlm_ids.cc")
        with pytest.raises(IdScorerUnavailable, match=r"kenlm_ids\.cc is missing"):
            IdScorer(tmp_path / "lm.binary")
    finally:
        kenlm_ids._library.cache_clear()
