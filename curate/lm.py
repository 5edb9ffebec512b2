"""KenLM n-gram models in CCNet's recipe: normalise, SentencePiece unigram, lmplz, build_binary.

A model directory holds `sp.model`, `lm.binary` and `card.json` (training data, normalisation,
order, the scoring convention, and thresholds once calibrated).

Scoring convention (CCNet, cc_net/perplexity.py): the document is split on "\\n"; every line is
normalised, cut into SentencePiece pieces and scored by KenLM with <s> and </s>;
perplexity = 10 ** (-sum(log10 p) / sum(pieces + 1)) over all lines, the +1 being each line's
</s>. Empty lines count too, as in CCNet. We keep the two sums (`*_log10`, `*_tokens`) beside
the perplexity, so other aggregations can be recomputed without scoring again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import kenlm
import numpy as np
import sentencepiece as spm

from curate import remote_dirs, storage
from curate.atomic import write_text
from curate.documents import expand_inputs, read_texts
from curate.kenlm_ids import IdScorer, IdScorerUnavailable
from curate.normalize import DocumentLines, normalize, normalize_reference
from curate.pieces import PieceEncoder
from curate.splits import split_of

CARD = "card.json"
SP_MODEL = "sp.model"
KENLM_BINARY = "lm.binary"
DEFAULT_KENLM_BIN = Path.home() / ".cache" / "curate" / "kenlm" / "bin"


class ModelError(RuntimeError):
    """A model directory or a training run that cannot be used, with the reason."""


def kenlm_tool(name: str) -> str:
    """Path of lmplz or build_binary: $CURATE_KENLM_BIN, the setup cache, then PATH."""
    candidates = [Path(os.environ["CURATE_KENLM_BIN"]) / name] if "CURATE_KENLM_BIN" in os.environ else []
    candidates.append(DEFAULT_KENLM_BIN / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(name)
    if found:
        return found
    raise ModelError(f"{name} not found in {DEFAULT_KENLM_BIN} or on PATH: run `make setup`")


def perplexity(log10_sum, tokens):
    """10 ** (-sum log10 p / tokens), for numbers or numpy arrays alike."""
    return 10.0 ** (-log10_sum / tokens)


def score_piece_lines(model: kenlm.Model, piece_lines: Iterable[list[str]]) -> tuple[float, int]:
    """CCNet's document score from its lines' pieces: (sum of log10 p with <s> and </s> per
    line, pieces + 1 per line)."""
    log10_sum = 0.0
    tokens = 0
    for pieces in piece_lines:
        log10_sum += model.score(" ".join(pieces), bos=True, eos=True)
        tokens += len(pieces) + 1
    return log10_sum, tokens


class LanguageModel:
    """A loaded model directory: SentencePiece plus KenLM, scoring in CCNet's convention."""

    def __init__(self, model_dir: str | Path):
        # a URL (s3://...): KenLM and SentencePiece read local files, so the cached local copy
        self.dir = remote_dirs.fetch(model_dir, CARD)
        card_path = self.dir / CARD
        if not card_path.is_file():
            raise ModelError(f"{self.dir} is not a model directory (no {CARD}); train one with `curate kenlm train`")
        self.card = json.loads(card_path.read_text())
        self.encoder = PieceEncoder(self.dir / SP_MODEL)
        self.sp = self.encoder.sp
        self.kenlm = kenlm.Model(str(self.dir / KENLM_BINARY))
        self._empty_line = self.kenlm.score("", bos=True, eos=True)
        self.ids = self._id_scorer()

    def _id_scorer(self) -> IdScorer | None:
        """KenLM scoring of piece ids (curate/kenlm_ids.py), when the compiled search gives ids and
        the shim is built; else None, and lines are scored as strings by the `kenlm` module."""
        pieces = self.encoder.piece_table()
        if pieces is None or any(len(p.split()) != 1 for p in pieces):  # the module would split such a piece
            return None
        try:
            scorer = IdScorer(self.dir / KENLM_BINARY)
        except IdScorerUnavailable:
            return None
        self._word_of_piece = scorer.word_ids(pieces)
        return scorer

    def score_lines(self, lines: DocumentLines) -> tuple[np.ndarray, np.ndarray]:
        """Per document: (sum of log10 probabilities, tokens including one </s> per line). Each
        distinct line is scored once; the sums add a document's lines in order, then its empty
        lines, in float64 as `score_reference` does, so the results are the same floats."""
        line_scores, lengths = self._line_scores(lines.distinct)
        n = len(lines)
        sums = np.bincount(lines.doc, weights=line_scores[lines.line], minlength=n)
        tokens = np.bincount(lines.doc, weights=lengths[lines.line] + 1, minlength=n).astype(np.int64)
        return sums + lines.empty * self._empty_line, tokens + lines.empty

    def _line_scores(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per line: KenLM's log10 probability (float32 values, as the module returns them) and
        the number of pieces."""
        segmented = self.encoder.segment(lines) if self.ids is not None else None
        if segmented is None or not segmented.whole_unknowns():
            texts, counts = self.encoder.encode(lines)
            return np.fromiter(map(self.kenlm.score, texts), dtype=np.float64, count=len(texts)), counts
        words = self._word_of_piece[segmented.ids]
        unknown = np.flatnonzero(segmented.ids == self.encoder.unigram.unk_id)
        if len(unknown):
            words[unknown] = self.ids.word_ids(segmented.unknown_texts())
        return self.ids.score(words, segmented.line_ends).astype(np.float64), segmented.counts()

    def score_many(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """`score_lines` of the texts: (log10 sums, token counts), one per text."""
        return self.score_lines(DocumentLines.of(texts))

    def score(self, text: str) -> tuple[float, int]:
        """(sum of log10 probabilities, number of tokens including one </s> per line)."""
        sums, tokens = self.score_many([text])
        return float(sums[0]), int(tokens[0])

    def perplexity(self, text: str) -> float:
        return perplexity(*self.score(text))

    def save_card(self) -> None:
        write_card(self.dir, self.card)


def score_reference(model: LanguageModel, text: str) -> tuple[float, int]:
    """The plain version of `LanguageModel.score`, one line at a time: CCNet's step-by-step
    normalisation, SentencePiece and KenLM per line, the non-empty lines' scores added in order,
    then the empty lines'. The fast path is tested against it on the shipped data."""
    lines = [normalize_reference(line) for line in text.split("\n")]
    nonempty = [line for line in lines if line]
    log10_sum, tokens = score_piece_lines(model.kenlm, (model.sp.encode(line, out_type=str) for line in nonempty))
    empty = len(lines) - len(nonempty)
    return log10_sum + empty * model.kenlm.score("", bos=True, eos=True), tokens + empty


def write_card(model_dir: Path, card: dict) -> None:
    write_text(Path(model_dir) / CARD, json.dumps(card, indent=2, ensure_ascii=False) + "\n")


def source(path: str, where: dict | None = None, split: str | None = None) -> dict:
    """One training input: documents of `path` whose fields equal `where`, in part `split` of
    the fixed id split (curate.splits)."""
    return {"path": path, "where": where or {}, "split": split}


def training_config(sources: list[dict], order: int, vocab: int) -> dict:
    return {
        "inputs": [
            {**src, "files": [{"path": str(p), "sha256": storage.sha256(p)} for p in expand_inputs([src["path"]])]}
            for src in sources
        ],
        "order": order,
        "vocab": vocab,
        "normalization": "ccnet",
    }


def train(sources: list[dict], out: str | Path, order: int = 5, vocab: int = 65536, log=print) -> dict:
    """Train a model directory from `source(...)` inputs; returns the card. A directory whose
    card records the same training config is left as it is."""
    out = Path(out)
    config = training_config(sources, order, vocab)
    existing = out / CARD
    if existing.is_file() and json.loads(existing.read_text()).get("training", {}).get("config") == config:
        log(f"model {out} is up to date with its training config, not retraining")
        return json.loads(existing.read_text())
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="curate-lm-") as tmp_name:
        tmp = Path(tmp_name)
        text_file = tmp / "normalized.txt"
        stats = _write_training_text(sources, text_file)
        if stats["lines"] == 0:
            raise ModelError(f"no training text: no document of {sources} matches")
        log(
            f"training SentencePiece (unigram, vocab <= {vocab}) on {stats['documents']} documents, "
            f"{stats['lines']} lines"
        )
        spm.SentencePieceTrainer.train(
            input=str(text_file),
            model_prefix=str(tmp / "sp"),
            vocab_size=vocab,
            hard_vocab_limit=False,
            model_type="unigram",
            character_coverage=0.9995,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=str(tmp / "sp.model"))
        pieces_file = tmp / "pieces.txt"
        with open(text_file, encoding="utf-8") as src, open(pieces_file, "w", encoding="utf-8") as dst:
            for line in src:
                dst.write(" ".join(sp.encode(line.rstrip("\n"), out_type=str)) + "\n")
        log(f"lmplz -o {order}")
        arpa = tmp / "lm.arpa"
        with open(pieces_file, "rb") as stdin, open(arpa, "wb") as stdout:
            _run(
                [kenlm_tool("lmplz"), "-o", str(order), "-S", "20%", "-T", str(tmp), "--discount_fallback"],
                stdin,
                stdout,
            )
        _run([kenlm_tool("build_binary"), str(arpa), str(tmp / KENLM_BINARY)])
        shutil.move(tmp / "sp.model", out / SP_MODEL)
        shutil.move(tmp / KENLM_BINARY, out / KENLM_BINARY)
        card = {
            "format": "curate-kenlm/1",
            "order": order,
            "vocab_size": sp.get_piece_size(),
            "normalization": "ccnet (cc_net text_normalizer.normalize defaults)",
            "scoring": "per line: 10 ** (-sum(log10 p) / sum(pieces + 1)), empty lines included",
            "training": {"config": config, **stats},
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "files": {"sentencepiece": SP_MODEL, "kenlm": KENLM_BINARY},
            "thresholds": {},
        }
        write_card(out, card)
    log(f"model written to {out} ({card['vocab_size']} pieces, order {order})")
    return card


def _write_training_text(sources: list[dict], path: Path) -> dict:
    documents = lines = chars = 0
    with open(path, "w", encoding="utf-8") as f:
        for src in sources:
            for doc in read_texts([src["path"]]):
                if any(doc.get(k) != v for k, v in src["where"].items()):
                    continue
                if src["split"] and split_of(doc["id"]) != src["split"]:
                    continue
                documents += 1
                for line in doc["text"].split("\n"):
                    norm = normalize(line)
                    if norm:
                        f.write(norm + "\n")
                        lines += 1
                        chars += len(norm)
    return {"documents": documents, "lines": lines, "characters": chars}


def _run(cmd: list[str], stdin=None, stdout=None) -> None:
    proc = subprocess.run(cmd, stdin=stdin, stdout=stdout if stdout else subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", errors="replace")[-2000:]
        raise ModelError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}):\n{tail}")
