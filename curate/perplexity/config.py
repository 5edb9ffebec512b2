"""Job settings of the KenLM filters (light: validating a job imports no KenLM)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from curate.registry import Strict

Bucket = Literal["head", "middle", "tail"]


class PerplexityConfig(Strict):
    model: str
    percentiles: tuple[float, float] = (30.0, 60.0)
    cutoffs: tuple[float, float] | None = Field(None, description="fixed head/middle upper bounds instead of percentiles")
    keep: list[Bucket] = ["head", "middle", "tail"]
    max_ppl: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> PerplexityConfig:
        lo, hi = self.cutoffs if self.cutoffs else self.percentiles
        if not lo <= hi:
            raise ValueError("the head bound must not exceed the middle bound")
        if not self.cutoffs and not (0 <= lo <= 100 and 0 <= hi <= 100):
            raise ValueError("percentiles must lie in [0, 100]")
        return self


class HarmfulConfig(Strict):
    model: str
    reference: str | None = Field(None, description="benign reference model; default: the one the model was calibrated with")
    score: Literal["perplexity", "contrastive"] | None = Field(None, description="default: the better one found by calibration")
    threshold: float | Literal["card", "valley"] = "card"
