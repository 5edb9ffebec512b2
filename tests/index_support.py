"""Helpers shared by the index tests: small real corpora, a small tokenizer, the official engine."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from infini_gram.engine import InfiniGramEngine

from curate.tokenizer import train_tokenizer

DATA = Path(__file__).resolve().parent.parent / "data"


def real_texts(limit_per_file: int | None = None) -> list[str]:
    """Documents from the shipped web and wiki samples."""
    texts = []
    for path in sorted(DATA.glob("web/*.jsonl.gz")) + sorted(DATA.glob("wiki/*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if limit_per_file is not None and i >= limit_per_file:
                    break
                texts.append(json.loads(line)["text"])
    return texts


def small_tokenizer(path: Path, vocab: int = 2000) -> Path:
    train_tokenizer(real_texts(limit_per_file=150), path, vocab)
    return path


def official_engine(index_dir: Path, eos_token_id: int, token_width: int = 2) -> InfiniGramEngine:
    """infini-gram's C++ engine over the same files, prefetching off."""
    return InfiniGramEngine(
        index_dir=str(index_dir),
        eos_token_id=eos_token_id,
        vocab_size=65535 if token_width == 2 else 2**32 - 1,
        token_dtype="u16" if token_width == 2 else "u32",
        ds_prefetch_depth=0,
        sa_prefetch_depth=0,
        od_prefetch_depth=0,
    )
