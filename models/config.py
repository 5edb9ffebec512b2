"""The training config: the `train:` section of a job and the file `curate train --config`
reads, validated like job specs (an unknown key or a wrong type is an error naming the key)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from curate.registry import Strict
from curate.settings import load_settings


class TrainConfig(Strict):
    arch: str = "transformer"
    size: str = Field("tiny", description="a named size of the architecture (models/registry.py)")
    model: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the size's config (vocab_size comes from the data)"
    )
    seq_len: int = Field(128, ge=1)
    batch_size: int = Field(16, ge=1, description="sequences per optimizer step, all workers and micro-batches")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    steps: int = Field(200, ge=1, description="optimizer steps; the schedule spans them")
    optimizer: Literal["adamw", "swan"] = Field(
        "adamw", description="swan: SWAN on the 2-D weights of blocks, AdamW on the rest"
    )
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine ends at lr * min_lr_ratio")
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm; null: no clipping")
    swan_ns_steps: int = Field(10, ge=1, description="Newton-Schulz iterations of SWAN's whitening")
    seed: int = 0
    eval_every: int = Field(50, ge=1, description="validation loss every N steps (and at the end)")
    eval_batches: int = Field(4, ge=1, description="validation batches, the same ones each time")
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    compile: bool = Field(False, description="torch.compile the model")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = Field(1, ge=1, description="data-parallel Ray Train workers (DDP); 1: this process, no Ray")

    @model_validator(mode="after")
    def _known_model(self) -> TrainConfig:
        from models.registry import check_config_keys, model_configs  # torch: only when a config is given

        sizes = model_configs(self.arch)  # raises for an unknown architecture
        if self.size not in sizes:
            raise ValueError(f"unknown size {self.size!r} of {self.arch}; known: {', '.join(sizes)}")
        check_config_keys(self.arch, self.model)
        if self.batch_size % (self.workers * self.grad_accum):
            parts = self.workers * self.grad_accum
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of workers x grad_accum ({parts})")
        return self

    def architecture_config(self, vocab_size: int) -> dict:
        """The architecture's config: the named size, the overrides, the data's vocabulary and seq_len."""
        from models.registry import model_configs

        return {**model_configs(self.arch)[self.size], "seq_len": self.seq_len, "vocab_size": vocab_size, **self.model}

    @property
    def micro_batch(self) -> int:
        """Sequences per worker per forward pass."""
        return self.batch_size // (self.workers * self.grad_accum)

    def run_hash(self) -> str:
        """What decides the trained weights (not how often it logs, evaluates or checkpoints, nor
        how many workers share the batch): a checkpoint resumes only under the same hash."""
        skip = {"eval_every", "eval_batches", "checkpoint_every", "log_every", "workers", "device", "compile"}
        data = self.model_dump(mode="json", exclude=skip)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def load_train_config(path: str | Path | None, **overrides: Any) -> TrainConfig:
    """A YAML/JSON training config file (or none) with command-line overrides on top."""
    return load_settings(path, TrainConfig, "training config", overrides)
