"""The index step of a job: after the split, optionally cut exact repeated spans from the kept
documents (Lee et al.), then build an infini-gram index over the final kept shards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl

from curate import storage
from curate.storage import Location
from curate.tokenizer import train_tokenizer
from indexes.build import build_index
from indexes.dedup import dedup_documents
from indexes.layout import TOKENIZER_NAME
from pipelines.result import DedupChanges, RunResult, concat, without_text
from pipelines.spec import IndexSpec

DEDUP = "dedup"


def index_outputs(spec: IndexSpec, out_dir: Location, result: RunResult, log=print) -> RunResult:
    """Runs on the split outputs; returns the result with dedup's changes and the index's card.
    With an object-store `out_dir` the tokenizer is trained and the indexes are built on the
    driver's disk (`storage.local_dir`), then tokenizer.json and the index are uploaded."""
    kept_dir = storage.join(out_dir, "kept")
    kept = storage.glob("*.parquet", kept_dir)
    if not kept:
        raise ValueError("no kept documents to index")
    local = storage.local_dir(out_dir)  # out_dir itself when local
    tokenizer = Path(spec.tokenizer) if spec.tokenizer else local / TOKENIZER_NAME
    if not spec.tokenizer:
        log(f"training a byte-level BPE tokenizer (vocab {spec.vocab}) on the kept documents")
        texts = (t for f in kept for t in storage.read_parquet(f, columns=["text"])["text"].to_pylist())
        local.mkdir(parents=True, exist_ok=True)
        train_tokenizer(texts, tokenizer, spec.vocab)
        if storage.is_url(out_dir):
            storage.write_bytes(storage.join(out_dir, TOKENIZER_NAME), tokenizer.read_bytes())
    index_dir = storage.join(out_dir, "index")
    shown = tokenizer if spec.tokenizer or not storage.is_url(out_dir) else storage.join(out_dir, TOKENIZER_NAME)
    info: dict = {"dir": str(index_dir), "tokenizer": str(shown)}
    if spec.dedup_min_tokens:
        changes = dedup(kept, tokenizer, spec, out_dir, log)
        result = result.with_dedup(changes)
        info["dedup"] = changes.info
    info["card"] = build_index([str(kept_dir)], tokenizer, index_dir, spec.shard_tokens, overwrite=True, log=log)
    return dataclasses.replace(result, index=info)


def dedup(kept: list[Location], tokenizer: Path, spec: IndexSpec, out_dir: Location, log=print) -> DedupChanges:
    """Cut repeated spans from the kept files (rewritten in place); an input document left empty
    is rejected (stage `dedup`), a synthetic one (made by this run) is dropped. The scratch index
    stays on the driver's disk (so, with an object-store `out_dir`, its sort tasks run on this node)."""
    scratch = storage.local_dir(out_dir) / "work" / "dedup-index"
    kept_dir = [str(storage.join(out_dir, "kept"))]
    build_index(kept_dir, tokenizer, scratch, spec.shard_tokens, True, log, on_this_node=storage.is_url(out_dir))
    files: dict[str, dict | None] = {}
    kept_frames, rejected_frames, dropped_synthetic = [], [], []
    changed = removed = 0
    for path in kept:
        docs = pl.from_arrow(dedup_documents(storage.read_parquet(path), scratch, spec.dedup_min_tokens))
        changed += int((docs["dedup_removed_tokens"] > 0).sum())
        removed += int(docs["dedup_removed_tokens"].sum())
        empty = docs["text"].str.strip_chars() == ""
        synthetic = pl.col("parent_id").is_not_null() if "parent_id" in docs.columns else pl.lit(False)
        dropped_synthetic += docs.filter(empty & synthetic)["id"].to_list()
        reason = pl.format("all {} tokens repeat earlier documents", pl.col("dedup_removed_tokens"))
        gone = docs.filter(empty & ~synthetic).with_columns(reject_stage=pl.lit(DEDUP), reject_reason=reason)
        docs = docs.filter(~empty)
        kept_frames.append(without_text(docs))
        rejected_frames.append(without_text(gone))
        name = storage.name(path)
        if len(docs):
            files[f"kept/{name}"] = {"rows": len(docs), "sha256": storage.write_parquet(docs.to_arrow(), path)}
        else:
            files[f"kept/{name}"] = None
            storage.remove(path)
        if len(gone):
            rel = f"rejected/{DEDUP}-{name}"
            digest = storage.write_parquet(gone.to_arrow(), storage.join(out_dir, rel))
            files[rel] = {"rows": len(gone), "sha256": digest}
    rejected = concat(rejected_frames)
    emptied = len(rejected)
    log(f"dedup: cut {removed} repeated tokens from {changed} documents; {emptied} documents were nothing but repeats")
    info = {
        "min_tokens": spec.dedup_min_tokens, "documents_changed": changed, "tokens_removed": removed,
        "documents_rejected": emptied, "synthetic_dropped": len(dropped_synthetic),
    }  # fmt: skip
    return DedupChanges(files, concat(kept_frames), rejected, dropped_synthetic, info)
