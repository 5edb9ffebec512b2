"""Job settings of the KenLM filters (light: validating a job imports no KenLM)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from curate.registry import Strict

Bucket = Literal["head", "middle", "tail"]
ANY_LANGUAGE = "*"  # the key of the single `model:` form: one model for every document


class PerLanguage(Strict):
    """One model for all documents (`model`), or one per language (`models`, keyed by the langid
    stage's codes). A document in a language without a model is never scored by another's."""

    model: str | None = Field(None, description="one model for every document, whatever its language")
    models: dict[str, str] | None = Field(None, description="a model per language (langid's codes), e.g. {en: wiki}")
    unmodeled: Literal["keep", "reject"] = Field("keep", description="what happens to a language without a model")

    @model_validator(mode="after")
    def _one_form(self) -> PerLanguage:
        if (self.model is None) == (self.models is None):
            raise ValueError("give either `model` or `models` (a model per language), not both or neither")
        if self.models is not None and (not self.models or ANY_LANGUAGE in self.models):
            raise ValueError(f"`models` maps language codes to models (at least one, none named {ANY_LANGUAGE!r})")
        return self

    def by_language(self) -> dict[str, str]:
        return dict(self.models) if self.models is not None else {ANY_LANGUAGE: self.model}


class PerplexityConfig(PerLanguage):
    percentiles: tuple[float, float] = (30.0, 60.0)
    cutoffs: tuple[float, float] | None = Field(
        None, description="fixed head/middle upper bounds instead of percentiles"
    )
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


class HarmfulConfig(PerLanguage):
    reference: str | None = Field(
        None, description="benign reference model; default: the one the model was calibrated with"
    )
    score: Literal["perplexity", "contrastive"] | None = Field(
        None, description="default: the better one found by calibration"
    )
    threshold: float | Literal["card", "valley"] = "card"
    guard: bool = Field(True, description="abstain on text unfamiliar to the harmful model (the card's guard levels)")
