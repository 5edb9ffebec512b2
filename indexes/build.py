"""Build an infini-gram v4 index: tokenize documents into shards, then suffix-sort each shard.

Documents stream through in batches; each shard is closed once it holds `shard_tokens` tokens and
its suffix array is built by a Ray task while the next shard is being tokenized. A task holds the
shard's bytes (2 or 4 per token) plus pydivsufsort's output (4 bytes per byte of the shard, 8 past
2 GiB) and writes the packed table straight to disk, so peak memory is bounded by the shard size,
not by the corpus. The finished index is written under a temporary name and renamed into place.

Without `shard_tokens`, shards close at MAX_SHARD_TOKENS and the last one, once the corpus has
ended and its size is known, is cut at document boundaries into one shard per CPU of the Ray
cluster (none smaller than MIN_SHARD_TOKENS): one suffix sort runs on one core, so this is what
puts every core to work on a corpus below MAX_SHARD_TOKENS.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate import remote_dirs, storage
from curate.documents import expand_inputs, read_texts
from curate.ray_runtime import init_ray
from curate.tokenizer import TextTokenizer, fingerprint, load_tokenizer
from indexes.layout import CARD_NAME, TOKENIZER_NAME, shard_path, token_width_for_vocab
from indexes.options import MAX_SHARD_TOKENS, MIN_SHARD_TOKENS
from indexes.suffix_array import build_suffix_array, check_sorter

ENCODE_BATCH_DOCS = 1024


def iter_documents(patterns: list[str]) -> Iterator[dict]:
    """Documents as {text, metadata} from Parquet shards (e.g. a run's kept/) or JSON Lines files.

    `metadata` mirrors infini-gram's line: the file, the row in it, and the document's fields.
    """
    for path in expand_inputs(patterns):  # local paths or object-store URLs (curate/storage.py)
        if storage.name(path).endswith(".parquet"):
            parquet = storage.parquet_file(path)
            if "text" not in parquet.schema_arrow.names:
                raise ValueError(f"{path}: no `text` column")
            fields = [c for c in ("id", "source", "url") if c in parquet.schema_arrow.names]
            row = 0
            for batch in parquet.iter_batches(columns=["text", *fields], batch_size=ENCODE_BATCH_DOCS):
                for record in batch.to_pylist():
                    text = record.pop("text")
                    meta = {"path": storage.name(path), "linenum": row, "metadata": record}
                    yield {"text": text or "", "metadata": meta}
                    row += 1
        else:
            for row, doc in enumerate(read_texts([str(path)])):
                text = doc.pop("text")
                yield {"text": text, "metadata": {"path": storage.name(path), "linenum": row, "metadata": doc}}


class ShardWriter:
    """Appends tokenized documents to the v4 files of one shard."""

    def __init__(self, index_dir: Path, s: int, token_width: int):
        self.s, self.token_width = s, token_width
        self.dtype = np.dtype("<u2" if token_width == 2 else "<u4")
        self.separator = b"\xff" * token_width
        self.files = {
            kind: open(shard_path(index_dir, kind, s), "wb") for kind in ("tokenized", "offset", "metadata", "metaoff")
        }
        self.token_bytes = 0
        self.meta_bytes = 0
        self.docs = 0

    @property
    def tokens(self) -> int:
        return self.token_bytes // self.token_width

    def add(self, ids: Iterable[int] | np.ndarray, metadata: dict | None = None) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= (1 << (8 * self.token_width)) - 1):
            raise ValueError(
                f"token id out of range for {self.token_width}-byte ids (the all-0xFF id is the separator)"
            )
        self.files["offset"].write(np.uint64(self.token_bytes).tobytes())
        self.files["metaoff"].write(np.uint64(self.meta_bytes).tobytes())
        line = (json.dumps(metadata or {}, ensure_ascii=False) + "\n").encode()
        self.files["metadata"].write(line)
        self.files["tokenized"].write(self.separator + ids.astype(self.dtype).tobytes())
        self.token_bytes += self.token_width * (ids.size + 1)
        self.meta_bytes += len(line)
        self.docs += 1

    def close(self) -> None:
        for f in self.files.values():
            f.close()


@dataclass(frozen=True)
class ShardInfo:
    s: int
    tokens: int  # separators included
    docs: int


def default_shard_count(tokens: int, cores: int) -> int:
    """Shards for the last `tokens` tokens of a corpus: one per core, none below MIN_SHARD_TOKENS."""
    return max(1, min(cores, tokens // MIN_SHARD_TOKENS))


def split_shard(index_dir: Path, shard: ShardInfo, pieces: int, token_width: int) -> list[ShardInfo]:
    """Cut a written (unsorted) shard at document boundaries into about equal shards s, s+1, ...

    Each cut falls on the first document that starts at or past its share of the tokens; the
    first piece keeps the original files, truncated, and the others are copied out of them."""
    paths = {kind: shard_path(index_dir, kind, shard.s) for kind in ("tokenized", "offset", "metadata", "metaoff")}
    offsets = np.fromfile(paths["offset"], np.uint64).astype(np.int64)
    meta_offsets = np.fromfile(paths["metaoff"], np.uint64).astype(np.int64)
    size, meta_size = paths["tokenized"].stat().st_size, paths["metadata"].stat().st_size
    targets = [size * j // pieces for j in range(1, pieces)]
    cuts = sorted({int(d) for d in np.searchsorted(offsets, targets)} - {0, offsets.size})
    bounds = [0, *cuts, offsets.size]
    infos = []
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        end = int(offsets[b]) if b < offsets.size else size
        meta_end = int(meta_offsets[b]) if b < offsets.size else meta_size
        if j:
            _copy_range(paths["tokenized"], shard_path(index_dir, "tokenized", shard.s + j), int(offsets[a]), end)
            _copy_range(
                paths["metadata"], shard_path(index_dir, "metadata", shard.s + j), int(meta_offsets[a]), meta_end
            )
            (offsets[a:b] - offsets[a]).astype("<u8").tofile(shard_path(index_dir, "offset", shard.s + j))
            (meta_offsets[a:b] - meta_offsets[a]).astype("<u8").tofile(shard_path(index_dir, "metaoff", shard.s + j))
        infos.append(ShardInfo(shard.s + j, (end - int(offsets[a])) // token_width, b - a))
    first_end = bounds[1]
    if first_end < offsets.size:  # the first piece: the original files, cut short
        for kind, length in (
            ("tokenized", int(offsets[first_end])), ("offset", 8 * first_end),
            ("metadata", int(meta_offsets[first_end])), ("metaoff", 8 * first_end),
        ):  # fmt: skip
            os.truncate(paths[kind], length)
    return infos


def _copy_range(source: Path, target: Path, start: int, end: int) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        src.seek(start)
        remaining = end - start
        while remaining:
            block = src.read(min(remaining, 1 << 24))
            dst.write(block)
            remaining -= len(block)


def build_index(
    inputs: list[str],
    tokenizer_path: str | Path,
    out_dir: str | Path,
    shard_tokens: int | None = None,
    overwrite: bool = False,
    log=print,
    sorter: str = "auto",
    on_this_node: bool = False,
) -> dict:
    """Index documents (Parquet shards such as a run's `kept/*.parquet`, or JSON Lines) and return
    the index card. `tokenizer_path`: a tokenizer.json, or a .gguf model whose vocabulary gives
    the ids (so a neural model can be scored against the index). Shards are suffix-sorted in
    parallel as Ray tasks with `sorter` (see indexes/suffix_array.py); `shard_tokens` None: one
    shard per CPU (see the module's docstring); `on_this_node`: see `write_index`."""
    tokenizer = load_tokenizer(tokenizer_path)
    documents = _encode(iter_documents(inputs), tokenizer)
    return write_index(
        documents,
        out_dir,
        tokenizer.vocab_size,
        tokenizer.eos_token_id,
        tokenizer,
        shard_tokens,
        overwrite,
        log,
        sorter,
        on_this_node,
    )


def _encode(docs: Iterator[dict], tokenizer: TextTokenizer) -> Iterator[tuple[list[int], dict]]:
    batch: list[dict] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == ENCODE_BATCH_DOCS:
            yield from _encode_batch(batch, tokenizer)
            batch = []
    yield from _encode_batch(batch, tokenizer)


def _encode_batch(batch: list[dict], tokenizer: TextTokenizer) -> Iterator[tuple[list[int], dict]]:
    for doc, ids in zip(batch, tokenizer.encode_batch([d["text"] for d in batch])):
        yield ids, doc["metadata"]


def write_index(
    documents: Iterable[tuple[Iterable[int], dict]],
    out_dir: str | Path,
    vocab_size: int,
    eos_token_id: int,
    tokenizer: TextTokenizer | None = None,
    shard_tokens: int | None = None,
    overwrite: bool = False,
    log=print,
    sorter: str = "auto",
    on_this_node: bool = False,
) -> dict:
    """Index already tokenized documents given as (token ids, metadata) pairs. Without a
    tokenizer the index answers token-id queries only. A tokenizer.json is copied into the index;
    a .gguf (hundreds of MB) is recorded by its absolute path. An object-store `out_dir`
    (`s3://...`) is built in a local folder, then uploaded with index.json last, the old one
    removed first: a reader never sees a partial index (curate/remote_dirs.py). Its sort tasks then
    run on this node (`on_this_node`), where the local folder is, even on a cluster of several."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if storage.is_url(out_dir):
        with remote_dirs.publishing(str(out_dir), CARD_NAME, overwrite, log) as local:
            return write_index(
                documents,
                local,
                vocab_size,
                eos_token_id,
                tokenizer,
                shard_tokens,
                overwrite=True,  # a fresh staging folder; `overwrite` was checked against the URL
                log=log,
                sorter=sorter,
                on_this_node=True,
            )
    width = token_width_for_vocab(vocab_size)
    if shard_tokens is not None and shard_tokens < 1:
        raise ValueError(f"--shard-tokens must be positive, got {shard_tokens}")
    check_sorter(sorter)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir} already exists and is not empty (pass --overwrite to replace it)")
    work = out_dir.with_name(f".{out_dir.name}.building")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    init_ray()  # joins the command's Ray, or starts one
    cores = int(ray.cluster_resources().get("CPU", 1))
    sort_task = ray.remote(num_cpus=1)(build_suffix_array)
    if on_this_node:
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        sort_task = sort_task.options(scheduling_strategy=here)
    t0 = time.perf_counter()
    pending, writers = [], []

    def sort(shard: ShardInfo) -> None:
        writers.append(shard)
        pending.append(sort_task.remote(str(work), shard.s, width, sorter))
        log(f"shard {shard.s}: {shard.tokens:,} tokens, {shard.docs:,} documents; suffix-sorting")

    def close(writer: ShardWriter, last: bool) -> None:
        writer.close()
        shard = ShardInfo(writer.s, writer.tokens, writer.docs)
        pieces = default_shard_count(shard.tokens, cores) if last and shard_tokens is None else 1
        for piece in split_shard(work, shard, pieces, width) if pieces > 1 else [shard]:
            sort(piece)

    try:
        writer = None
        for ids, metadata in documents:
            if writer is None:
                writer = ShardWriter(work, len(writers), width)
            writer.add(ids, metadata)
            if writer.tokens >= (shard_tokens or MAX_SHARD_TOKENS):
                close(writer, last=False)
                writer = None
        if writer is not None:
            close(writer, last=True)
        if not writers:
            raise ValueError("no documents to index")
        sorters_used = sorted(set(ray.get(pending)))
    except BaseException as e:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, ray.exceptions.RayTaskError) and e.cause is not None:
            raise e.cause from None  # the task's own error, without Ray's remote traceback
        raise

    card = {
        "format": "infini-gram v4",
        "token_width": width,
        "vocab_size": vocab_size,
        "eos_token_id": eos_token_id,
        "shards": len(writers),
        "tokens": sum(w.tokens for w in writers),
        "documents": sum(w.docs for w in writers),
        "tokenizer": _card_tokenizer(tokenizer),
        "tokenizer_fingerprint": fingerprint(tokenizer) if tokenizer else None,
        "sorter": ", ".join(sorters_used),
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    if card["tokenizer"] == TOKENIZER_NAME:
        shutil.copyfile(tokenizer.source, work / TOKENIZER_NAME)
    (work / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(work, out_dir)
    log(f"index {out_dir}: {card['tokens']:,} tokens in {card['shards']} shard(s), {card['build_seconds']} s")
    return card


def _card_tokenizer(tokenizer: TextTokenizer | None) -> str | None:
    """The card's `tokenizer`: a path relative to the index (absolute for a .gguf left in place)."""
    if tokenizer is None:
        return None
    return str(Path(tokenizer.source).resolve()) if tokenizer.source.endswith(".gguf") else TOKENIZER_NAME
