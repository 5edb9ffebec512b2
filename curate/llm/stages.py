"""The LLM stages of a job: `rephrase` (WRAP), `rate` (DataMan) and `select` (DataMan's sampling).

`rephrase` and `rate` put their generation into the Ray plan through `plan()` (see
`curate.llm.generation`); `serving()` runs the local llama.cpp server around the job when the backend
is `local`. Neither filters: `rephrase` adds `wrap_<style>` columns and, through `synthesize()`,
new documents; `rate` adds the `dataman_*` columns that `select` chooses by.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from curate.llm import dataman, selection, wrap
from curate.llm.chunking import chunk_text, head_and_tail
from curate.llm.config import GenerationBackend, RateConfig, RephraseConfig, SelectConfig
from curate.llm.dataman import DATAMAN_COLUMNS
from curate.llm.generation import ANSWER, ERROR, PROMPT, TOKENS, generation_pass
from curate.llm.prompts import CRITERIA, DATAMAN_SYSTEM, dataman_prompt, wrap_prompt
from curate.llm.server import LocalServer
from curate.local_model import GEMMA_NAME, gemma_path
from curate.stages import Resources, Stage
from curate.tokenizer import shared_tokenizer

GENERATION_COLUMNS = [PROMPT, ANSWER, ERROR, TOKENS]


class LLMStage(Stage):
    """A stage whose work is generation: knows its endpoint, model name and tokenizer."""

    config: GenerationBackend

    def __init__(self, config: GenerationBackend) -> None:
        super().__init__(config)
        self.url = self.config.url
        self.model = self.config.llm or ""
        self.tokenizer = self.config.tokenizer or self.config.llm
        if self.config.backend == "local":
            self.model = GEMMA_NAME if self.config.llm is None else self.config.llm
            self.tokenizer = self.config.tokenizer or self.config.llm or gemma_path()

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Run the local server for the duration of the job (stopped on failure too)."""
        if self.config.backend != "local":
            yield
            return
        with LocalServer(self.config.llm, n_ctx=self.config.n_ctx, threads=self.config.threads) as server:
            self.url, self.model = server.url, server.name
            yield

    def generate(self, ds, sampling: dict[str, Any], system: str | None, cpus: float, many: bool = False):
        if self.config.backend in ("local", "openai") and not self.url:
            raise RuntimeError(f"stage {self.name}: no endpoint; run the plan inside `with stage.serving():`")
        return generation_pass(ds, self.config, self.url, self.model, sampling, system, cpus, many)


# ---------------------------------------------------------------- rephrase (WRAP)


class RephraseStage(LLMStage):
    """WRAP: every valid document is cut into ~300-token chunks at sentence boundaries, each
    chunk rephrased in each style, the cleaned rephrases joined in order into `wrap_<style>`.
    A style whose chunk failed or was discarded leaves `wrap_<style>` null and says why in
    `wrap_error`.

    With the HTTP backends a document's requests travel as one row (Transport asks them all at
    once), so the plan needs no shuffle and a shard is written as soon as its documents are
    answered. vLLM's processor takes one prompt per row: there the rows are exploded and
    regrouped by document (a groupby, i.e. a shuffle, so shards are written at the end)."""

    name = "rephrase"
    columns = ("wrap_error", "wrap_tokens")  # the scores; the rephrases themselves are wrap_<style>
    config: RephraseConfig

    def __init__(self, config: RephraseConfig):
        super().__init__(config)
        self.styles = list(self.config.styles)
        self.style_columns = [f"wrap_{s}" for s in self.styles]

    def plan(self, ds, batch_docs: int, resources: Resources):
        cpus = resources.cpus
        requests = functools.partial(
            _wrap_requests,
            styles=self.styles,
            template=self.config.template,
            tokenizer=self.tokenizer,
            chunk_tokens=self.config.chunk_tokens,
        )
        ds = ds.map_batches(requests, batch_format="pyarrow", batch_size=batch_docs, num_cpus=cpus)
        sampling = self.config.sampling.model_dump()
        if self.config.backend == "vllm":
            ds = ds.map_batches(_row_per_prompt, batch_format="pyarrow", num_cpus=cpus)
            ds = self.generate(ds, sampling, None, cpus)
            groups = ds.groupby(WRAP_DOC, num_partitions=resources.concurrency)
            ds = groups.map_groups(_row_per_document, batch_format="pyarrow", num_cpus=cpus)
        else:
            ds = self.generate(ds, sampling, None, cpus, many=True)
        return ds.map_batches(
            functools.partial(_assemble_rephrases, styles=self.styles), batch_format="pyarrow", num_cpus=cpus
        )

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        failed = int(scores["wrap_error"].is_not_null().sum()) if len(scores) else 0
        return {
            "model": self.model, "backend": self.config.backend, "styles": self.styles,
            "chunk_tokens": self.config.chunk_tokens, "sampling": self.config.sampling.model_dump(),
            "ratio": list(self.config.ratio), "documents": len(scores), "with_failed_style": failed,
            "generated_tokens": int(scores["wrap_tokens"].sum()) if len(scores) else 0,
        }  # fmt: skip

    def synthesize(self, kept: pl.DataFrame) -> pl.DataFrame | None:
        """The rephrases as new documents, `ratio` real:synthetic: as many as kept * s / r,
        drawn in a fixed pseudo-random order from the (document, style) rephrases there are."""
        real, synthetic = self.config.ratio
        frames = [
            kept.filter(pl.col(col).is_not_null()).select(
                pl.format("{}#wrap-{}", pl.col("id"), pl.lit(style)).alias("id"), pl.col(col).alias("text"), "source",
                pl.col("id").alias("parent_id"), pl.lit(style).alias("wrap_style"),
                pl.lit(self.model).alias("wrap_model"),
            )
            for style, col in zip(self.styles, self.style_columns) if col in kept.columns
        ]  # fmt: skip
        if not frames:
            return None
        pool = pl.concat(frames)
        wanted = round(len(kept) * synthetic / real)
        order = [hashlib.sha256(f"{self.config.sampling.seed}:{i}".encode()).digest() for i in pool["id"].to_list()]
        return pool.with_columns(_order=pl.Series(order, dtype=pl.Binary)).sort("_order").head(wanted).drop("_order")


WRAP_CHUNKS, WRAP_DOC, WRAP_PROMPT = "_wrap_chunks", "_wrap_doc", "_wrap_prompt"


def _wrap_requests(
    batch: pa.Table, styles: list[str], template: str | None, tokenizer: str, chunk_tokens: int
) -> pa.Table:
    """Per valid document, its chunks and the JSON list of its prompts, style by style then chunk
    by chunk (null PROMPT: nothing to ask)."""
    tok = shared_tokenizer(tokenizer)
    counts, prompts = [], []
    for text, error in zip(batch["text"].to_pylist(), batch["error"].to_pylist()):
        chunks = chunk_text(text, tok, chunk_tokens) if error is None and text else []
        counts.append(len(chunks))
        prompts.append(
            json.dumps([wrap_prompt(style, chunk, template) for style in styles for chunk in chunks])
            if chunks
            else None
        )
    return batch.append_column(WRAP_CHUNKS, pa.array(counts, pa.int64())).append_column(
        PROMPT, pa.array(prompts, pa.large_string())
    )


def _row_per_prompt(batch: pa.Table) -> pa.Table:
    """vLLM: one row per prompt (a document without any keeps one request-less row), keyed by
    document and position."""
    keys = [f"{s}:{r}" for s, r in zip(batch["_shard"].to_pylist(), batch["input_row"].to_pylist())]
    take, position, prompts = [], [], []
    for i, listed in enumerate(batch[PROMPT].to_pylist()):
        for k, prompt in enumerate(json.loads(listed) if listed else [None]):
            take.append(i), position.append(k), prompts.append(prompt)
    out = batch.append_column(WRAP_DOC, pa.array(keys, pa.string())).take(pa.array(take, pa.int64()))
    out = out.set_column(out.schema.get_field_index(PROMPT), PROMPT, pa.array(prompts, pa.large_string()))
    return out.append_column(WRAP_PROMPT, pa.array(position, pa.int64()))


def _row_per_document(group: pa.Table) -> pa.Table:
    """vLLM: a document's answered rows back into one, with the JSON lists `many` gives."""
    rows = group.sort_by(WRAP_PROMPT)
    asked = rows[PROMPT][0].as_py() is not None
    answers, errors = rows[ANSWER].to_pylist(), rows[ERROR].to_pylist()
    first = rows.slice(0, 1).drop_columns([WRAP_DOC, WRAP_PROMPT])
    for name, value, typ in [
        (ANSWER, json.dumps(answers) if asked else None, pa.large_string()),
        (ERROR, json.dumps(errors) if asked and any(errors) else None, pa.string()),
        (TOKENS, int(pc.sum(rows[TOKENS]).as_py() or 0), pa.int64()),
    ]:
        first = first.set_column(first.schema.get_field_index(name), name, pa.array([value], typ))
    return first


def _assemble_rephrases(batch: pa.Table, styles: list[str]) -> pa.Table:
    """Per document and style: its chunks' cleaned rephrases joined in order, or why not."""
    texts = {style: [] for style in styles}
    problems = []
    for n, answers, errors in zip(batch[WRAP_CHUNKS].to_pylist(), batch[ANSWER].to_pylist(), batch[ERROR].to_pylist()):
        answers = json.loads(answers) if answers else []
        errors = json.loads(errors) if errors else [None] * len(answers)
        why_not = []
        for s, style in enumerate(styles):
            cleaned, why = [], None
            for j in range(n):
                k = s * n + j
                answer, error = (answers[k], errors[k]) if k < len(answers) else (None, None)
                if error is not None or answer is None:
                    why = f"chunk {j}: {error or 'no answer came back'}"
                    break
                try:
                    cleaned.append(wrap.clean_rephrase(answer))
                except wrap.Discarded as e:
                    why = f"chunk {j} discarded: {e}"
                    break
            texts[style].append(wrap.join_rephrases(cleaned) if n and why is None else None)
            if why:
                why_not.append(f"{style}: {why}")
        problems.append("; ".join(why_not) or None)
    out = batch.drop_columns([WRAP_CHUNKS, *GENERATION_COLUMNS])
    for style in styles:
        out = out.append_column(f"wrap_{style}", pa.array(texts[style], pa.large_string()))
    out = out.append_column("wrap_error", pa.array(problems, pa.string()))
    return out.append_column("wrap_tokens", batch[TOKENS].cast(pa.int64()))


# ---------------------------------------------------------------- rate (DataMan)


RATING_TYPES = {
    "dataman_domain": pa.string(),
    "dataman_answer": pa.large_string(),
    "dataman_error": pa.string(),
    PROMPT: pa.large_string(),
}  # scores: int8


class RateStage(LLMStage):
    """DataMan: each valid document (first and last `keep_tokens` tokens when longer) is rated
    with the annotation prompt, greedily; an unparseable answer is re-asked `retries` times,
    then the document stays unrated: null ratings, `dataman_answer` and `dataman_error` say why."""

    name = "rate"
    columns = (*DATAMAN_COLUMNS, "dataman_tokens", "dataman_answer", "dataman_error")
    config: RateConfig

    def __init__(self, config: RateConfig):
        if config.backend != "distilled":
            super().__init__(config)
            return
        Stage.__init__(self, config)
        self.url, self.model = None, f"distilled:{config.distilled}"
        self.tokenizer = config.tokenizer or gemma_path()  # counts tokens as the LLM rater did

    def sampling(self, attempt: int) -> dict[str, Any]:
        temperature = 0.0 if attempt == 0 else self.config.retry_temperature
        out = {"temperature": temperature, "max_tokens": self.config.max_tokens, "seed": self.config.seed + attempt}
        if self.config.backend == "local" and self.config.constrain:
            out["grammar"] = dataman.answer_grammar()
        return out

    def plan(self, ds, batch_docs: int, resources: Resources):
        if self.config.backend == "distilled":
            from curate.llm.distill import DistilledActor  # scikit-learn: loaded only for this backend

            kwargs = {"path": self.config.distilled, "tokenizer": self.tokenizer, "keep": self.config.keep_tokens}
            actors = _actors(resources.concurrency)
            return ds.map_batches(
                DistilledActor,
                fn_constructor_kwargs=kwargs,
                batch_size=batch_docs,
                batch_format="pyarrow",
                compute=actors,
                **resources.ray_options(),
            )
        prepare = functools.partial(_rating_requests, tokenizer=self.tokenizer, keep=self.config.keep_tokens)
        ds = ds.map_batches(prepare, batch_format="pyarrow", batch_size=batch_docs, num_cpus=resources.cpus)
        for attempt in range(self.config.retries + 1):
            ds = self.generate(ds, self.sampling(attempt), DATAMAN_SYSTEM, resources.cpus)
            ds = ds.map_batches(_read_ratings, batch_format="pyarrow", num_cpus=resources.cpus)
        return ds.drop_columns([PROMPT])

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        rated = scores.filter(pl.col("dataman_overall").is_not_null()) if len(scores) else scores
        return {
            "model": self.model, "backend": self.config.backend, "documents": len(scores), "rated": len(rated),
            "domains": dict(sorted(rated["dataman_domain"].value_counts().iter_rows())) if len(rated) else {},
            "mean": {c: round(float(rated[f"dataman_{c}"].mean()), 3) for c in CRITERIA} if len(rated) else {},
        }  # fmt: skip


def _actors(workers: int):
    import ray

    return ray.data.ActorPoolStrategy(size=workers)


def _rating_requests(batch: pa.Table, tokenizer: str, keep: int) -> pa.Table:
    """The rating prompt of each valid document, its length in tokens, and empty rating columns."""
    tok = shared_tokenizer(tokenizer)
    prompts, lengths = [], []
    for text, error in zip(batch["text"].to_pylist(), batch["error"].to_pylist()):
        if error is not None:
            prompts.append(None), lengths.append(None)
            continue
        cut, length = head_and_tail(text, tok, keep)
        prompts.append(dataman_prompt(cut)), lengths.append(length)
    n = len(batch)
    batch = batch.append_column("dataman_domain", pa.nulls(n, pa.string()))
    for c in CRITERIA:
        batch = batch.append_column(f"dataman_{c}", pa.nulls(n, pa.int8()))
    batch = batch.append_column("dataman_tokens", pa.array(lengths, pa.int64()))
    batch = batch.append_column("dataman_answer", pa.nulls(n, pa.large_string()))
    batch = batch.append_column("dataman_error", pa.nulls(n, pa.string()))
    return batch.append_column(PROMPT, pa.array(prompts, pa.large_string()))


def _read_ratings(batch: pa.Table) -> pa.Table:
    """Parse this pass's answers; a row that parsed asks nothing more, one that did not keeps its
    prompt for the next pass and records its raw answer and the reason."""
    cols = {
        name: batch[name].to_pylist()
        for name in (*DATAMAN_COLUMNS, "dataman_answer", "dataman_error", PROMPT, ANSWER, ERROR)
    }
    for i, prompt in enumerate(cols[PROMPT]):
        if prompt is None:
            continue
        if cols[ERROR][i] is not None:
            cols["dataman_error"][i] = cols[ERROR][i]
            continue
        try:
            rating = dataman.parse_answer(cols[ANSWER][i])
        except dataman.AnswerError as e:
            cols["dataman_answer"][i], cols["dataman_error"][i] = cols[ANSWER][i], f"unparseable answer: {e}"
            continue
        cols["dataman_domain"][i] = rating.domain
        for c in CRITERIA:
            cols[f"dataman_{c}"][i] = rating.scores[c]
        cols["dataman_answer"][i] = cols["dataman_error"][i] = cols[PROMPT][i] = None
    for name, values in cols.items():
        if name not in (ANSWER, ERROR):
            batch = batch.set_column(
                batch.schema.get_field_index(name), name, pa.array(values, RATING_TYPES.get(name, pa.int8()))
            )
    return batch.drop_columns([ANSWER, ERROR, TOKENS])


# ---------------------------------------------------------------- select (DataMan sampling)


class SelectStage(Stage):
    """Choose documents by their DataMan ratings within a token budget (see `selection`)."""

    name = "select"  # no columns of its own: it decides on the rate stage's
    config: SelectConfig

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        return selection.fit(scores, self.config)

    def decide(self, df: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
        return selection.decide(df, self.config, params)
