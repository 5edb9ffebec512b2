"""Helpers of the harmful and KenLM command tests: scores computed by hand with the `kenlm` and
`sentencepiece` modules (none of curate's scoring code), and the id split restated."""

from __future__ import annotations

import hashlib
from pathlib import Path

import kenlm
import numpy as np
import sentencepiece as spm

from curate.normalize import normalize_reference


def sums_by_hand(model_dir: str | Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per document, in CCNet's convention with KenLM directly: the sum of log10 probabilities
    (each line normalised, cut into pieces, scored with <s> and </s>) and tokens (pieces + 1 per line)."""
    model = kenlm.Model(str(Path(model_dir) / "lm.binary"))
    sp = spm.SentencePieceProcessor(model_file=str(Path(model_dir) / "sp.model"))
    sums, counts = [], []
    for text in texts:
        total, tokens = 0.0, 0
        for line in text.split("\n"):
            pieces = sp.encode(normalize_reference(line), out_type=str)
            total += model.score(" ".join(pieces), bos=True, eos=True)
            tokens += len(pieces) + 1
        sums.append(total)
        counts.append(tokens)
    return np.asarray(sums), np.asarray(counts)


def by_hand(model_dir: str | Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-token log10 probability and perplexity, from `sums_by_hand`."""
    sums, tokens = sums_by_hand(model_dir, texts)
    lp = sums / tokens
    return lp, 10.0 ** (-lp)


def contrast_by_hand(harmful: str | Path, other: str | Path, texts: list[str]) -> np.ndarray:
    """The harmful model's log10-probability minus the other model's, over the harmful model's tokens."""
    harm_sums, harm_tokens = sums_by_hand(harmful, texts)
    other_sums, _ = sums_by_hand(other, texts)
    return (harm_sums - other_sums) / harm_tokens


def split_by_hand(doc_id: str) -> str:
    """curate/splits.py's rule, restated: sha1 of the id, first 4 bytes little-endian, mod 100."""
    bucket = int.from_bytes(hashlib.sha1(doc_id.encode()).digest()[:4], "little") % 100
    return "train" if bucket < 60 else "val" if bucket < 80 else "test"
