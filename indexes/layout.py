"""The infini-gram v4 on-disk layout: file names, widths, and memory-mapped shards.

One index directory holds, per shard `s`: `tokenized.{s}` (little-endian token ids, each document
preceded by an all-0xFF separator token), `offset.{s}` (u64 byte offset of each document's
separator), `metadata.{s}` / `metaoff.{s}` (one JSON line per document and its u64 byte offset),
and `table.{s}` (the suffix array: byte offsets into `tokenized.{s}`, sorted by the memcmp order of
the little-endian bytes, each stored in `pointer_width` little-endian bytes). The official
infini-gram engine finds files by substring, so nothing else in the directory may contain those
words; our own card is `index.json` and the tokenizer is copied to `tokenizer.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


@dataclass
class Shard:
    """One shard, memory-mapped read-only as raw bytes (the engine compares bytes)."""

    tokens: np.ndarray  # uint8 view of tokenized.{s}
    table: np.ndarray  # uint8 view of table.{s}
    doc_offsets: np.ndarray  # uint64 byte offsets of each document's separator
    metadata: np.ndarray | None  # uint8 view of metadata.{s}
    meta_offsets: np.ndarray | None
    token_width: int
    pointer_width: int

    @property
    def token_count(self) -> int:
        return self.tokens.size // self.token_width

    @property
    def doc_count(self) -> int:
        return self.doc_offsets.size


def _map(path: Path, dtype=np.uint8) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r").view(np.ndarray)  # plain ndarray for numba


def read_card(index_dir: Path) -> dict:
    card_path = Path(index_dir) / CARD_NAME
    if not Path(index_dir).is_dir():
        raise IndexFormatError(f"index directory {index_dir} does not exist")
    if not card_path.is_file():
        raise IndexFormatError(f"{index_dir} is not a curate index: {CARD_NAME} is missing (build it with `curate index build`)")
    return json.loads(card_path.read_text())


def open_shards(index_dir: Path, card: dict) -> list[Shard]:
    """Map every shard listed in the card, checking the file sizes agree with each other."""
    shards = []
    width = card["token_width"]
    for s in range(card["shards"]):
        paths = {kind: shard_path(index_dir, kind, s) for kind in ("tokenized", "offset", "table", "metadata", "metaoff")}
        for kind in ("tokenized", "offset", "table"):
            if not paths[kind].is_file():
                raise IndexFormatError(f"{paths[kind]} is missing")
        tokens = _map(paths["tokenized"])
        table = _map(paths["table"])
        if tokens.size % width:
            raise IndexFormatError(f"{paths['tokenized']}: size {tokens.size} is not a multiple of the token width {width}")
        n = tokens.size // width
        ptr = pointer_width(tokens.size)
        if table.size != n * ptr:
            raise IndexFormatError(f"{paths['table']}: expected {n * ptr} bytes ({n} tokens x {ptr}), found {table.size}")
        has_meta = paths["metadata"].is_file() and paths["metaoff"].is_file()
        shards.append(
            Shard(
                tokens=tokens,
                table=table,
                doc_offsets=_map(paths["offset"], np.uint64),
                metadata=_map(paths["metadata"]) if has_meta else None,
                meta_offsets=_map(paths["metaoff"], np.uint64) if has_meta else None,
                token_width=width,
                pointer_width=ptr,
            )
        )
    return shards
