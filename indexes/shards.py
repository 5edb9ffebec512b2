"""An index's shards, memory-mapped read-only as raw bytes for the engine's search loops."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexes.layout import IndexFormatError, pointer_width, shard_path


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


def open_shards(index_dir: Path, card: dict, shard_ids: list[int] | None = None) -> list[Shard]:
    """Map every shard listed in the card (or those in `shard_ids`), checking the file sizes agree."""
    shards = []
    width = card["token_width"]
    for s in range(card["shards"]) if shard_ids is None else shard_ids:
        paths = {
            kind: shard_path(index_dir, kind, s) for kind in ("tokenized", "offset", "table", "metadata", "metaoff")
        }
        for kind in ("tokenized", "offset", "table"):
            if not paths[kind].is_file():
                raise IndexFormatError(f"{paths[kind]} is missing")
        tokens = _map(paths["tokenized"])
        table = _map(paths["table"])
        if tokens.size % width:
            raise IndexFormatError(
                f"{paths['tokenized']}: size {tokens.size} is not a multiple of the token width {width}"
            )
        n = tokens.size // width
        ptr = pointer_width(tokens.size)
        if table.size != n * ptr:
            raise IndexFormatError(
                f"{paths['table']}: expected {n * ptr} bytes ({n} tokens x {ptr}), found {table.size}"
            )
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
