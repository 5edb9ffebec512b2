"""Curation stages. Scoring is split from filtering (as Dolma does), because a filter's
threshold can depend on the whole run (CCNet's percentile buckets):

- `score(texts)` runs in Ray actors, after `setup()` has loaded the models once per actor, and
  returns new columns;
- `fit(scores)` runs once on the driver over the scores of the documents that reach the stage
  and returns the run-wide parameters (cut-offs, thresholds), recorded in the manifest;
- `decide(df, params)` adds derived columns and a `_reason` column: why the document is
  rejected, null to keep it;
- `synthesize(kept)` may return new documents made from the kept ones (WRAP rephrases).

`plan()` puts the scoring into the Ray Data plan; the default is an actor pool running `score`.
A stage whose work is not per-batch scoring (an LLM processor from ray.data.llm) overrides it,
keeping one output row per input row, every input column, and quarantined rows (`error` set)
untouched.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curate import calibrate
from curate.lm import CARD, LanguageModel, perplexity


class Stage:
    name: str
    score_columns: tuple[str, ...]

    def setup(self) -> None:
        """Load models; called once per actor."""

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        return {}

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        raise NotImplementedError

    def synthesize(self, kept: pl.DataFrame) -> pl.DataFrame | None:
        return None

    def serving(self) -> contextlib.AbstractContextManager:
        """What must run while the plan runs (the local LLM server); the runner enters it."""
        return contextlib.nullcontext()

    def plan(self, ds, workers: int, batch_docs: int, cpu_share: float):
        """Append this stage to a Ray Data plan (`ds` is a ray.data.Dataset)."""
        import ray

        return ds.map_batches(
            StageActor,
            fn_constructor_kwargs={"stage": self},
            batch_size=batch_docs,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpu_share,
        )


class StageActor:
    """Ray actor: holds one stage with its models loaded, scores the valid rows of each batch."""

    def __init__(self, stage: Stage):
        self.stage = stage
        stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        valid = pc.is_null(batch["error"]).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(valid)
        texts = batch["text"].take(pa.array(rows)).to_pylist()
        scores = self.stage.score(texts) if texts else {c: np.empty(0) for c in self.stage.score_columns}
        for name, values in scores.items():
            full = np.zeros(len(batch), dtype=np.asarray(values).dtype)
            full[rows] = values
            batch = batch.append_column(name, pa.array(full, mask=~valid))
        seconds = (time.perf_counter() - t0) / max(len(batch), 1)
        return batch.append_column(f"_seconds_{self.stage.name}", pa.array(np.full(len(batch), seconds)))


def _card(model_dir: str) -> dict:
    return json.loads((Path(model_dir) / CARD).read_text())


class PerplexityStage(Stage):
    """CCNet quality perplexity under a model of clean text, with head/middle/tail buckets."""

    name = "perplexity"
    score_columns = ("ppl_log10", "ppl_tokens", "ppl")

    def __init__(self, model: str, percentiles=(30.0, 60.0), cutoffs=None, keep=("head", "middle", "tail"), max_ppl=None):
        self.model_dir = model
        self.percentiles = tuple(percentiles)
        self.cutoffs = tuple(cutoffs) if cutoffs else None
        self.keep = tuple(keep)
        self.max_ppl = max_ppl
        self.lm: LanguageModel | None = None

    def setup(self) -> None:
        self.lm = LanguageModel(self.model_dir)

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        assert self.lm is not None, "setup() loads the model"
        log10_sum, tokens = self.lm.score_many(texts)
        return {"ppl_log10": log10_sum, "ppl_tokens": tokens, "ppl": perplexity(log10_sum, tokens)}

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        if self.cutoffs:
            head, middle = self.cutoffs
            how = "given"
        else:
            ppl = scores["ppl"].to_numpy()
            head, middle = (float(np.percentile(ppl, p)) for p in self.percentiles) if len(ppl) else (0.0, 0.0)
            how = f"percentiles {self.percentiles[0]:g}/{self.percentiles[1]:g} of this run ({len(ppl)} documents)"
        return {"cutoffs": {"head": head, "middle": middle}, "cutoffs_from": how, "keep": list(self.keep), "max_ppl": self.max_ppl}

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        head, middle = params["cutoffs"]["head"], params["cutoffs"]["middle"]
        bucket = pl.when(pl.col("ppl") < head).then(pl.lit("head")).when(pl.col("ppl") < middle).then(pl.lit("middle")).otherwise(pl.lit("tail"))
        df = df.with_columns(bucket.alias("ppl_bucket"))
        reason = pl.when(~pl.col("ppl_bucket").is_in(list(self.keep))).then(
            pl.format("ppl {} in bucket {} (keeping {})", pl.col("ppl").round(1), pl.col("ppl_bucket"), pl.lit(",".join(self.keep)))
        )
        if self.max_ppl is not None:
            reason = reason.when(pl.col("ppl") > self.max_ppl).then(pl.format("ppl {} > max_ppl {}", pl.col("ppl").round(1), pl.lit(self.max_ppl)))
        return df.with_columns(reason.otherwise(None).alias("_reason"))


class HarmfulStage(Stage):
    """Harmful-content perplexity: a model trained only on harmful text gives harmful documents
    a *low* perplexity. Optionally contrasted with a benign model of the same genre."""

    name = "harmful"
    score_columns = ("harmful_ppl", "harmful_ref_ppl", "harmful_score")

    def __init__(self, model: str, reference: str | None = None, score: str | None = None, threshold: float | str = "card"):
        card = _card(model).get("thresholds", {}).get("harmful", {})
        self.model_dir = model
        self.score_kind = score or card.get("default", "perplexity")
        if self.score_kind not in calibrate.SCORES:
            raise ValueError(f"harmful score must be one of {calibrate.SCORES}, got {self.score_kind!r}")
        self.reference_dir = reference or (card.get("contrastive", {}).get("reference") if self.score_kind == "contrastive" else None)
        if self.score_kind == "contrastive" and not self.reference_dir:
            raise ValueError("the contrastive harmful score needs a reference model: set `reference` or calibrate with one")
        self.threshold = threshold
        self.card_threshold = card.get(self.score_kind, {}).get("threshold")
        if threshold == "card" and self.card_threshold is None:
            raise ValueError(f"{model} has no calibrated {self.score_kind} threshold: run `curate lm calibrate` or set `threshold`")
        self.lm: LanguageModel | None = None
        self.reference: LanguageModel | None = None

    def setup(self) -> None:
        self.lm = LanguageModel(self.model_dir)
        self.reference = LanguageModel(self.reference_dir) if self.reference_dir else None

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        assert self.lm is not None, "setup() loads the model"
        return harmfulness(self.lm, self.reference, texts)

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        col = "harmful_score" if self.score_kind == "contrastive" else "harmful_ppl"
        if self.threshold == "card":
            threshold, how = self.card_threshold, "calibrated (model card)"
        elif self.threshold == "valley":
            h = scores["harmful_score"].to_numpy()
            t = calibrate.valley(h)
            threshold = t if self.score_kind == "contrastive" else 10.0 ** (-t)
            how = f"valley of this run's histogram ({len(h)} documents)"
        else:
            threshold, how = float(self.threshold), "given"
        return {"score": self.score_kind, "column": col, "threshold": threshold, "threshold_from": how}

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        t = params["threshold"]
        if params["score"] == "contrastive":
            flagged = pl.col("harmful_score") > t
            text = pl.format("contrastive score {} > {} (harmful model vs reference)", pl.col("harmful_score").round(3), pl.lit(round(t, 3)))
        else:
            flagged = pl.col("harmful_ppl") < t
            text = pl.format("harmful_ppl {} < {} (harmful-only model)", pl.col("harmful_ppl").round(1), pl.lit(round(t, 1)))
        return df.with_columns(flagged.alias("is_harmful"), pl.when(flagged).then(text).otherwise(None).alias("_reason"))


def harmfulness(lm: LanguageModel, reference: LanguageModel | None, texts: list[str]) -> dict[str, np.ndarray]:
    """Perplexities and the harmfulness score (higher = more harmful): the contrastive
    log10-probability difference when a reference is given, else minus log10 perplexity."""
    log10_sum, tokens = lm.score_many(texts)
    harm_lp = log10_sum / tokens  # per-token log10 probability, = -log10 ppl
    out = {"harmful_ppl": perplexity(log10_sum, tokens)}
    if reference is not None:
        ref_sum, ref_tokens = reference.score_many(texts)
        ref_lp = ref_sum / ref_tokens
        out["harmful_ref_ppl"] = perplexity(ref_sum, ref_tokens)
        out["harmful_score"] = harm_lp - ref_lp
    else:
        out["harmful_ref_ppl"] = np.full(len(texts), np.nan)
        out["harmful_score"] = harm_lp
    return out


def build_stage(kind: str, config: dict[str, Any]) -> Stage:
    if kind in ("rephrase", "rate", "select"):
        from curate.llm import stages as llm  # imports this module: load it only when asked

        return {"rephrase": llm.RephraseStage, "rate": llm.RateStage, "select": llm.SelectStage}[kind](**config)
    return {"perplexity": PerplexityStage, "harmful": HarmfulStage}[kind](**config)
