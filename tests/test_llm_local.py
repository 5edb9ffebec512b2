"""LLM stages against the real local llama.cpp server and Gemma 3 270M (small outputs, fixed
seeds): server lifecycle, the Gemma tokenizer's chunking and truncation, and whole jobs with
rephrase, rate and select, including an endpoint that fails."""

import gzip
import json
import os
from pathlib import Path

import polars as pl
import pytest

from curate.llm.chunking import chunk_text, head_and_tail, sentence_spans
from curate.llm.config import RateConfig, RephraseConfig
from curate.llm.generation import vllm_config
from curate.llm.prompts import CRITERIA
from curate.llm.server import LocalServer, free_port
from curate.llm.stages import RateStage, RephraseStage
from curate.local_model import GEMMA_NAME, gemma_path
from curate.tokenizer import load_tokenizer
from pipelines.runner import run_job
from pipelines.spec import load_job

from .conftest import DATA

OWT = DATA / "web" / "openwebtext_1k.jsonl.gz"


def _owt(n: int) -> list[dict]:
    with gzip.open(OWT, "rt", encoding="utf-8") as f:
        return [json.loads(next(f)) for _ in range(n)]


def _llama_servers() -> list[int]:
    """Live llama.cpp servers started from this test process (its descendants, read from /proc)."""
    parent, cmd = {}, {}
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            cmd[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (ValueError, OSError):
            continue
    mine = {os.getpid()}
    for _ in range(10):
        mine |= {p for p, pp in parent.items() if pp in mine}
    return [
        p
        for p in mine
        if "curate.llm.llama_server" in cmd.get(p, "")
        and " Z " not in (Path(f"/proc/{p}/stat").read_text() if Path(f"/proc/{p}/stat").exists() else "")
    ]


def _read(out, sub) -> pl.DataFrame:
    files = sorted((out / sub).glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


def test_server_starts_answers_and_stops():
    with LocalServer(n_ctx=1024) as server:
        assert server.answers() and server.name == GEMMA_NAME and server.url.startswith("http://127.0.0.1:")
        assert len(_llama_servers()) == 1
    assert server.process.poll() is not None and not server.answers() and not _llama_servers()


def test_serving_stops_the_server_when_the_job_fails():
    stage = RateStage(RateConfig(max_tokens=16))
    with pytest.raises(RuntimeError, match="job failed"), stage.serving():
        assert stage.url and _llama_servers()
        raise RuntimeError("job failed")
    assert not _llama_servers()


def test_chunks_are_whole_sentences_under_the_limit_and_join_back():
    tok = load_tokenizer(gemma_path())
    for doc in _owt(12):
        text = doc["text"]
        chunks = chunk_text(text, tok, 300)
        assert "".join(chunks) == text
        starts = {a for a, _ in sentence_spans(text)} | {0}
        pos = 0
        for chunk in chunks:
            assert pos in starts  # never inside a sentence
            if len(sentence_spans(chunk)) > 1:
                assert len(tok.encode(chunk.strip())) <= 300 + 5  # whitespace between sentences may add a token
            pos += len(chunk)
    assert chunk_text("", tok) == []


def test_long_documents_keep_their_head_and_tail_tokens():
    tok = load_tokenizer(gemma_path())
    long = next(d["text"] for d in _owt(20) if len(d["text"]) > 20_000)
    cut, length = head_and_tail(long, tok, keep=947)
    assert length > 2 * 947 and "..." in cut
    head, tail = tok.decode(tok.encode(long[:10_000])[:947]), tok.decode(tok.encode(long[-10_000:])[-947:])
    assert cut == head + "..." + tail
    short = _owt(1)[0]["text"][:500]
    assert head_and_tail(short, tok, keep=947) == (short, len(tok.encode(short)))


def test_vllm_backend_is_a_processor_config():
    config = vllm_config(
        RateStage(RateConfig(backend="vllm", llm="RuPeng/DataMan-1.5B-EN", batch_size=32, concurrency=2)).config
    )
    assert type(config).__name__ == "vLLMEngineProcessorConfig"
    assert (config.model_source, config.batch_size, config.should_continue_on_error) == (
        "RuPeng/DataMan-1.5B-EN",
        32,
        True,
    )
    assert config.engine_kwargs["max_model_len"] == 4096
    stage = RephraseStage(
        RephraseConfig(backend="vllm", llm="mistralai/Mistral-7B-Instruct-v0.2", sampling={"typical_p": 0.9})
    )
    with pytest.raises(ValueError, match="typical_p"):
        from curate.llm.generation import _vllm_pass

        _vllm_pass(None, stage.config, stage.config.sampling.model_dump(), None, 1.0)


def _inputs(root) -> list[dict]:
    """Three short real web documents (a few sentences each) and the broken-records fixture."""
    docs = []
    for d in _owt(3):
        spans = sentence_spans(d["text"])
        end = max(b for a, b in spans if b <= 420)
        docs.append({"id": d["id"], "text": d["text"][:end], "source": "openwebtext"})
    (root / "web.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "broken.jsonl").write_bytes((DATA / "samples" / "broken.jsonl").read_bytes())
    return [{"path": str(root / "web.jsonl")}, {"path": str(root / "broken.jsonl")}]


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm")
    job = {
        "name": "llm-test", "inputs": _inputs(root), "shard_docs": 50, "batch_docs": 8, "workers": 1,
        "max_doc_bytes": 200_000,
        "stages": [
            {"rephrase": {
                "styles": ["medium", "qa"], "chunk_tokens": 60, "n_ctx": 2048,
                "sampling": {"max_tokens": 32, "temperature": 0.7, "typical_p": 0.9, "seed": 7},
            }},
            {"rate": {"max_tokens": 40, "keep_tokens": 256, "n_ctx": 2048}},
            {"select": {"strategy": "top_k", "criterion": "overall", "budget_fraction": 0.5}},
        ],
    }  # fmt: skip
    (root / "job.yaml").write_text(json.dumps(job))
    manifest = run_job(load_job(root / "job.yaml"), out=root / "out")
    return root / "out", manifest


def test_every_document_is_accounted_for_and_no_server_is_left(llm_run):
    out, m = llm_run
    assert m["input"] == 3 + 8 and m["quarantined"] == 7
    assert m["input"] == m["kept"] + sum(m["rejected"].values()) + m["quarantined"]
    kept = _read(out, "kept")
    assert len(kept) == m["kept"] + m["synthetic"]
    assert not _llama_servers()
    llm = json.loads((out / "report.json").read_text())["llm"]  # the report shows ratings and rephrases
    assert (
        all(sum(counts) == llm["rated"] for counts in llm["criteria"].values())
        and sum(llm["domains"].values()) == llm["rated"]
    )
    assert len(llm["rephrases"]) == min(3, m["synthetic"]) and "LLM stages" in (out / "report.html").read_text()


def test_rate_fills_every_dataman_column(llm_run):
    out, m = llm_run
    docs = pl.concat([_read(out, "kept"), _read(out, "rejected")], how="diagonal_relaxed").filter(
        pl.col("parent_id").is_null() if "parent_id" in _read(out, "kept").columns else pl.lit(True)
    )
    assert len(docs) == 4
    # the grammar holds Gemma to the layout, so every document is rated; the values are its own
    assert docs["dataman_error"].is_null().all(), docs["dataman_error"].to_list()
    assert docs["dataman_domain"].is_in(list("ABCDEFGHIJKLMNO")).all()
    for c in CRITERIA:
        assert docs[f"dataman_{c}"].is_between(1, 5).all(), c
    assert (docs["dataman_tokens"] > 0).all()
    rate = next(s for s in m["stages"] if s["stage"] == "rate")
    assert rate["rated"] == 4 and rate["model"] == GEMMA_NAME


def test_rephrase_adds_documents_with_their_parent(llm_run):
    out, m = llm_run
    kept = _read(out, "kept")
    real = kept.filter(pl.col("parent_id").is_null()) if "parent_id" in kept.columns else kept
    everything = pl.concat([real, _read(out, "rejected")], how="diagonal_relaxed")
    for row in everything.iter_rows(named=True):  # each style has a rephrase or says why not
        for style in ("medium", "qa"):
            assert row[f"wrap_{style}"] or style in (row["wrap_error"] or ""), row["id"]
    rephrase = next(s for s in m["stages"] if s["stage"] == "rephrase")
    assert rephrase["sampling"]["typical_p"] == 0.9 and rephrase["generated_tokens"] > 0
    available = sum(real[f"wrap_{s}"].is_not_null().sum() for s in ("medium", "qa"))
    assert m["synthetic"] == min(m["kept"], available) >= 1  # 1:1 when there are rephrases enough
    synthetic = kept.filter(pl.col("parent_id").is_not_null())
    assert len(synthetic) == m["synthetic"]
    for row in synthetic.iter_rows(named=True):
        parent = real.filter(pl.col("id") == row["parent_id"]).row(0, named=True)
        assert row["text"] == parent[f"wrap_{row['wrap_style']}"] and row["wrap_model"] == GEMMA_NAME
        assert row["id"] == f"{row['parent_id']}#wrap-{row['wrap_style']}" and row["source"] == parent["source"]


def test_select_keeps_the_budget_and_says_why(llm_run):
    out, m = llm_run
    select = next(s for s in m["stages"] if s["stage"] == "select")
    assert select["budget_tokens"] == round(0.5 * select["rated_tokens"])
    assert m["rejected"]["select"] >= 1
    assert (
        _read(out, "rejected")
        .filter(pl.col("reject_stage") == "select")["reject_reason"]
        .str.contains("not selected")
        .all()
    )


def test_a_failing_endpoint_marks_rows_and_loses_none(tmp_path):
    port = free_port()  # nothing listens there
    job = {
        "name": "llm-down", "inputs": _inputs(tmp_path), "workers": 1, "max_doc_bytes": 200_000,
        "stages": [
            {"rate": {
                "backend": "openai", "url": f"http://127.0.0.1:{port}/v1", "llm": "none", "tokenizer": gemma_path(),
                "max_retries": 1, "retries": 0,
            }},
            {"select": {"strategy": "uniform", "budget_fraction": 1.0}},
        ],
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    m = run_job(load_job(tmp_path / "job.yaml"), out=tmp_path / "out")
    assert m["input"] == m["kept"] + sum(m["rejected"].values()) + m["quarantined"] == 11
    rejected = _read(tmp_path / "out", "rejected")
    assert len(rejected) == 4 and m["rejected"]["select"] == 4
    assert rejected["dataman_overall"].is_null().all()
    assert rejected["dataman_error"].str.contains("request failed after 2 attempts: ClientConnectorError").all()
    assert rejected["reject_reason"].str.starts_with("not rated by DataMan: request failed").all()


def test_rephrased_shards_are_written_while_another_waits_for_answers(tmp_path):
    """A document's WRAP requests travel as one row (no shuffle) and the runner takes each block
    as it comes, so a finished shard is written while another shard's requests are unanswered:
    the endpoint (a scripted OpenAI-style server) answers the first shard it is asked about at
    once and holds the other shard's requests until a shard file exists. Behind a shuffle, or
    with the iterator's one-block lookahead, none could, and the hold would time out."""
    import asyncio
    import threading

    from aiohttp import web

    work = tmp_path / "out" / "work"
    seen = {"first": None, "held": 0, "a_shard_was_written": []}

    async def chat(request):
        prompt = (await request.json())["messages"][-1]["content"]
        group = "zebra" if "zebra" in prompt else "river"  # the two shards' documents
        seen["first"] = seen["first"] or group
        if group != seen["first"]:
            seen["held"] += 1
            for _ in range(300):
                if any(work.glob("shard-*.parquet")):
                    break
                await asyncio.sleep(0.1)
            seen["a_shard_was_written"].append(any(work.glob("shard-*.parquet")))
        return web.json_response(
            {
                "choices": [{"message": {"role": "assistant", "content": "Put simply, it is a short text."}}],
                "usage": {"completion_tokens": 8},
            }
        )

    loop = asyncio.new_event_loop()
    runner = web.AppRunner(web.Application())
    runner.app.add_routes([web.post("/v1/chat/completions", chat)])
    port = free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    texts = ["A short note about rivers.", "Bridges cross rivers.", "A zebra has stripes.", "Every zebra grazes."]
    (tmp_path / "docs.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts))
    )
    job = {
        "name": "llm-stream", "inputs": [{"path": str(tmp_path / "docs.jsonl")}], "shard_docs": 2, "batch_docs": 2,
        "workers": 1,
        "stages": [{"rephrase": {
            "backend": "openai", "url": f"http://127.0.0.1:{port}/v1", "llm": "scripted", "tokenizer": gemma_path(),
            "styles": ["easy", "qa"], "batch_size": 2,
        }}],
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    try:
        m = run_job(load_job(tmp_path / "job.yaml"), out=tmp_path / "out")
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
    assert seen["held"] == 4 and all(seen["a_shard_was_written"])
    assert m["input"] == m["kept"] == 4 and m["synthetic"] == 4
    kept = _read(tmp_path / "out", "kept")
    assert kept.filter(pl.col("parent_id").is_not_null())["text"].to_list() == ["Put simply, it is a short text."] * 4
