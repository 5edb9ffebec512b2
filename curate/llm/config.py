"""Job settings of the LLM stages (validated like the rest of the job: unknown keys are errors)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from curate.llm.prompts import CRITERIA
from curate.registry import Strict


class Sampling(Strict):
    """Decoding settings, sent with every request and recorded in the manifest."""

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    typical_p: float = Field(
        1.0, gt=0, le=1, description="locally typical sampling mass (Meister et al.); 1 disables it"
    )
    max_tokens: int = Field(512, ge=1)
    seed: int = 1234


class GenerationBackend(Strict):
    """Where generation runs. `local`: curate starts a llama.cpp server on 127.0.0.1 (Gemma 3
    270M unless `llm` names another GGUF); `openai`: any OpenAI-compatible endpoint at `url`;
    `vllm`: vLLM inside the Ray workers (GPUs, the `vllm` extra)."""

    backend: Literal["local", "openai", "vllm"] = "local"
    llm: str | None = Field(
        None,
        description=(
            "local: a .gguf path (default Gemma 3 270M); openai: the served model name; vllm: a model id or path"
        ),
    )
    url: str | None = Field(None, description="openai: the base URL, e.g. http://127.0.0.1:8000/v1")
    tokenizer: str | None = Field(
        None, description="tokenizer.json or model id for chunk sizes; default: the GGUF's (local) or `llm`"
    )
    concurrency: int = Field(1, ge=1, description="request workers (HTTP) or engine replicas (vllm)")
    batch_size: int = Field(8, ge=1, description="requests per batch handed to a worker")
    max_retries: int = Field(3, ge=0, description="retries of a failed request, with exponential backoff")
    timeout_s: float = Field(600, gt=0, description="per request")
    n_ctx: int = Field(4096, ge=512, description="local: context window of the server")
    threads: int | None = Field(None, ge=1, description="local: CPU threads of the server (default: all)")

    @model_validator(mode="after")
    def _needs(self) -> GenerationBackend:
        if self.backend == "openai" and not (self.url and self.llm):
            raise ValueError("backend openai needs `url` and `llm` (the served model name)")
        if self.backend == "vllm" and not self.llm:
            raise ValueError("backend vllm needs `llm` (a model id or path)")
        return self


class RephraseConfig(GenerationBackend):
    styles: list[Literal["easy", "medium", "hard", "qa", "custom"]] = Field(["medium"], min_length=1)
    template: str | None = Field(None, description="the prompt of style `custom`, with a {text} placeholder")
    chunk_tokens: int = Field(300, ge=16, description="chunk size in the rephraser's tokens (WRAP: about 300)")
    sampling: Sampling = Sampling()
    ratio: tuple[int, int] = Field((1, 1), description="real:synthetic documents in the output (WRAP: 1:1)")

    @model_validator(mode="after")
    def _custom(self) -> RephraseConfig:
        if ("custom" in self.styles) != (self.template is not None):
            raise ValueError("style `custom` and `template` go together")
        if self.template is not None and "{text}" not in self.template:
            raise ValueError("the template needs a {text} placeholder")
        if self.ratio[0] < 1 or self.ratio[1] < 0:
            raise ValueError("ratio is real:synthetic with real >= 1 and synthetic >= 0")
        return self


class RateConfig(GenerationBackend):
    backend: Literal["local", "openai", "vllm", "distilled"] = "local"
    distilled: str | None = Field(None, description="backend distilled: the directory `curate rate distill` wrote")
    keep_tokens: int = Field(947, ge=1, description="longer documents keep their first and last this many tokens")
    max_tokens: int = Field(256, ge=16)
    retries: int = Field(1, ge=0, description="re-asks of an unparseable answer (sampled at retry_temperature)")
    retry_temperature: float = Field(0.7, ge=0)
    constrain: bool = Field(True, description="local: hold answers to the parsed layout with a llama.cpp grammar")
    seed: int = 1024

    @model_validator(mode="after")
    def _distilled(self) -> RateConfig:
        if (self.backend == "distilled") != (self.distilled is not None):
            raise ValueError("backend distilled and `distilled` go together")
        return self


class SelectConfig(Strict):
    """DataMan's sampling strategies (`data_tools/select_subset.py`)."""

    strategy: Literal["top_k", "overall_score", "sum", "uniform"] = "overall_score"
    criterion: Literal[CRITERIA] = Field("overall", description="top_k: the criterion ranked by")  # type: ignore[valid-type]
    score: int = Field(
        5, ge=1, le=5, description="overall_score: sample uniformly among documents with this Overall Score"
    )
    budget_tokens: int | None = Field(None, ge=1, description="tokens to select")
    budget_fraction: float | None = Field(None, gt=0, le=1, description="or: this share of the rated tokens")
    stratify: bool = Field(True, description="budget per source, then per domain, in proportion to token share")
    seed: int = 1024

    @model_validator(mode="after")
    def _budget(self) -> SelectConfig:
        if (self.budget_tokens is None) == (self.budget_fraction is None):
            raise ValueError("set one of budget_tokens and budget_fraction")
        return self
