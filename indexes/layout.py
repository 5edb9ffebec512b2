"""The infini-gram v4 on-disk layout: file names, widths, and the index card.

One index directory holds, per shard `s`: `tokenized.{s}` (little-endian token ids, each document
preceded by an all-0xFF separator token), `offset.{s}` (u64 byte offset of each document's
separator), `metadata.{s}` / `metaoff.{s}` (one JSON line per document and its u64 byte offset),
and `table.{s}` (the suffix array: byte offsets into `tokenized.{s}`, sorted by the memcmp order of
the little-endian bytes, each stored in `pointer_width` little-endian bytes). The official
infini-gram engine finds files by substring, so nothing else in the directory may contain those
words; our own card is `index.json` and the tokenizer is copied to `tokenizer.json`.
Standard library only: a suffix-sorting task imports this and nothing heavy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

CARD_NAME = "index.json"
TOKENIZER_NAME = "tokenizer.json"
U16_MAX_VOCAB = 65535  # ids 0..65534; 0xFFFF is the separator


class IndexFormatError(ValueError):
    """An index directory that is missing, incomplete or inconsistent."""


def token_width_for_vocab(vocab_size: int) -> int:
    """Bytes per token id: 2 while every id stays below the u16 separator 0xFFFF, else 4."""
    return 2 if vocab_size <= U16_MAX_VOCAB else 4


def pointer_width(ds_bytes: int) -> int:
    """Bytes per suffix-array entry, ceil(log2(bytes)/8) as infini-gram stores it (at least 1)."""
    return max(1, math.ceil(math.log2(max(ds_bytes, 2)) / 8))


def shard_path(index_dir: Path, kind: str, s: int) -> Path:
    """`kind` is one of tokenized, offset, metadata, metaoff, table."""
    return Path(index_dir) / f"{kind}.{s}"


def read_card(index_dir: Path) -> dict:
    card_path = Path(index_dir) / CARD_NAME
    if not Path(index_dir).is_dir():
        raise IndexFormatError(f"index directory {index_dir} does not exist")
    if not card_path.is_file():
        raise IndexFormatError(
            f"{index_dir} is not a curate index: {CARD_NAME} is missing (build it with `curate index build`)"
        )
    return json.loads(card_path.read_text())
