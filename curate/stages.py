"""The stage contract. Scoring is split from filtering (as Dolma does), because a filter's
threshold can depend on the whole run (CCNet's percentile buckets):

- `score(texts)` runs in Ray actors, after `setup()` has loaded the models once per actor, and
  returns the `columns` it declares (plus, by name, the earlier stages' columns it `inputs`);
- `fit(scores)` runs once on the driver over the scores of the documents that reach the stage
  and returns the run-wide parameters (cut-offs, thresholds), recorded in the manifest;
- `decide(df, params)` adds derived columns and a `_reason` column: why the document is
  rejected, null to keep it (the default keeps everything);
- `synthesize(kept)` may return new documents made from the kept ones (WRAP rephrases);
- `plots(params)` names the columns the report draws as histograms, with the fitted thresholds.

A stage is built from its validated settings (`config`, see `curate.registry`). `models` names the
settings that refer to a KenLM model (a name under the job's `models` or a path): the runner
resolves them to directories first. `resources` says what each of its Ray workers asks for.

`plan()` puts the scoring into the Ray Data plan; the default is an actor pool running `score`
(none for a stage that declares no columns: it decides on earlier stages' columns).
A stage whose work is not per-batch scoring (an LLM processor from ray.data.llm) overrides it,
keeping one output row per input row, every input column, and quarantined rows (`error` set)
untouched.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel


@dataclass(frozen=True)
class Resources:
    """What each Ray worker of a stage asks for. `cpus` None: an equal share of a core with the
    reads and the other stages (Ray's CPU counts are logical, so no stage starves the others of
    a slot); `concurrency` None: the job's `workers` actors. `custom`: Ray custom resources, which
    place the workers on the nodes that offer them (`ray start --resources='{"stages": 8}'`)."""

    cpus: float | None = None
    gpus: float = 0.0
    concurrency: int | None = None
    custom: dict[str, float] = field(default_factory=dict)

    def resolve(self, share: float, workers: int, custom: dict[str, float] | None = None) -> Resources:
        """No None left; the job's `custom` resources (`stage_resources`) under the stage's own."""
        cpus = self.cpus if self.cpus is not None else share
        return Resources(cpus, self.gpus, self.concurrency or workers, {**(custom or {}), **self.custom})

    def ray_options(self) -> dict[str, Any]:
        return {
            "num_cpus": self.cpus,
            **({"num_gpus": self.gpus} if self.gpus else {}),
            **({"resources": dict(self.custom)} if self.custom else {}),
        }


@dataclass(frozen=True)
class Plot:
    """A histogram of one score column in the report, with the fitted thresholds drawn."""

    column: str
    lines: dict[str, float] = field(default_factory=dict)
    log: bool = True  # draw log10 of the values (perplexities)
    language: str | None = None  # only the documents of this language (langid's `language` column)


class Stage:
    name: str
    columns: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # earlier stages' columns that score() reads (keyword arguments, one list each)
    models: ClassVar[tuple[str, ...]] = ()
    resources: Resources = Resources()

    def __init__(self, config: BaseModel):
        self.config = config

    def setup(self) -> None:
        """Load models; called once per actor."""

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"stage {self.name} scores nothing: it overrides plan()")

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        return {}

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        return df.with_columns(_reason=pl.lit(None, pl.String))

    def synthesize(self, kept: pl.DataFrame) -> pl.DataFrame | None:
        return None

    def plots(self, params: dict[str, Any]) -> list[Plot]:
        return []

    def serving(self) -> contextlib.AbstractContextManager:
        """What must run while the plan runs (the local LLM server); the runner enters it."""
        return contextlib.nullcontext()

    def plan(self, ds, batch_docs: int, resources: Resources):
        """Append this stage to a Ray Data plan (`ds` is a ray.data.Dataset); `resources` are
        resolved (no None left). A stage without score columns only decides: nothing to add."""
        import ray

        if not self.columns:
            return ds
        return ds.map_batches(
            StageActor,
            fn_constructor_kwargs={"stage": self},
            batch_size=batch_docs,
            batch_format="pyarrow",
            # one block (shard) at a time per actor: with Ray's default of two, a busy actor holds the
            # next shard while another sits idle at the end of the run (seen: 2.3 s of 23 s on 2 workers)
            compute=ray.data.ActorPoolStrategy(size=resources.concurrency, max_tasks_in_flight_per_actor=1),
            **resources.ray_options(),
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
        given = {c: batch[c].take(pa.array(rows)).to_pylist() for c in self.stage.inputs}
        scores = self.stage.score(texts, **given) if texts else {c: np.empty(0) for c in self.stage.columns}
        for name, values in scores.items():
            full = np.zeros(len(batch), dtype=np.asarray(values).dtype)
            full[rows] = values
            unscored = ~valid | np.isnan(full) if full.dtype.kind == "f" else ~valid  # NaN: not scored, stored as null
            batch = batch.append_column(name, pa.array(full, mask=unscored))
        seconds = (time.perf_counter() - t0) / max(len(batch), 1)
        return batch.append_column(f"_seconds_{self.stage.name}", pa.array(np.full(len(batch), seconds)))
