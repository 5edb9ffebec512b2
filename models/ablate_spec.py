"""The `curate ablate` job file, validated like `curate run` jobs: an unknown key or a wrong type
is an error naming the key path. See models/ablate.py for what each part drives."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.settings import load_settings
from models.config import TrainConfig


class AblateSpecError(ValueError):
    """An invalid ablation job file; the message lists every problem with its key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PartitionSpec(_Strict):
    inputs: list[str] = Field(min_length=1, description="documents to partition (JSON Lines or Parquet, e.g. kept/)")
    by: str | None = Field("source", description="the column whose value names a document's partition")
    mapping: str | None = Field(None, description="JSON file {document id: partition}, instead of `by`")
    only: list[str] | None = Field(None, description="keep these partitions (default: every value found)")
    min_docs: int = Field(5, ge=1, description="a partition with fewer documents is an error")

    @model_validator(mode="after")
    def _one_rule(self) -> PartitionSpec:
        if self.mapping:
            self.by = None
        if not self.by and not self.mapping:
            raise ValueError("give `by` (a column) or `mapping` (a JSON file of id -> partition)")
        return self


class MixtureSpec(_Strict):
    sizes: list[int] = Field([2, 3], min_length=1, description="numbers of partitions per candidate mixture")
    max_mixtures: int = Field(20, ge=1, description="budget of uniform candidates (a seeded sample beyond it)")
    real: int = Field(6, ge=0, description="candidates also trained for real on the union, to validate the proxy")
    seed: int = 0
    weighted: list[dict[str, float]] = Field(
        default_factory=list, description="extra candidates {partition: weight}: weighted merges"
    )
    macro: list[list[list[str]]] = Field(
        default_factory=list, description="extra candidates as groups of partitions: the average of group averages"
    )

    @model_validator(mode="after")
    def _sizes(self) -> MixtureSpec:
        if any(s < 1 for s in self.sizes):
            raise ValueError(f"sizes must be at least 1, got {self.sizes}")
        return self


class EvalSpec(_Strict):
    split: Literal["test", "val"] = "test"
    windows: int = Field(64, ge=1, description="windows of seq_len tokens per evaluation set (fewer if it is short)")
    extra: dict[str, list[str]] = Field(
        default_factory=dict, description="more evaluation sets: name -> documents (their held-out split is used)"
    )


class AblateSpec(_Strict):
    name: str = "ablate"
    output: str | None = Field(None, description="output directory (default out/NAME); the pool lives in it")
    base: list[str] = Field(min_length=1, description="documents the seed model is trained on")
    tokenizer: str | None = Field(None, description="tokenizer.json to use (default: a BPE trained on `base`)")
    vocab: int = Field(4000, ge=257, description="vocabulary of the trained tokenizer")
    seed_train: dict[str, Any] = Field(default_factory=dict, description="training config of the seed model")
    partition_train: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides for continued training (default: constant lr, no warm-up, as Na et al.)",
    )
    partitions: PartitionSpec
    mixtures: MixtureSpec = MixtureSpec()
    eval: EvalSpec = EvalSpec()
    retries: int = Field(2, ge=0, description="retries of a failed training before the run fails")
    compile_kernels: bool = Field(
        False, description="torch.compile the CPU kernels (pays off only for long runs; see kernels/dispatch.py)"
    )

    @model_validator(mode="after")
    def _configs(self) -> AblateSpec:
        self.seed_config()
        self.partition_config()
        return self

    def seed_config(self) -> TrainConfig:
        return TrainConfig.model_validate({"workers": 1, **self.seed_train})

    def partition_config(self, steps: int | None = None) -> TrainConfig:
        """Continued training: the seed's config, a constant learning rate, the partition overrides;
        `steps` scales the budget (a union of k partitions trains k times the steps)."""
        data = {**self.seed_config().model_dump(), "warmup_steps": 0, "min_lr_ratio": 1.0, **self.partition_train}
        if steps is not None:
            data["steps"] = steps
        return TrainConfig.model_validate(data)

    def output_dir(self) -> Path:
        return Path(self.output or f"out/{self.name}")


def load_ablate_spec(path: str | Path) -> AblateSpec:
    return load_settings(path, AblateSpec, "ablation job", error=AblateSpecError)
