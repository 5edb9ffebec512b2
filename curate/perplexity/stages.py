"""The KenLM filters: CCNet quality perplexity with head/middle/tail buckets, and harmful-content
perplexity ("Perplexed by Quality"), optionally contrasted with a benign reference model.

Both take one model for every document (`model`) or one per language (`models`, read against
the langid stage's `language` column): a document is scored only by its language's model, and
buckets and thresholds are fitted per language, as CCNet does. A document in a language without
a model gets null scores and is kept or rejected as `unmodeled` says."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from curate import calibrate, storage
from curate.harmful import familiar, harmfulness
from curate.lm import CARD, LanguageModel, perplexity
from curate.perplexity.config import ANY_LANGUAGE, HarmfulConfig, PerLanguage, PerplexityConfig
from curate.stages import Plot, Stage


class Routed(Stage):
    """A stage with a model per language: which rows each model scores, which model a row had."""

    config: PerLanguage

    def __init__(self, config: PerLanguage):
        super().__init__(config)
        self.by_language = config.by_language()
        self.single = ANY_LANGUAGE in self.by_language
        self.inputs = () if self.single else ("language",)

    def groups(self, n: int, language: list[str] | None) -> dict[str, np.ndarray]:
        """Row numbers per model key; rows of a language without a model are in no group."""
        if self.single:
            return {ANY_LANGUAGE: np.arange(n)}
        lang = np.asarray(language)
        return {key: rows for key in self.by_language if len(rows := np.flatnonzero(lang == key))}

    def key(self) -> pl.Expr:
        """The model key of each row: the language when it has a model, else null."""
        if self.single:
            return pl.lit(ANY_LANGUAGE)
        return pl.when(pl.col("language").is_in(list(self.by_language))).then(pl.col("language"))

    def per_key(self, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {ANY_LANGUAGE: params} if self.single else params["languages"]

    def pack(self, per_key: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Fitted parameters: flat for the single form, per language otherwise."""
        if self.single:
            return per_key[ANY_LANGUAGE]
        return {"languages": per_key, "unmodeled": self.config.unmodeled}

    def unmodeled(self, what: str) -> pl.Expr:
        """The rejection reason of a row whose language has no model: null when they are kept."""
        if self.single or self.config.unmodeled == "keep":
            return pl.lit(None, pl.String)
        return pl.format("language {} has no {} model (unmodeled: reject)", pl.col("language"), pl.lit(what))

    def of_key(self, scores: pl.DataFrame, key: str) -> pl.DataFrame:
        return scores if self.single or not len(scores) else scores.filter(pl.col("language") == key)

    def label(self, key: str) -> str | None:
        return None if self.single else key


class PerplexityFilter(Routed):
    """CCNet quality perplexity under a model of clean text, with head/middle/tail buckets."""

    name = "perplexity"
    columns = ("ppl_log10", "ppl_tokens", "ppl")
    models = ("model", "models")
    config: PerplexityConfig

    def __init__(self, config: PerplexityConfig):
        super().__init__(config)
        self.lms: dict[str, LanguageModel] = {}

    def setup(self) -> None:
        self.lms = {key: LanguageModel(path) for key, path in self.by_language.items()}

    def score(self, texts: list[str], language: list[str] | None = None) -> dict[str, np.ndarray]:
        assert self.lms, "setup() loads the models"
        if self.single:  # every row, and the token counts stay integers
            log10_sum, tokens = self.lms[ANY_LANGUAGE].score_many(texts)
            return {"ppl_log10": log10_sum, "ppl_tokens": tokens, "ppl": perplexity(log10_sum, tokens)}
        out = {c: np.full(len(texts), np.nan) for c in self.columns}
        for key, rows in self.groups(len(texts), language).items():
            log10_sum, tokens = self.lms[key].score_many([texts[i] for i in rows])
            out["ppl_log10"][rows], out["ppl_tokens"][rows] = log10_sum, tokens
            out["ppl"][rows] = perplexity(log10_sum, tokens)
        return out

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        c = self.config
        fitted = {}
        for key in self.by_language:
            if c.cutoffs:
                (head, middle), how = c.cutoffs, "given"
            else:
                frame = self.of_key(scores, key)
                ppl = frame["ppl"].drop_nulls().to_numpy() if len(frame) else np.empty(0)
                head, middle = (float(np.percentile(ppl, p)) for p in c.percentiles) if len(ppl) else (0.0, 0.0)
                how = f"percentiles {c.percentiles[0]:g}/{c.percentiles[1]:g} of this run ({len(ppl)} documents)"
            cutoffs = {"head": head, "middle": middle}
            fitted[key] = {"cutoffs": cutoffs, "cutoffs_from": how, "keep": list(c.keep), "max_ppl": c.max_ppl}
        return self.pack(fitted)

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        per_key = self.per_key(params)
        keep, max_ppl = self.config.keep, self.config.max_ppl
        key = self.key()

        def bound(name: str) -> pl.Expr:
            values = {k: p["cutoffs"][name] for k, p in per_key.items()}
            return key.replace_strict(values, default=None, return_dtype=pl.Float64)

        ppl = pl.col("ppl")
        bucket = pl.when(key.is_null()).then(None).when(ppl < bound("head")).then(pl.lit("head"))
        bucket = bucket.when(ppl < bound("middle")).then(pl.lit("middle")).otherwise(pl.lit("tail"))
        df = df.with_columns(bucket.alias("ppl_bucket"))
        shown = ppl.round(1)
        outside = pl.format("ppl {} in bucket {} (keeping {})", shown, pl.col("ppl_bucket"), pl.lit(",".join(keep)))
        reason = pl.when(key.is_null()).then(self.unmodeled("perplexity"))
        reason = reason.when(~pl.col("ppl_bucket").is_in(list(keep))).then(outside)
        if max_ppl is not None:
            reason = reason.when(ppl > max_ppl).then(pl.format("ppl {} > max_ppl {}", shown, pl.lit(max_ppl)))
        return df.with_columns(reason.otherwise(None).alias("_reason"))

    def plots(self, params: dict[str, Any]) -> list[Plot]:
        out = []
        for key, p in self.per_key(params).items():
            lines = {f"{k} cut-off": v for k, v in p["cutoffs"].items()}
            if p.get("max_ppl"):
                lines["max_ppl"] = p["max_ppl"]
            out.append(Plot("ppl", lines, language=self.label(key)))
        return out


@dataclass(frozen=True)
class HarmfulModel:
    """One language's harmful model and what its card (or the job) says about scoring with it."""

    model: str
    score: str
    reference: str | None
    threshold: float | None  # the card's calibrated threshold of `score`
    guard: dict | None  # the card's out-of-domain levels (curate.harmful.guard_levels); None: no guard

    @classmethod
    def of(cls, model: str, config: HarmfulConfig) -> HarmfulModel:
        card = json.loads(storage.read_text(storage.join(storage.as_location(model), CARD)))
        card = card.get("thresholds", {}).get("harmful", {})
        kind = config.score or card.get("default", "perplexity")
        if kind not in calibrate.SCORES:
            raise ValueError(f"harmful score must be one of {calibrate.SCORES}, got {kind!r}")
        contrastive = kind == "contrastive"
        reference = config.reference or (card.get("contrastive", {}).get("reference") if contrastive else None)
        if contrastive and not reference:
            raise ValueError(
                f"the contrastive harmful score of {model} needs a reference model: "
                "set `reference` or calibrate with one"
            )
        threshold = card.get(kind, {}).get("threshold")
        if config.threshold == "card" and threshold is None:
            raise ValueError(
                f"{model} has no calibrated {kind} threshold: run `curate kenlm calibrate` or set `threshold`"
            )
        return cls(model, kind, reference, threshold, card.get("guard") if config.guard else None)


class HarmfulFilter(Routed):
    """Harmful-content perplexity: a model trained only on harmful text gives harmful documents
    a *low* perplexity. Optionally contrasted with a benign model of the same genre. The guard
    abstains on text the harmful model itself finds unfamiliar (another language, another genre):
    the contrastive score of two models that both have never seen such text says little."""

    name = "harmful"
    columns = ("harmful_ppl", "harmful_ref_ppl", "harmful_score", "harmful_guard_margin", "harmful_familiar")
    models = ("model", "models", "reference")
    config: HarmfulConfig

    def __init__(self, config: HarmfulConfig):
        super().__init__(config)
        self.harm = {key: HarmfulModel.of(path, config) for key, path in self.by_language.items()}
        self.lms: dict[str, tuple[LanguageModel, LanguageModel | None, LanguageModel | None]] = {}

    def setup(self) -> None:
        def load(path: str | None) -> LanguageModel | None:
            return LanguageModel(path) if path else None

        self.lms = {
            k: (load(h.model), load(h.reference), load((h.guard or {}).get("reference"))) for k, h in self.harm.items()
        }

    def score(self, texts: list[str], language: list[str] | None = None) -> dict[str, np.ndarray]:
        assert self.lms, "setup() loads the models"
        out = {c: np.full(len(texts), np.nan) for c in self.columns}
        out["harmful_familiar"] = np.zeros(len(texts), dtype=bool)
        for key, rows in self.groups(len(texts), language).items():
            harm, reference, guard = self.lms[key]
            scores = harmfulness(harm, reference, [texts[i] for i in rows], guard)
            scores["harmful_familiar"] = familiar(scores, self.harm[key].guard)
            for column, values in scores.items():
                out[column][rows] = values
        return out

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        fitted = {}
        for key, h in self.harm.items():
            threshold = self.config.threshold
            if threshold == "card":
                threshold, how = h.threshold, "calibrated (model card)"
            elif threshold == "valley":
                values = self.of_key(scores, key)["harmful_score"].drop_nulls().to_numpy()
                t = calibrate.valley(values)
                threshold = t if h.score == "contrastive" else 10.0 ** (-t)
                how = f"valley of this run's histogram ({len(values)} documents)"
            else:
                threshold, how = float(threshold), "given"
            column = "harmful_score" if h.score == "contrastive" else "harmful_ppl"
            guard = {k: v for k, v in h.guard.items() if k in ("max_harmful_ppl", "min_margin")} if h.guard else None
            fitted[key] = {"score": h.score, "column": column, "threshold": threshold, "threshold_from": how}
            fitted[key]["guard"] = guard
        return self.pack(fitted)

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        key = self.key()
        flagged, guarded = pl.lit(False), pl.lit(False)
        reason = pl.when(key.is_null()).then(self.unmodeled("harmful"))
        for k, p in self.per_key(params).items():
            t, here = p["threshold"], key == k
            if p["score"] == "contrastive":
                over = pl.col("harmful_score") > t
                how = "contrastive score {} > {} (harmful model vs reference)"
                text = pl.format(how, pl.col("harmful_score").round(3), pl.lit(round(t, 3)))
            else:
                over = pl.col("harmful_ppl") < t
                how = "harmful_ppl {} < {} (harmful-only model)"
                text = pl.format(how, pl.col("harmful_ppl").round(1), pl.lit(round(t, 1)))
            familiar = pl.col("harmful_familiar")
            hit = (here & over & familiar).fill_null(False)
            flagged, guarded = flagged | hit, guarded | (here & over & ~familiar).fill_null(False)
            reason = reason.when(hit).then(text)
        reason = reason.otherwise(None).alias("_reason")
        return df.with_columns(flagged.alias("is_harmful"), guarded.alias("harmful_guarded"), reason)

    def plots(self, params: dict[str, Any]) -> list[Plot]:
        return [
            Plot(p["column"], {"threshold": p["threshold"]}, log=p["score"] == "perplexity", language=self.label(k))
            for k, p in self.per_key(params).items()
        ]
