"""DataMan's selection (`data_tools/select_subset.py`), as a run-wide fit and a per-row decision.

Strategies: `top_k` by one criterion, `sum` (top-k by the sum of all 14 ratings), `overall_score`
(uniform sampling among documents with Overall Score `score`, 5 by default) and `uniform`. With
`stratify`, the token budget is split over sources in proportion to their token share, then
within each source over DataMan domains in proportion to theirs; each stratum takes its best
documents until its budget is reached. Ties, and the uniform strategies, are ordered by a hash of
the document id and the seed, so the choice is fixed for a job. The fit keeps one cut-off per
stratum (the last document taken), so the decision needs no list of ids.

Deviation: DataMan upsamples a short stratum with replacement; curate never duplicates a
document (it would break the accounting), so a short stratum gives what it has.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from curate.llm.config import SelectConfig
from curate.llm.prompts import CRITERIA

SCORES = [f"dataman_{c}" for c in CRITERIA]


def _metric(config: SelectConfig) -> pl.Expr:
    if config.strategy == "top_k":
        return pl.col(f"dataman_{config.criterion}").cast(pl.Float64)
    if config.strategy == "sum":
        return pl.sum_horizontal([pl.col(c).cast(pl.Float64) for c in SCORES])
    return pl.lit(0.0)  # uniform strategies: the hash order alone decides


def _prepared(df: pl.DataFrame, config: SelectConfig) -> pl.DataFrame:
    stratum = pl.format("{}/{}", pl.col("source"), pl.col("dataman_domain")) if config.stratify else pl.lit("all")
    return df.with_columns(
        _metric=_metric(config),
        _tie=pl.col("id").hash(seed=config.seed),
        _stratum=stratum,
        _rated=pl.col("dataman_overall").is_not_null(),
        _eligible=pl.col("dataman_overall").is_not_null()
        & (pl.col("dataman_overall") == config.score if config.strategy == "overall_score" else pl.lit(True)),
    )


def fit(scores: pl.DataFrame, config: SelectConfig) -> dict[str, Any]:
    missing = [c for c in ("dataman_overall", "dataman_domain", "dataman_tokens") if c not in scores.columns]
    if missing:
        raise ValueError(f"select needs a rate stage before it (missing {missing})")
    df = _prepared(scores, config)
    rated_tokens = int(df.filter(pl.col("_rated"))["dataman_tokens"].sum())
    budget = config.budget_tokens or round(config.budget_fraction * rated_tokens)
    pool = df.filter(pl.col("_eligible"))
    pool_tokens = int(pool["dataman_tokens"].sum())
    cutoffs = {}
    for (stratum,), part in pool.group_by("_stratum", maintain_order=True):
        share = budget * int(part["dataman_tokens"].sum()) / pool_tokens if pool_tokens else 0
        ranked = part.sort(["_metric", "_tie"], descending=[True, False])
        before = ranked["dataman_tokens"].cum_sum() - ranked["dataman_tokens"]
        taken = ranked.filter(before < share)
        if len(taken):
            last = taken.row(-1, named=True)
            cutoffs[stratum] = {
                "metric": last["_metric"],
                "tie": last["_tie"],
                "budget": round(share),
                "documents": len(taken),
                "tokens": int(taken["dataman_tokens"].sum()),
            }
    return {
        "strategy": config.strategy, **({"criterion": config.criterion} if config.strategy == "top_k" else {}),
        **({"score": config.score} if config.strategy == "overall_score" else {}),
        "budget_tokens": budget, "rated_tokens": rated_tokens, "eligible_documents": len(pool),
        "selected_documents": sum(c["documents"] for c in cutoffs.values()),
        "selected_tokens": sum(c["tokens"] for c in cutoffs.values()), "strata": cutoffs,
    }  # fmt: skip


def decide(df: pl.DataFrame, config: SelectConfig, params: dict[str, Any]) -> pl.DataFrame:
    df = _prepared(df, config)
    strata = params["strata"]
    cut = pl.DataFrame(
        {
            "_stratum": list(strata),
            "_cut_metric": [c["metric"] for c in strata.values()],
            "_cut_tie": [c["tie"] for c in strata.values()],
        },
        schema={"_stratum": pl.String, "_cut_metric": pl.Float64, "_cut_tie": pl.UInt64},
    )
    df = df.join(cut, on="_stratum", how="left")
    chosen = (pl.col("_metric") > pl.col("_cut_metric")) | (
        (pl.col("_metric") == pl.col("_cut_metric")) & (pl.col("_tie") <= pl.col("_cut_tie"))
    )
    what = {
        "top_k": f"top-k by {config.criterion}",
        "sum": "top-k by the sum of the 14 ratings",
        "overall_score": f"uniform among Overall Score {config.score}",
        "uniform": "uniform",
    }[config.strategy]
    reason = (
        pl.when(~pl.col("_rated"))
        .then(pl.lit("not rated by DataMan: ").add(pl.col("dataman_error").fill_null("no rating")))
        .when(~pl.col("_eligible"))
        .then(pl.format("Overall Score {} is not {}", pl.col("dataman_overall"), pl.lit(config.score)))
        .when(~chosen.fill_null(False))
        .then(
            pl.format(
                "not selected ({}, stratum {}, budget {} tokens)",
                pl.lit(what), pl.col("_stratum"), pl.lit(params["budget_tokens"]),
            )
        )
        .otherwise(None)
    )  # fmt: skip
    return df.with_columns(_reason=reason).drop(
        ["_metric", "_tie", "_stratum", "_rated", "_eligible", "_cut_metric", "_cut_tie"]
    )
