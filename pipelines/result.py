"""What a run produced, passed from the split to the index step, the manifest and the report.

The frames hold every output row without its text (a snippet instead): they are what the counts,
the samples and the histograms read, so nothing needs the Parquet files read back."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import polars as pl

SNIPPET_CHARS = 400
PARTS = ("kept", "rejected", "quarantine", "synthetic")  # the row frames of a shard and of a run


def without_text(frame: pl.DataFrame) -> pl.DataFrame:
    """What the manifest and report keep of an output part: a snippet instead of the text."""
    if "text" in frame.columns:
        return frame.with_columns(snippet=pl.col("text").str.slice(0, SNIPPET_CHARS)).drop("text")
    return frame.with_columns(snippet=pl.col("raw").str.slice(0, SNIPPET_CHARS))


def concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


@dataclass(frozen=True)
class ShardOutput:
    """One shard split into the outputs: the files written and their rows (without text)."""

    files: dict[str, dict[str, Any]]  # path under the run directory -> {rows, sha256}
    kept: pl.DataFrame
    rejected: pl.DataFrame
    quarantine: pl.DataFrame
    synthetic: pl.DataFrame  # inside `kept` too: the documents this run made (WRAP rephrases)
    seconds: dict[str, float]  # per step, summed over the shard's rows


@dataclass(frozen=True)
class DedupChanges:
    """What dedup changed in the split's outputs (it rewrites kept files in place)."""

    files: dict[str, dict[str, Any] | None]  # rewritten or new files; None: removed
    kept: pl.DataFrame  # every kept row after dedup
    rejected: pl.DataFrame  # the rows it rejected (stage `dedup`)
    dropped_synthetic: list[str]  # ids of synthetic documents left empty, dropped
    info: dict[str, Any]  # its figures, for the manifest


@dataclass(frozen=True)
class RunResult:
    files: dict[str, dict[str, Any]]
    params: list[dict[str, Any]]  # fitted per stage, in job order
    seconds: dict[str, float]
    scores: pl.DataFrame  # id, source, error and every stage's score columns, one row per input record
    kept: pl.DataFrame
    rejected: pl.DataFrame
    quarantine: pl.DataFrame
    synthetic: pl.DataFrame
    index: dict[str, Any] | None = field(default=None)  # what the manifest records of the index

    @classmethod
    def collect(cls, shards: list[ShardOutput], params: list[dict[str, Any]], scores: pl.DataFrame) -> RunResult:
        seconds: dict[str, float] = {}
        for shard in shards:
            for step, s in shard.seconds.items():
                seconds[step] = seconds.get(step, 0.0) + s
        return cls(
            files={rel: entry for shard in shards for rel, entry in shard.files.items()},
            params=params,
            seconds=seconds,
            scores=scores,
            **{part: concat([getattr(s, part) for s in shards if len(getattr(s, part))]) for part in PARTS},
        )

    def with_dedup(self, changes: DedupChanges) -> RunResult:
        files = dict(self.files)
        for rel, entry in changes.files.items():
            files.pop(rel, None)
            if entry is not None:
                files[rel] = entry
        synthetic = self.synthetic
        if changes.dropped_synthetic:
            synthetic = synthetic.filter(~pl.col("id").is_in(changes.dropped_synthetic))
        rejected = concat([self.rejected, changes.rejected])
        return dataclasses.replace(self, files=files, kept=changes.kept, rejected=rejected, synthetic=synthetic)
