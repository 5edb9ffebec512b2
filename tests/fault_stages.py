"""A slow stage for the fault tests: a run that lasts long enough to be interrupted or killed."""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from curate.registry import Strict
from curate.stages import Resources, Stage


class SleepyConfig(Strict):
    seconds_per_doc: float = Field(0.05, ge=0)


class Sleepy(Stage):
    """Adds the text length after sleeping a while per document; rejects nothing."""

    name = "sleepy"
    columns = ("chars",)
    resources = Resources(cpus=0.25, concurrency=1)
    config: SleepyConfig

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        time.sleep(self.config.seconds_per_doc * len(texts))
        return {"chars": np.array([len(t) for t in texts], np.int64)}
