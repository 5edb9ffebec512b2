"""LLM stages, own logic with test doubles: the HTTP transport's retries and failure marking (a
scripted aiohttp server), WRAP's regrouping of vLLM's per-prompt rows, and DataMan selection on
made-up ratings."""

import asyncio
import json

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from aiohttp import web

from curate.llm import selection
from curate.llm.config import SelectConfig
from curate.llm.generation import ANSWER, ERROR, MANY, NO_REQUEST, PROMPT, TOKENS, Transport
from curate.llm.server import free_port
from curate.llm.stages import WRAP_CHUNKS, _assemble_rephrases, _row_per_document, _row_per_prompt


def _completion(text: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": text}}], "usage": {"completion_tokens": 3}}


async def _exchange(routes, payloads, retries=2):
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with Transport(max_retries=retries, timeout_s=5, backoff_s=0.01) as t:
            replies = [
                t.post(f"http://127.0.0.1:{port}{path}", {"Content-Type": "application/json"}, json.dumps(p))
                for path, p in payloads
            ]
            return [await (await r).json() for r in replies]
    finally:
        await runner.cleanup()


def test_transport_retries_then_answers_marks_failures_and_skips_rows_without_request():
    calls = {"flaky": 0, "down": 0}

    async def flaky(request):
        assert NO_REQUEST not in await request.json()  # the marker is never sent
        calls["flaky"] += 1
        return web.json_response(_completion("fine")) if calls["flaky"] > 2 else web.Response(status=503, text="busy")

    async def down(request):
        calls["down"] += 1
        return web.Response(status=503, text="still busy")

    async def bad(request):
        return web.Response(status=400, text="prompt too long")

    async def garbled(request):
        return web.json_response({"unexpected": True})

    routes = [web.post("/flaky", flaky), web.post("/down", down), web.post("/bad", bad), web.post("/garbled", garbled)]
    replies = asyncio.run(
        _exchange(
            routes,
            [
                ("/flaky", {"x": 1, NO_REQUEST: False}),
                ("/down", {"x": 2}),
                ("/bad", {"x": 3}),
                ("/garbled", {"x": 4}),
                ("/bad", {"x": 5, NO_REQUEST: True}),
            ],
        )
    )
    assert replies[0] == {"answer": "fine", "error": None, "tokens": 3} and calls["flaky"] == 3
    assert (
        replies[1]["answer"] is None
        and "after 3 attempts: HTTP 503: still busy" in replies[1]["error"]
        and calls["down"] == 3
    )
    assert "after 1 attempts: HTTP 400: prompt too long" in replies[2]["error"]  # not retryable
    assert "unreadable completion" in replies[3]["error"]
    assert replies[4] == {"answer": None, "error": None, "tokens": 0}  # no request made


def test_transport_marks_an_unreachable_endpoint():
    async def go():
        async with Transport(max_retries=1, timeout_s=2, backoff_s=0.01) as t:
            return await (
                await t.post(f"http://127.0.0.1:{free_port()}/v1/chat/completions", {}, json.dumps({"x": 1}))
            ).json()

    reply = asyncio.run(go())
    assert reply["answer"] is None and "after 2 attempts: ClientConnectorError" in reply["error"]


def test_transport_asks_many_prompts_of_a_row_and_marks_the_one_that_failed():
    seen = []

    async def chat(request):
        body = await request.json()
        seen.append(body)
        prompt = body["messages"][-1]["content"]
        return (
            web.Response(status=400, text="refused")
            if prompt == "two"
            else web.json_response(_completion(prompt.upper()))
        )

    payload = {
        "model": "m",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": ""}],
        MANY: json.dumps(["one", "two", "three"]),
    }
    [reply] = asyncio.run(_exchange([web.post("/chat", chat)], [("/chat", payload)]))
    assert json.loads(reply["answer"]) == ["ONE", None, "THREE"] and reply["tokens"] == 6
    errors = json.loads(reply["error"])
    assert errors[0] is None and errors[2] is None and "after 1 attempts: HTTP 400: refused" in errors[1]
    assert len(seen) == 3 and all(
        MANY not in b and b["messages"][0] == {"role": "system", "content": "sys"} for b in seen
    )


def test_vllm_rows_regroup_into_the_documents_many_gives():
    """vLLM asks one prompt per row: the rows of a document come back together in prompt order,
    whatever order the engine returns them in, and assemble like the HTTP backends' rows."""
    docs = pa.table({
        "_shard": [0, 0], "input_row": [0, 1], "text": ["a", "b"], WRAP_CHUNKS: [2, 0],
        PROMPT: pa.array([json.dumps(["e0", "e1", "q0", "q1"]), None], pa.large_string()),
    })  # fmt: skip
    rows = _row_per_prompt(docs)
    assert rows[PROMPT].to_pylist() == ["e0", "e1", "q0", "q1", None]
    answers = [f"Said simply {p}." if p != "q1" else None for p in rows[PROMPT].to_pylist()]
    errors = [None, None, None, "engine failed", None]
    rows = rows.append_column(ANSWER, pa.array(answers, pa.large_string())).append_column(
        ERROR, pa.array(errors, pa.string())
    )
    rows = rows.append_column(TOKENS, pa.array([3, 3, 3, 0, 0], pa.int64()))
    shuffled = rows.take([3, 0, 2, 1])  # document 0's rows, out of order
    doc0 = _row_per_document(shuffled)
    assert json.loads(doc0[ANSWER][0].as_py()) == ["Said simply e0.", "Said simply e1.", "Said simply q0.", None]
    assert json.loads(doc0[ERROR][0].as_py())[3] == "engine failed" and doc0[TOKENS][0].as_py() == 9
    doc1 = _row_per_document(rows.slice(4, 1))
    assert doc1[ANSWER][0].as_py() is None and doc1[ERROR][0].as_py() is None
    out = _assemble_rephrases(pa.concat_tables([doc0, doc1]), styles=["easy", "qa"]).to_pylist()
    assert out[0]["wrap_easy"] == "Said simply e0.\nSaid simply e1." and out[0]["wrap_qa"] is None
    assert out[0]["wrap_error"] == "qa: chunk 1: engine failed" and out[0]["wrap_tokens"] == 9
    assert out[1]["wrap_easy"] is None and out[1]["wrap_error"] is None
    assert {"text", "_shard"} <= set(out[0]) and not {PROMPT, ANSWER, ERROR, TOKENS, WRAP_CHUNKS} & set(out[0])


def _ratings(n=400, seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    df = pl.DataFrame({
        "id": [f"d{i}" for i in range(n)], "source": rng.choice(["web", "wiki"], n, p=[0.75, 0.25]),
        "dataman_domain": rng.choice(list("ABE"), n), "dataman_tokens": rng.integers(50, 500, n),
        "dataman_error": [None] * n,
    }, schema_overrides={"dataman_error": pl.String})  # fmt: skip
    for c in selection.SCORES:
        df = df.with_columns(pl.Series(c, rng.integers(1, 6, n)).cast(pl.Int8))
    unrated = pl.col("id").is_in(["d0", "d1"])
    return df.with_columns(
        [pl.when(unrated).then(None).otherwise(pl.col(c)).alias(c) for c in [*selection.SCORES, "dataman_domain"]]
        + [
            pl.when(unrated)
            .then(pl.lit("unparseable answer: x"))
            .otherwise(pl.col("dataman_error"))
            .alias("dataman_error")
        ]
    )


def _select(df, **config):
    config = SelectConfig(**config)
    params = selection.fit(df, config)
    out = selection.decide(df, config, params)
    return params, out.filter(pl.col("_reason").is_null()), out


@pytest.mark.parametrize("strategy", ["top_k", "sum", "overall_score", "uniform"])
def test_selection_within_budget_and_stratified(strategy):
    df = _ratings()
    params, chosen, out = _select(df, strategy=strategy, criterion="coherence", budget_fraction=0.3)
    assert len(out) == len(df) and params["selected_documents"] == len(chosen)
    assert out.filter(pl.col("id") == "d0")["_reason"][0] == "not rated by DataMan: unparseable answer: x"
    rated_tokens = df.filter(pl.col("dataman_overall").is_not_null())["dataman_tokens"].sum()
    # each stratum stops at the document that reaches its budget
    assert chosen["dataman_tokens"].sum() <= 0.3 * rated_tokens + 500 * len(params["strata"])
    if strategy == "overall_score":
        assert (chosen["dataman_overall"] == 5).all()
        assert out.filter(pl.col("dataman_overall") == 3)["_reason"].str.contains("Overall Score 3 is not 5").all()
    else:  # budget shares follow token shares per source and domain
        pool = df.filter(pl.col("dataman_overall").is_not_null())
        for stratum, c in params["strata"].items():
            source, domain = stratum.split("/")
            share = (
                pool.filter((pl.col("source") == source) & (pl.col("dataman_domain") == domain))["dataman_tokens"].sum()
                / pool["dataman_tokens"].sum()
            )
            assert c["budget"] == pytest.approx(params["budget_tokens"] * share, abs=1)
            assert c["budget"] <= c["tokens"] < c["budget"] + 500


def test_top_k_takes_the_highest_scores_in_each_stratum():
    df = _ratings()
    params, chosen, out = _select(df, strategy="top_k", criterion="coherence", budget_fraction=0.3)
    both = out.with_columns(chosen=pl.col("_reason").is_null()).filter(pl.col("dataman_overall").is_not_null())
    for (_stratum,), part in both.group_by(pl.format("{}/{}", "source", "dataman_domain")):
        if part["chosen"].any() and (~part["chosen"]).any():
            assert (
                part.filter("chosen")["dataman_coherence"].min()
                >= part.filter(~pl.col("chosen"))["dataman_coherence"].max()
            )


def test_sum_ranks_by_all_fourteen_and_selection_is_reproducible():
    df = _ratings()
    params, chosen, _ = _select(df, strategy="sum", budget_tokens=5000, stratify=False)
    total = pl.sum_horizontal(selection.SCORES)
    rest = df.filter(~pl.col("id").is_in(chosen["id"].to_list()) & pl.col("dataman_overall").is_not_null())
    assert chosen.select(total.min()).item() >= rest.select(total.max()).item()
    assert _select(df, strategy="sum", budget_tokens=5000, stratify=False)[1]["id"].to_list() == chosen["id"].to_list()
    other_seed = _select(df, strategy="uniform", budget_tokens=5000, stratify=False, seed=7)[1]
    assert (
        other_seed["id"].to_list()
        != _select(df, strategy="uniform", budget_tokens=5000, stratify=False, seed=8)[1]["id"].to_list()
    )


def test_select_needs_ratings():
    with pytest.raises(ValueError, match="needs a rate stage"):
        _select(pl.DataFrame({"id": ["a"], "source": ["s"]}), budget_tokens=10)


def test_distilled_rater_learns_ratings_and_rates_like_the_llm_stage(tmp_path):
    from curate.llm.distill import DistilledActor, distill
    from curate.local_model import gemma_path

    rng = np.random.default_rng(0)
    good = ["clear", "precise", "informative", "careful", "structured"]
    bad = ["spam", "click", "buy", "cheap", "winner"]
    rows = []
    for i in range(120):
        q = i % 2
        words = rng.choice(good if q else bad, 12).tolist() + rng.choice(["the", "a", "of", "and"], 8).tolist()
        rows.append({"id": f"d{i}", "text": " ".join(rng.permutation(words)), "dataman_domain": "E" if q else "L",
                     **{f"dataman_{c}": (5 if q else 1) for c in selection.CRITERIA}})  # fmt: skip
    pl.DataFrame(rows).with_columns([pl.col(c).cast(pl.Int8) for c in selection.SCORES]).write_parquet(
        tmp_path / "rated.parquet"
    )
    card = distill([str(tmp_path / "rated.parquet")], str(tmp_path / "rater"))
    assert card["documents"] == 120 and card["held_out"] == 24
    assert card["agreement_with_llm"]["overall"] == {"accuracy": 1.0, "spearman": 1.0}
    assert card["agreement_with_llm"]["domain"]["accuracy"] == 1.0

    import pyarrow as pa

    batch = pa.table(
        {"text": ["clear precise informative text", "buy cheap spam now", None], "error": [None, None, "bad record"]}
    )
    out = DistilledActor(str(tmp_path / "rater"), gemma_path(), 947)(batch)
    assert out["dataman_overall"].to_pylist() == [5, 1, None] and out["dataman_domain"].to_pylist() == ["E", "L", None]
    assert out["dataman_tokens"].to_pylist()[2] is None and out["dataman_tokens"].to_pylist()[0] > 0
