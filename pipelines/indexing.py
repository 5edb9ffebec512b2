"""The index step of a job: after the split, optionally cut exact repeated spans from the kept
documents (Lee et al.), then build an infini-gram index over the final kept shards."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from curate.documents import write_parquet
from indexes.build import build_index
from indexes.dedup import dedup_documents
from curate.tokenizer import train_tokenizer
from pipelines.report import without_text
from pipelines.spec import IndexSpec

DEDUP = "dedup"


def index_outputs(spec: IndexSpec, out_dir: Path, result: dict, log=print) -> dict:
    """Runs on the split outputs, updating `result` (files, frames) where dedup changes them;
    returns what the manifest records of the index."""
    kept = sorted((out_dir / "kept").glob("*.parquet"))
    if not kept:
        raise ValueError("no kept documents to index")
    tokenizer = Path(spec.tokenizer) if spec.tokenizer else out_dir / "tokenizer.json"
    if not spec.tokenizer:
        log(f"training a byte-level BPE tokenizer (vocab {spec.vocab}) on the kept documents")
        train_tokenizer((t for f in kept for t in pq.read_table(f, columns=["text"])["text"].to_pylist()), tokenizer, spec.vocab)
    info: dict = {"dir": str(out_dir / "index"), "tokenizer": str(tokenizer)}
    if spec.dedup_min_tokens:
        info["dedup"] = _dedup(kept, tokenizer, spec, out_dir, result, log)
    info["card"] = build_index([str(out_dir / "kept")], tokenizer, out_dir / "index", spec.shard_tokens, overwrite=True, log=log)
    return info


def _dedup(kept: list[Path], tokenizer: Path, spec: IndexSpec, out_dir: Path, result: dict, log) -> dict:
    scratch = out_dir / "work" / "dedup-index"
    build_index([str(out_dir / "kept")], tokenizer, scratch, spec.shard_tokens, overwrite=True, log=log)
    changed = removed = emptied = 0
    kept_frames, rejected_frames, dropped_synthetic = [], [], []
    for path in kept:
        docs = pl.from_arrow(dedup_documents(pq.read_table(path), scratch, spec.dedup_min_tokens))
        changed += int((docs["dedup_removed_tokens"] > 0).sum())
        removed += int(docs["dedup_removed_tokens"].sum())
        empty = docs["text"].str.strip_chars() == ""
        synthetic = pl.col("parent_id").is_not_null() if "parent_id" in docs.columns else pl.lit(False)
        # an emptied input document is a rejection; an emptied synthetic one (made by this run) is dropped
        dropped_synthetic += docs.filter(empty & synthetic)["id"].to_list()
        gone = docs.filter(empty & ~synthetic).with_columns(
            reject_stage=pl.lit(DEDUP), reject_reason=pl.format("all {} tokens repeat earlier documents", pl.col("dedup_removed_tokens"))
        )
        docs = docs.filter(~empty)
        rel = f"kept/{path.name}"
        result["outputs"].pop(rel)
        if len(docs):
            result["outputs"][rel] = {"rows": len(docs), "sha256": write_parquet(docs.to_arrow(), path)}
        else:
            path.unlink()
        if len(gone):
            rel = f"rejected/{DEDUP}-{path.name}"
            result["outputs"][rel] = {"rows": len(gone), "sha256": write_parquet(gone.to_arrow(), out_dir / rel)}
        kept_frames.append(docs)
        rejected_frames.append(gone)
        emptied += len(gone)
    result["frames"]["kept"] = pl.concat([without_text(f) for f in kept_frames], how="diagonal_relaxed")
    result["frames"]["rejected"] = pl.concat([result["frames"]["rejected"], *map(without_text, rejected_frames)], how="diagonal_relaxed")
    if dropped_synthetic:
        result["frames"]["synthetic"] = result["frames"]["synthetic"].filter(~pl.col("id").is_in(dropped_synthetic))
    log(f"dedup: cut {removed} repeated tokens from {changed} documents; {emptied} documents were nothing but repeats")
    return {"min_tokens": spec.dedup_min_tokens, "documents_changed": changed, "tokens_removed": removed, "documents_rejected": emptied,
            "synthetic_dropped": len(dropped_synthetic)}
