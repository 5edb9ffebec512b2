"""The index step of a job: after the split, optionally cut exact repeated spans from the kept
documents (Lee et al.), then build an infini-gram index over the final kept shards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from curate.documents import write_parquet
from curate.tokenizer import train_tokenizer
from indexes.build import build_index
from indexes.dedup import dedup_documents
from pipelines.result import DedupChanges, RunResult, concat, without_text
from pipelines.spec import IndexSpec

DEDUP = "dedup"


def index_outputs(spec: IndexSpec, out_dir: Path, result: RunResult, log=print) -> RunResult:
    """Runs on the split outputs; returns the result with dedup's changes and the index's card."""
    kept = sorted((out_dir / "kept").glob("*.parquet"))
    if not kept:
        raise ValueError("no kept documents to index")
    tokenizer = Path(spec.tokenizer) if spec.tokenizer else out_dir / "tokenizer.json"
    if not spec.tokenizer:
        log(f"training a byte-level BPE tokenizer (vocab {spec.vocab}) on the kept documents")
        texts = (t for f in kept for t in pq.read_table(f, columns=["text"])["text"].to_pylist())
        train_tokenizer(texts, tokenizer, spec.vocab)
    index_dir = out_dir / "index"
    info: dict = {"dir": str(index_dir), "tokenizer": str(tokenizer)}
    if spec.dedup_min_tokens:
        changes = dedup(kept, tokenizer, spec, out_dir, log)
        result = result.with_dedup(changes)
        info["dedup"] = changes.info
    info["card"] = build_index(
        [str(out_dir / "kept")], tokenizer, index_dir, spec.shard_tokens, overwrite=True, log=log
    )
    return dataclasses.replace(result, index=info)


def dedup(kept: list[Path], tokenizer: Path, spec: IndexSpec, out_dir: Path, log=print) -> DedupChanges:
    """Cut repeated spans from the kept files (rewritten in place); an input document left empty
    is rejected (stage `dedup`), a synthetic one (made by this run) is dropped."""
    scratch = out_dir / "work" / "dedup-index"
    build_index([str(out_dir / "kept")], tokenizer, scratch, spec.shard_tokens, overwrite=True, log=log)
    files: dict[str, dict | None] = {}
    kept_frames, rejected_frames, dropped_synthetic = [], [], []
    changed = removed = 0
    for path in kept:
        docs = pl.from_arrow(dedup_documents(pq.read_table(path), scratch, spec.dedup_min_tokens))
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
        if len(docs):
            files[f"kept/{path.name}"] = {"rows": len(docs), "sha256": write_parquet(docs.to_arrow(), path)}
        else:
            files[f"kept/{path.name}"] = None
            path.unlink()
        if len(gone):
            rel = f"rejected/{DEDUP}-{path.name}"
            files[rel] = {"rows": len(gone), "sha256": write_parquet(gone.to_arrow(), out_dir / rel)}
    rejected = concat(rejected_frames)
    emptied = len(rejected)
    log(f"dedup: cut {removed} repeated tokens from {changed} documents; {emptied} documents were nothing but repeats")
    info = {
        "min_tokens": spec.dedup_min_tokens, "documents_changed": changed, "tokens_removed": removed,
        "documents_rejected": emptied, "synthetic_dropped": len(dropped_synthetic),
    }  # fmt: skip
    return DedupChanges(files, concat(kept_frames), rejected, dropped_synthetic, info)
