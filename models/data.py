"""Training batches straight from an index's `tokenized.{s}` files (memory-mapped), so one
tokenization feeds the index and the trainer.

Packing: the documents of a split are laid end to end, each preceded by the index's separator
mapped to the end-of-text id (`eos_token_id` of the index card), and the stream is cut into
windows of seq_len + 1 tokens (x = first seq_len, y = last seq_len). A document boundary is
therefore always marked by an end-of-text token: the model learns to predict it at the end of
a document and reads it as the start of the next one.

Splits: a document's split is `curate.splits.split_of(id)` (60/20/20 by a hash of its id), read
from its `metadata.{s}` line (`metadata.id`; a document without one is keyed by its file and
line, `path:linenum`). Because the split depends only on the id, the same documents are held out
whichever index they are in, and val/test documents never enter training batches.

Order: each epoch shuffles the documents and then the windows with a generator seeded by
(seed, epoch); batch k of rank r is a pure function of (seed, k, r, world), which makes resuming
at a step exact and lets data-parallel workers read disjoint parts of the same global batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from curate.splits import SPLITS, split_of
from indexes.layout import IndexFormatError, read_card, shard_path


class TokenShards:
    """An index directory's documents: token ids, ids, sources and splits."""

    def __init__(self, index_dir: str | Path):
        self.index_dir = Path(index_dir)
        self.card = read_card(self.index_dir)
        width = self.card["token_width"]
        self.dtype = np.dtype("<u2" if width == 2 else "<u4")
        self.separator = (1 << (8 * width)) - 1
        self.tokens: list[np.ndarray] = []
        shard_ids, starts, ends, ids, sources = [], [], [], [], []
        for s in range(self.card["shards"]):
            path = shard_path(self.index_dir, "tokenized", s)
            if not path.is_file():
                raise IndexFormatError(f"{path} is missing")
            tokens = np.memmap(path, dtype=self.dtype, mode="r") if path.stat().st_size else np.zeros(0, self.dtype)
            offsets = _read_offsets(shard_path(self.index_dir, "offset", s), width)
            if offsets.size and (offsets[0] != 0 or np.any(tokens[offsets] != self.separator)):
                raise IndexFormatError(f"{path}: a document offset does not point at a separator token")
            meta = _read_metadata(shard_path(self.index_dir, "metadata", s), offsets.size)
            self.tokens.append(tokens)
            shard_ids.append(np.full(offsets.size, s, dtype=np.int32))
            starts.append(offsets + 1)  # the first token after the separator
            ends.append(np.append(offsets[1:], tokens.size))
            for i, m in enumerate(meta):
                fields = m.get("metadata") or {}
                ids.append(str(fields.get("id") or f"{m.get('path', s)}:{m.get('linenum', i)}"))
                sources.append(str(fields.get("source") or m.get("path") or ""))
        self.doc_shard = np.concatenate(shard_ids) if shard_ids else np.zeros(0, np.int32)
        self.doc_start = np.concatenate(starts).astype(np.int64) if starts else np.zeros(0, np.int64)
        self.doc_end = np.concatenate(ends).astype(np.int64) if ends else np.zeros(0, np.int64)
        self.doc_ids, self.doc_sources = ids, sources
        self.doc_split = np.array([split_of(i) for i in ids], dtype=object)

    @property
    def vocab_size(self) -> int:
        return int(self.card["vocab_size"])

    @property
    def eot_id(self) -> int:
        """The end-of-text id that stands for every document separator in training sequences."""
        return int(self.card["eos_token_id"])

    @property
    def tokenizer_fingerprint(self) -> str | None:
        return self.card.get("tokenizer_fingerprint")

    @cached_property
    def card_hash(self) -> str:
        """Identifies the indexed data by its card (tokens, documents, shards, tokenizer), less the
        build time, so that an index rebuilt from the same documents keeps its hash."""
        card = {k: v for k, v in self.card.items() if k not in ("build_seconds", "sorter")}
        return hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()[:16]

    def split_docs(self, split: str) -> np.ndarray:
        """Indices of the split's documents, in index order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        return np.flatnonzero(self.doc_split == split)

    def doc_tokens(self, d: int) -> np.ndarray:
        return self.tokens[self.doc_shard[d]][self.doc_start[d] : self.doc_end[d]]

    def documents(self, split: str) -> Iterator[tuple[str, str, np.ndarray]]:
        """(id, source, token ids without the separator) of each document of the split."""
        for d in self.split_docs(split):
            yield self.doc_ids[d], self.doc_sources[d], self.doc_tokens(d)


class PackedStream:
    """One epoch's packed token stream of a split: [EOT, doc...] for the documents in a seeded
    order, read window by window without materialising the stream."""

    def __init__(self, shards: TokenShards, docs: np.ndarray):
        self.shards, self.docs = shards, docs
        lengths = shards.doc_end[docs] - shards.doc_start[docs] + 1  # + the leading EOT
        self.begin = np.concatenate(([0], np.cumsum(lengths)))  # stream position of each document's EOT
        self.size = int(self.begin[-1])

    def window(self, pos: int, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int64)
        j = int(np.searchsorted(self.begin, pos, side="right")) - 1
        filled = 0
        while filled < n:
            d = self.docs[j]
            doc = self.shards.doc_tokens(d)
            piece_start = pos + filled - int(self.begin[j])  # offset inside [EOT, doc...]
            if piece_start == 0:
                out[filled] = self.shards.eot_id
                filled += 1
                piece_start = 1
            take = min(n - filled, doc.size - (piece_start - 1))
            out[filled : filled + take] = doc[piece_start - 1 : piece_start - 1 + take]
            filled += take
            j += 1
        return out


def batches(
    shards: TokenShards,
    split: str,
    seq_len: int,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (x, y) LongTensor pairs of shape (batch_size, seq_len), y = x shifted by one.

    Step k of rank r holds windows k*batch_size*world + r*batch_size ... + batch_size - 1 of the
    seeded order, so `world` ranks with `batch_size` each read exactly what one rank with
    `batch_size * world` would, and `start_step` resumes at step k."""
    docs = shards.split_docs(split)
    total = int((shards.doc_end[docs] - shards.doc_start[docs] + 1).sum())
    per_epoch = (total - 1) // seq_len
    if per_epoch < 1:
        raise ValueError(
            f"{shards.index_dir}: the {split} split has {total} tokens, fewer than one sequence of {seq_len + 1}"
        )
    epoch, stream, order = -1, None, None
    step = start_step
    while True:
        rows = []
        first = (step * world + rank) * batch_size
        for w in range(first, first + batch_size):
            if w // per_epoch != epoch:
                epoch = w // per_epoch
                rng = np.random.default_rng([seed, epoch])
                stream = PackedStream(shards, rng.permutation(docs))
                order = rng.permutation(per_epoch)
            rows.append(stream.window(int(order[w % per_epoch]) * seq_len, seq_len + 1))
        block = torch.from_numpy(np.stack(rows))
        yield block[:, :-1], block[:, 1:]
        step += 1


def _read_offsets(path: Path, width: int) -> np.ndarray:
    if not path.is_file():
        raise IndexFormatError(f"{path} is missing")
    raw = np.fromfile(path, dtype="<u8")
    if raw.size and np.any(raw % width):
        raise IndexFormatError(f"{path}: a byte offset is not a multiple of the token width {width}")
    return (raw // width).astype(np.int64)


def _read_metadata(path: Path, docs: int) -> list[dict]:
    if not path.is_file():
        return [{} for _ in range(docs)]
    lines = path.read_bytes().splitlines()
    if len(lines) != docs:
        raise IndexFormatError(f"{path}: {len(lines)} metadata lines for {docs} documents")
    try:
        return [json.loads(line) for line in lines]
    except json.JSONDecodeError as e:
        raise IndexFormatError(f"{path}: a metadata line is not JSON: {e}") from None
