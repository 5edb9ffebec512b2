"""The stage registry: a job's stage `kind` -> its settings (a pydantic model) and its class.

Entries name both as "module:attribute" and are imported on first use, so validating a job
imports the settings' modules only (pydantic), never a stage's models, KenLM or Ray. The spec
validates `stages:` against it, the runner builds stages from it and the report draws what the
built stages declare (`Stage.columns`, `plots`, `models`, `resources`). A new stage is one
module (settings + a `Stage` subclass) and one `register` call or line in `STAGES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from curate.stages import Stage


class Strict(BaseModel):
    """Base of every job setting: an unknown key is an error that names its path."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class StageKind:
    config: str  # "module:Class" of the stage's settings (a Strict model)
    stage: str  # "module:Class" of the Stage subclass, built from validated settings


STAGES: dict[str, StageKind] = {
    "perplexity": StageKind("curate.perplexity.config:PerplexityConfig", "curate.perplexity.stages:PerplexityFilter"),
    "harmful": StageKind("curate.perplexity.config:HarmfulConfig", "curate.perplexity.stages:HarmfulFilter"),
    "rephrase": StageKind("curate.llm.config:RephraseConfig", "curate.llm.stages:RephraseStage"),
    "rate": StageKind("curate.llm.config:RateConfig", "curate.llm.stages:RateStage"),
    "select": StageKind("curate.llm.config:SelectConfig", "curate.llm.stages:SelectStage"),
    "langid": StageKind("curate.langid:LangidConfig", "curate.langid:LangidStage"),
}


def register(kind: str, config: str, stage: str) -> None:
    """Add (or replace) a stage kind; `config` and `stage` are "module:Class" paths."""
    STAGES[kind] = StageKind(config, stage)


def kinds() -> tuple[str, ...]:
    return tuple(STAGES)


def config_class(kind: str) -> type[Strict]:
    return _load(_entry(kind).config)


def stage_class(kind: str) -> type[Stage]:
    return _load(_entry(kind).stage)


def _entry(kind: str) -> StageKind:
    if kind not in STAGES:
        raise KeyError(f"unknown stage {kind!r}; the stages are: {', '.join(STAGES)}")
    return STAGES[kind]


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
