"""The job spec: a YAML file validated into these models. Unknown keys and wrong types are
errors that name the key path (`stages.1.perplexity.keep.0: ...`)."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializationInfo, create_model, model_serializer, model_validator

from curate import registry
from curate.registry import Strict
from curate.settings import SettingsError, load_settings
from models.config import TrainConfig


class Input(Strict):
    path: str
    source: str | None = Field(
        None,
        description="source name for every document of this input; default: the record's `source`, else the file name",
    )


class Calibration(Strict):
    labeled: list[str] = Field(
        description="labelled files; their val split picks the threshold, their test split measures it"
    )
    label_field: str = "harmful"
    reference: str | None = Field(
        None, description="benign reference model (a name under `models` or a path) for the contrastive score"
    )
    guard: str | None = Field(
        None, description="benign model of the filtered genre (e.g. web pages) for the out-of-domain guard"
    )
    web: list[str] | None = Field(
        None, description="unlabelled pages of the filtered genre: the guard is fitted on their val split, reported"
    )
    web_flagged: float = Field(0.02, ge=0, lt=1, description="share of the `web` val pages the guard lets be flagged")


class TrainingInput(Strict):
    path: str
    where: dict[str, Any] = Field(default_factory=dict, description="keep documents whose fields equal these values")
    split: Literal["train", "val", "test"] | None = Field(None, description="keep one part of the fixed id split")


class ModelTraining(Strict):
    input: list[str | TrainingInput] = Field(min_length=1, description="paths, or {path, where, split}")
    order: int = Field(5, ge=2, le=9)
    vocab: int = Field(65536, ge=100)
    calibrate: Calibration | None = None

    def sources(self) -> list[dict]:
        return [TrainingInput(path=i).model_dump() if isinstance(i, str) else i.model_dump() for i in self.input]


class StageEntry(Strict):
    """One item of `stages:`, a mapping with exactly one key: the stage's kind (see
    `curate.registry`), whose settings are validated by that kind's model."""

    kind: str
    config: Strict

    @model_validator(mode="wrap")
    @classmethod
    def _one(cls, data: Any, handler: Any) -> StageEntry:
        if isinstance(data, StageEntry):
            return data
        kinds = registry.kinds()
        given = _entry_model(tuple((k, registry.STAGES[k]) for k in kinds)).model_validate(data)
        set_ = [k for k in kinds if getattr(given, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"each stage is a mapping with exactly one key: {', '.join(kinds)}")
        return cls.model_construct(kind=set_[0], config=getattr(given, set_[0]))

    @model_serializer(mode="plain")
    def _dump(self, info: SerializationInfo) -> dict[str, Any]:
        return {self.kind: self.config.model_dump(mode=info.mode, exclude_none=info.exclude_none)}


@functools.cache
def _entry_model(entries: tuple[tuple[str, registry.StageKind], ...]) -> type[Strict]:
    """A model with one optional field per registered kind, so errors name `stages.N.<kind>.<key>`."""
    fields: dict[str, Any] = {kind: (registry.config_class(kind) | None, None) for kind, _ in entries}
    return create_model("Stage", __base__=Strict, **fields)


class IndexSpec(Strict):
    tokenizer: str | None = Field(
        None, description="a tokenizer.json; default: train a byte-level BPE on the kept documents"
    )
    vocab: int = Field(32000, ge=257)
    shard_tokens: int | None = Field(
        None, ge=1, description="tokens per shard; default: one shard per CPU of the Ray cluster (indexes/build.py)"
    )
    dedup_min_tokens: int | None = Field(
        None, ge=1, description="exact-substring dedup: cut repeated spans of at least this many tokens"
    )


class Job(Strict):
    name: str
    inputs: list[Input] = Field(min_length=1)
    output: str | None = Field(None, description="default: out/<name>")
    models_dir: str = Field("out/kenlm", description="KenLM model directories (data, outside the source tree)")
    models: dict[str, ModelTraining] = Field(default_factory=dict)
    stages: list[StageEntry] = Field(default_factory=list)
    index: IndexSpec | None = Field(
        None, description="build an infini-gram index of the kept documents (the last step)"
    )
    train: TrainConfig | None = Field(None, description="then train a language model on OUT/index into OUT/train")
    shard_docs: int = Field(1000, ge=1, description="documents per shard: the unit of work and of resume")
    batch_docs: int = Field(256, ge=1)
    max_doc_bytes: int = Field(1_000_000, ge=1)
    workers: int | None = Field(None, ge=1, description="actors per stage; default: the cluster's CPUs")
    stage_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources each stage actor asks for, e.g. {stages: 0.01}: the stages then run "
        "only on nodes started with `ray start --resources='{\"stages\": 1}'` (docs/scale.md)",
    )
    report_samples: int = Field(3, ge=0)
    duplicate_ids: Literal["reject", "keep", "error"] = Field(
        "reject",
        description="an id seen earlier in the run: reject the later copy (stage `ids`), keep it, or stop the run",
    )

    def config_hash(self) -> str:
        """Everything that decides the output, not where it goes."""
        # training resumes under its own check (TrainConfig.run_hash), so `train` may change; where
        # the work runs (`workers`, `stage_resources`) does not change the output
        data = self.model_dump(
            mode="json", exclude={"output", "workers", "stage_resources", "train"}, exclude_none=True
        )
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def output_dir(self) -> Path:
        return Path(self.output or f"out/{self.name}")

    @model_validator(mode="after")
    def _train_needs_index(self) -> Job:
        if self.train and not self.index:
            raise ValueError("`train` trains on the job's index: add an `index:` section")
        return self


class SpecError(SettingsError):
    """An invalid job file; the message lists every problem with its key path."""


def load_job(path: str | Path) -> Job:
    return load_settings(path, Job, "job", error=SpecError)
