"""One generation pass over a Ray dataset with a `ray.data.llm` processor, whatever the backend.

Rows carry their request in PROMPT (the user message; null: no request for this row) and come
out with ANSWER (the generated text), ERROR (why there is no answer) and TOKENS (tokens
generated), every input column kept, one row out per row in. With `many`, PROMPT is a JSON list
of user messages asked independently, ANSWER the JSON list of their answers (null where one
failed) and ERROR, when any failed, the JSON list of reasons: a document's requests then travel
as one row, so no shuffle is needed to put its answers back together (HTTP backends only).

The HTTP backends (`local`, `openai`) use `HttpRequestProcessorConfig` with `Transport` as its
session: requests of a batch run concurrently, failures are retried with exponential backoff,
and a request that still fails becomes that row's ERROR instead of failing the job. `vllm` uses
`vLLMEngineProcessorConfig` (imported only then) with `should_continue_on_error`.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import aiohttp
import pyarrow as pa

from curate.llm.config import GenerationBackend

PROMPT, ANSWER, ERROR, TOKENS = "_llm_prompt", "_llm_answer", "_llm_error", "_llm_tokens"
KEYS = "_llm_keys"  # the columns a row had before the processor, so only they are kept
SCHEMA = "_llm_schema"  # the Arrow schema of the row's batch before the processor
SKIP = "row needs no request"
NO_REQUEST = "curate_no_request"  # payload marker: Transport answers it without a call, never sends it
MANY = "curate_prompts"  # payload field: a JSON list of user messages Transport asks at once, never sent
RETRYABLE = {408, 429, 502, 503, 504}  # as ray.data.llm's HTTP stage


def generation_pass(
    ds,
    backend: GenerationBackend,
    url: str | None,
    model: str,
    sampling: dict[str, Any],
    system: str | None,
    cpu_share: float,
    many: bool = False,
):
    """`ds` with ANSWER, ERROR and TOKENS added (see the module docstring). Processors pass rows
    through Python dicts, which loses column types (an all-null column comes back typed null),
    so each row carries its batch's schema across and gets it back after."""
    ds = ds.map_batches(_remember_schema, batch_format="pyarrow", num_cpus=cpu_share)
    if backend.backend == "vllm":
        if many:
            raise ValueError("vLLM's processor asks one prompt per row: explode the rows instead of `many`")
        ds = _vllm_pass(ds, backend, sampling, system, cpu_share)
    else:
        ds = _http_pass(ds, backend, url, model, sampling, system, cpu_share, many)
    return ds.map_batches(_restore_schema, batch_format="pyarrow", num_cpus=cpu_share)


def _remember_schema(batch: pa.Table) -> pa.Table:
    schema = batch.schema.remove_metadata().serialize().to_pybytes()
    return batch.append_column(SCHEMA, pa.array([schema] * len(batch), pa.binary()))


def _restore_schema(batch: pa.Table) -> pa.Table:
    schemas = {s: pa.ipc.read_schema(pa.py_buffer(s)) for s in set(batch[SCHEMA].to_pylist())}
    for field in [f for schema in schemas.values() for f in schema]:
        i = batch.schema.get_field_index(field.name)
        if i >= 0 and batch.schema.field(i).type != field.type:
            batch = batch.set_column(i, field, batch.column(i).cast(field.type))
    batch = batch.drop_columns([SCHEMA])
    for name, typ in ((ANSWER, pa.large_string()), (ERROR, pa.string()), (TOKENS, pa.int64())):
        i = batch.schema.get_field_index(name)
        batch = batch.set_column(i, name, batch.column(i).cast(typ))
    return batch


def _http_pass(
    ds,
    backend: GenerationBackend,
    url: str | None,
    model: str,
    sampling: dict[str, Any],
    system: str | None,
    cpu_share: float,
    many: bool,
):
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    config = HttpRequestProcessorConfig(
        url=f"{url.rstrip('/')}/chat/completions",
        batch_size=backend.batch_size,
        concurrency=backend.concurrency,
        max_retries=0,  # Transport retries, so that a request which still fails marks its row
        session_factory=functools.partial(Transport, backend.max_retries, backend.timeout_s),
        http_request_stage={"num_cpus": cpu_share},
    )

    def preprocess(row: dict) -> dict:
        # every payload has the same fields (Ray cannot combine blocks whose structs differ)
        prompt = row[PROMPT]
        user = "" if many else prompt or ""
        payload = {
            "model": model,
            "messages": _messages(system, user),
            **sampling,
            NO_REQUEST: prompt is None,
            MANY: prompt if many and prompt else "",
        }
        return {"payload": payload, KEYS: list(row)}

    def postprocess(row: dict) -> dict:
        reply = row["http_response"]
        return {
            **{k: row[k] for k in row[KEYS]},
            ANSWER: reply["answer"],
            ERROR: reply["error"],
            TOKENS: reply["tokens"],
        }

    processor = build_processor(
        config,
        preprocess=preprocess,
        postprocess=postprocess,
        preprocess_map_kwargs={"num_cpus": cpu_share},
        postprocess_map_kwargs={"num_cpus": cpu_share},
    )
    return processor(ds)


def _messages(system: str | None, prompt: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def vllm_config(backend: GenerationBackend):
    """The vLLM processor config of a backend (in-process vLLM on the Ray workers' GPUs)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=backend.llm,
        engine_kwargs={"max_model_len": backend.n_ctx, "enable_prefix_caching": True},
        batch_size=backend.batch_size,
        concurrency=backend.concurrency,
        accelerator_type=None,
        should_continue_on_error=True,
    )


def _vllm_pass(ds, backend: GenerationBackend, sampling: dict[str, Any], system: str | None, cpu_share: float):
    from ray.data.llm import build_processor

    params = {k: v for k, v in sampling.items() if k in ("temperature", "top_p", "typical_p", "max_tokens", "seed")}
    if "typical_p" in params:  # vLLM has no typical sampling: refuse rather than ignore it
        if params.pop("typical_p") != 1.0:
            raise ValueError(
                "vLLM does not implement typical_p; use backend local or openai for locally typical sampling"
            )

    def preprocess(row: dict) -> dict:
        prompt = row[PROMPT]
        out = {"messages": _messages(system, prompt or ""), "sampling_params": params, KEYS: list(row)}
        if prompt is None:  # rows marked with __inference_error__ skip every engine stage
            out["__inference_error__"] = SKIP
        return out

    def postprocess(row: dict) -> dict:
        return {
            **{k: row[k] for k in row[KEYS]},
            ANSWER: row["generated_text"],
            ERROR: None,
            TOKENS: int(row["num_generated_tokens"]),
        }

    out = build_processor(vllm_config(backend), preprocess=preprocess, postprocess=postprocess)(ds)

    def settle(row: dict) -> dict:
        """Rows the engine failed on (or skipped) bypass postprocess: give them the same columns."""
        error = row.pop("__inference_error__", "")
        if not error:
            return row
        kept = {k: row[k] for k in row[KEYS]}
        return {**kept, ANSWER: None, ERROR: None if error == SKIP else error, TOKENS: 0}

    return out.map(settle, num_cpus=cpu_share)


class _Reply:
    """What the HTTP stage reads of a response: status 200 and a fixed-shape body."""

    status = 200
    reason = "OK"

    def __init__(self, body: dict):
        self.body = body

    async def json(self) -> dict:
        return self.body

    async def __aenter__(self) -> _Reply:
        return self

    async def __aexit__(self, *exc) -> None:
        return None


class Transport:
    """The HTTP stage's client session: each request starts at once (a batch's requests run
    concurrently), is retried with exponential backoff on connection errors and retryable
    statuses, and always ends in a body `{answer, error, tokens}`; a payload marked NO_REQUEST (a
    row with nothing to ask) is answered without a network call, and one with MANY prompts asks
    each of them (at once) in place of its last message."""

    def __init__(self, max_retries: int, timeout_s: float, backoff_s: float = 1.0):
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    def post(self, url: str, headers: dict, data: str) -> asyncio.Task:
        return asyncio.ensure_future(self._post(url, headers, data))

    async def _post(self, url: str, headers: dict, data: str) -> _Reply:
        payload = json.loads(data)
        prompts = payload.pop(MANY, "")
        if payload.pop(NO_REQUEST, False):
            return _Reply({"answer": None, "error": None, "tokens": 0})
        if not prompts:
            return _Reply(await self._ask(url, headers, payload))
        context = payload["messages"][:-1]
        replies = await asyncio.gather(
            *(
                self._ask(url, headers, {**payload, "messages": [*context, {"role": "user", "content": p}]})
                for p in json.loads(prompts)
            )
        )
        errors = [r["error"] for r in replies]
        return _Reply({
            "answer": json.dumps([r["answer"] for r in replies]), "error": json.dumps(errors) if any(errors) else None,
            "tokens": sum(r["tokens"] for r in replies),
        })  # fmt: skip

    async def _ask(self, url: str, headers: dict, payload: dict) -> dict:
        data = json.dumps(payload)
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                async with self.session.post(url, headers=headers, data=data) as response:
                    text = await response.text()
                    if response.status == 200:
                        return _read_completion(text)
                    problem = f"HTTP {response.status}: {text[:500]}"
                    if response.status not in RETRYABLE:
                        break
            except (TimeoutError, aiohttp.ClientError) as e:
                problem = f"{type(e).__name__}: {e}"
        return {"answer": None, "error": f"request failed after {attempt + 1} attempts: {problem}", "tokens": 0}


def _read_completion(text: str) -> dict:
    """An OpenAI chat completion's text and token count, or why it has none."""
    try:
        body = json.loads(text)
        choice = body["choices"][0]
        answer = choice["message"]["content"]
        tokens = int(body.get("usage", {}).get("completion_tokens") or 0)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return {"answer": None, "error": f"unreadable completion ({type(e).__name__}: {e}): {text[:500]}", "tokens": 0}
    if answer is None:
        return {"answer": None, "error": f"completion without text: {text[:500]}", "tokens": 0}
    return {"answer": answer, "error": None, "tokens": tokens}
