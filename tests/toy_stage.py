"""A stage defined outside curate, as a user would add one: settings, class, nothing else."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from pydantic import Field

from curate.registry import Strict
from curate.stages import Plot, Resources, Stage


class MinCharsConfig(Strict):
    min_chars: int = Field(ge=1, description="reject documents shorter than this")


class MinChars(Stage):
    """Rejects documents with fewer than `min_chars` characters."""

    name = "min_chars"
    columns = ("chars",)
    resources = Resources(cpus=0.25, concurrency=1)
    config: MinCharsConfig

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        return {"chars": np.array([len(t) for t in texts], np.int64)}

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        return {"min_chars": self.config.min_chars}

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        short = pl.col("chars") < params["min_chars"]
        reason = pl.when(short).then(pl.format("{} characters", pl.col("chars"))).otherwise(None)
        return df.with_columns(reason.alias("_reason"))

    def plots(self, params: dict[str, Any]) -> list[Plot]:
        return [Plot("chars", {"min_chars": params["min_chars"]})]


class LosesADocument(MinChars):
    """A broken stage for the runner's accounting check: its decision drops each shard's first document."""

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        return super().decide(df.slice(1), params)
