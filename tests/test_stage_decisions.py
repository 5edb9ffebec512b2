"""The order of filters: a document is charged to the first stage that rejects it, and a stage's
run-wide thresholds are fitted only on the documents that reach it."""

import polars as pl
import pytest

from curate.perplexity.config import PerplexityConfig
from curate.perplexity.stages import PerplexityFilter
from curate.stages import Stage
from pipelines.runner import _apply


class RejectIds(Stage):
    """A test double: rejects the listed ids."""

    name = "ids"

    def __init__(self, ids):
        self.ids = ids

    def decide(self, df, params):
        return df.with_columns(
            pl.when(pl.col("id").is_in(self.ids)).then(pl.lit("listed")).otherwise(None).alias("_reason")
        )


def _docs():
    return pl.DataFrame({"id": ["a", "b", "c", "d", "e"], "ppl": [10.0, 20.0, 30.0, 40.0, 1000.0]}).with_columns(
        reject_stage=pl.lit(None, pl.String), reject_reason=pl.lit(None, pl.String)
    )


def test_first_rejecting_stage_wins():
    perplexity = PerplexityFilter(PerplexityConfig(model="unused", cutoffs=(15, 35), keep=["head", "middle"]))
    df = _apply(_docs(), RejectIds(["d", "e"]), {})
    df = _apply(df, perplexity, perplexity.fit(df))
    assert df["reject_stage"].to_list() == [None, None, None, "ids", "ids"]  # d and e are tail too, but ids came first
    assert df["ppl_bucket"].to_list() == ["head", "middle", "middle", "tail", "tail"]


def test_percentiles_fit_on_documents_reaching_the_stage():
    perplexity = PerplexityFilter(PerplexityConfig(model="unused", percentiles=(50, 75)))
    df = _apply(_docs(), RejectIds(["e"]), {})
    params = perplexity.fit(df.filter(pl.col("reject_stage").is_null()))
    assert params["cutoffs"] == {"head": pytest.approx(25.0), "middle": pytest.approx(32.5)}  # e's 1000 is not counted


def test_max_ppl_reason():
    perplexity = PerplexityFilter(PerplexityConfig(model="unused", cutoffs=(100, 200), max_ppl=35))
    df = _apply(_docs(), perplexity, perplexity.fit(_docs()))
    assert df["reject_reason"].to_list()[3:] == [
        "ppl 40.0 > max_ppl 35.0",
        "ppl 1000.0 > max_ppl 35.0",
    ]  # settings are validated: a float
