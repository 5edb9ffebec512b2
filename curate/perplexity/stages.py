"""The KenLM filters: CCNet quality perplexity with head/middle/tail buckets, and harmful-content
perplexity ("Perplexed by Quality"), optionally contrasted with a benign reference model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate import calibrate
from curate.harmful import harmfulness
from curate.lm import CARD, LanguageModel, perplexity
from curate.perplexity.config import HarmfulConfig, PerplexityConfig
from curate.stages import Plot, Stage


class PerplexityFilter(Stage):
    """CCNet quality perplexity under a model of clean text, with head/middle/tail buckets."""

    name = "perplexity"
    columns = ("ppl_log10", "ppl_tokens", "ppl")
    models = ("model",)
    config: PerplexityConfig

    def __init__(self, config: PerplexityConfig):
        super().__init__(config)
        self.lm: LanguageModel | None = None

    def setup(self) -> None:
        self.lm = LanguageModel(self.config.model)

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        assert self.lm is not None, "setup() loads the model"
        log10_sum, tokens = self.lm.score_many(texts)
        return {"ppl_log10": log10_sum, "ppl_tokens": tokens, "ppl": perplexity(log10_sum, tokens)}

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        c = self.config
        if c.cutoffs:
            head, middle = c.cutoffs
            how = "given"
        else:
            ppl = scores["ppl"].to_numpy()
            head, middle = (float(np.percentile(ppl, p)) for p in c.percentiles) if len(ppl) else (0.0, 0.0)
            how = f"percentiles {c.percentiles[0]:g}/{c.percentiles[1]:g} of this run ({len(ppl)} documents)"
        cutoffs = {"head": head, "middle": middle}
        return {"cutoffs": cutoffs, "cutoffs_from": how, "keep": list(c.keep), "max_ppl": c.max_ppl}

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        head, middle = params["cutoffs"]["head"], params["cutoffs"]["middle"]
        keep, max_ppl = self.config.keep, self.config.max_ppl
        bucket = pl.when(pl.col("ppl") < head).then(pl.lit("head")).when(pl.col("ppl") < middle).then(pl.lit("middle"))
        df = df.with_columns(bucket.otherwise(pl.lit("tail")).alias("ppl_bucket"))
        ppl = pl.col("ppl").round(1)
        outside = pl.format("ppl {} in bucket {} (keeping {})", ppl, pl.col("ppl_bucket"), pl.lit(",".join(keep)))
        reason = pl.when(~pl.col("ppl_bucket").is_in(list(keep))).then(outside)
        if max_ppl is not None:
            reason = reason.when(pl.col("ppl") > max_ppl).then(pl.format("ppl {} > max_ppl {}", ppl, pl.lit(max_ppl)))
        return df.with_columns(reason.otherwise(None).alias("_reason"))

    def plots(self, params: dict[str, Any]) -> list[Plot]:
        lines = {f"{k} cut-off": v for k, v in params["cutoffs"].items()}
        if params.get("max_ppl"):
            lines["max_ppl"] = params["max_ppl"]
        return [Plot("ppl", lines)]


class HarmfulFilter(Stage):
    """Harmful-content perplexity: a model trained only on harmful text gives harmful documents
    a *low* perplexity. Optionally contrasted with a benign model of the same genre."""

    name = "harmful"
    columns = ("harmful_ppl", "harmful_ref_ppl", "harmful_score")
    models = ("model", "reference")
    config: HarmfulConfig

    def __init__(self, config: HarmfulConfig):
        super().__init__(config)
        card = json.loads((Path(config.model) / CARD).read_text()).get("thresholds", {}).get("harmful", {})
        self.score_kind = config.score or card.get("default", "perplexity")
        if self.score_kind not in calibrate.SCORES:
            raise ValueError(f"harmful score must be one of {calibrate.SCORES}, got {self.score_kind!r}")
        contrastive = self.score_kind == "contrastive"
        self.reference_dir = config.reference or (card.get("contrastive", {}).get("reference") if contrastive else None)
        if contrastive and not self.reference_dir:
            raise ValueError("the contrastive harmful score needs a reference model: set `reference` or calibrate with one")
        self.card_threshold = card.get(self.score_kind, {}).get("threshold")
        if config.threshold == "card" and self.card_threshold is None:
            raise ValueError(f"{config.model} has no calibrated {self.score_kind} threshold: run `curate kenlm calibrate` or set `threshold`")
        self.lm: LanguageModel | None = None
        self.reference: LanguageModel | None = None

    def setup(self) -> None:
        self.lm = LanguageModel(self.config.model)
        self.reference = LanguageModel(self.reference_dir) if self.reference_dir else None

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        assert self.lm is not None, "setup() loads the model"
        return harmfulness(self.lm, self.reference, texts)

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        col = "harmful_score" if self.score_kind == "contrastive" else "harmful_ppl"
        threshold = self.config.threshold
        if threshold == "card":
            threshold, how = self.card_threshold, "calibrated (model card)"
        elif threshold == "valley":
            h = scores["harmful_score"].to_numpy()
            t = calibrate.valley(h)
            threshold = t if self.score_kind == "contrastive" else 10.0 ** (-t)
            how = f"valley of this run's histogram ({len(h)} documents)"
        else:
            threshold, how = float(threshold), "given"
        return {"score": self.score_kind, "column": col, "threshold": threshold, "threshold_from": how}

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        t = params["threshold"]
        if params["score"] == "contrastive":
            flagged = pl.col("harmful_score") > t
            how = "contrastive score {} > {} (harmful model vs reference)"
            text = pl.format(how, pl.col("harmful_score").round(3), pl.lit(round(t, 3)))
        else:
            flagged = pl.col("harmful_ppl") < t
            how = "harmful_ppl {} < {} (harmful-only model)"
            text = pl.format(how, pl.col("harmful_ppl").round(1), pl.lit(round(t, 1)))
        reason = pl.when(flagged).then(text).otherwise(None)
        return df.with_columns(flagged.alias("is_harmful"), reason.alias("_reason"))

    def plots(self, params: dict[str, Any]) -> list[Plot]:
        return [Plot(params["column"], {"threshold": params["threshold"]}, log=params["score"] == "perplexity")]
