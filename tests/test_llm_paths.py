"""The LLM stages' own logic on paths a real small model rarely takes, through whole jobs against a
scripted OpenAI-style endpoint (a test double of the server, beside the real llama.cpp tests of
tests/test_llm_local.py): DataMan's re-ask of an unparseable answer and its `dataman_answer`
fallback, `curate rate distill` and `backend: distilled` in a job, a WRAP `custom` style with a
`ratio`, and the sampling settings as the endpoint received them. The slow test at the end runs
`curate llm serve` and checks that `typical_p` reaches llama.cpp's sampler."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from aiohttp import web

from curate.cli import main
from curate.llm.distill import DistilledRater
from curate.llm.generation import MANY, NO_REQUEST
from curate.llm.prompts import CRITERIA, DATAMAN_CRITERIA, WRAP_PREAMBLE
from curate.llm.server import free_port
from curate.local_model import gemma_path
from pipelines.runner import run_job
from pipelines.spec import load_job

GOOD, BAD, NEVER = "quokka", "wombat", "zebra"  # marker words: rated 5 / rated 1 / never parseable
UNPARSEABLE = "Sure! This text reads well and I like it."
REPHRASE = "Rivers run down to the sea and feed the fields on their way."


def _answer(rating: int, domain: str) -> str:
    """A DataMan answer in the annotation prompt's own layout."""
    lines = [f"[{i}]{name}: {rating}/5" for i, (_, name, _) in enumerate(DATAMAN_CRITERIA, 1)]
    return f"Domain: [{domain}]\n" + "\n".join(lines)


class Endpoint:
    """An OpenAI chat/completions endpoint in a thread, recording every request body. Rating
    prompts get an unparseable answer the first time they are asked (always, for NEVER), then a
    rating that depends on the document's marker word; other prompts get REPHRASE."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.asked: Counter[str] = Counter()
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(web.Application())
        self.runner.app.add_routes([web.post("/v1/chat/completions", self._chat)])
        self.port = free_port()
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        prompt = body["messages"][-1]["content"]
        self.asked[prompt] += 1
        if "Overall Score" not in prompt:
            text = REPHRASE
        elif NEVER in prompt or self.asked[prompt] == 1:
            text = UNPARSEABLE
        else:
            text = _answer(5, "E") if GOOD in prompt else _answer(1, "L")
        return web.json_response(
            {"choices": [{"message": {"role": "assistant", "content": text}}], "usage": {"completion_tokens": 9}}
        )

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def endpoint():
    e = Endpoint()
    yield e
    e.close()


def _docs(path: Path, words: list[str], start: int = 0) -> list[dict]:
    docs = [
        {
            "id": f"d{start + i:03d}",
            "text": f"Note {start + i}. The {w} lives near the river. Every {w} eats grass at dawn.",
            "source": "s",
        }
        for i, w in enumerate(words)
    ]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return docs


def _job(root: Path, name: str, inputs: Path, stages: list[dict]) -> Path:
    job = {"name": name, "inputs": [{"path": str(inputs)}], "shard_docs": 12, "batch_docs": 12, "workers": 1}
    (root / f"{name}.yaml").write_text(json.dumps({**job, "stages": stages}))
    return root / f"{name}.yaml"


def _read(out: Path, sub: str) -> pl.DataFrame:
    files = sorted((out / sub).glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


@pytest.fixture(scope="module")
def rated(endpoint, tmp_path_factory):
    """A rate + select job over 20 documents that parse on the re-ask and 2 that never do."""
    root = tmp_path_factory.mktemp("rated")
    docs = _docs(root / "docs.jsonl", [GOOD, BAD] * 10 + [NEVER] * 2)
    rate = {
        "backend": "openai", "url": endpoint.url, "llm": "scripted", "tokenizer": gemma_path(),
        "retries": 1, "retry_temperature": 0.6, "seed": 77, "batch_size": 4,
    }  # fmt: skip
    select = {"strategy": "uniform", "budget_fraction": 1.0}
    before = len(endpoint.requests)
    manifest = run_job(
        load_job(_job(root, "rate", root / "docs.jsonl", [{"rate": rate}, {"select": select}])), root / "out"
    )
    return {"out": root / "out", "manifest": manifest, "docs": docs, "requests": endpoint.requests[before:]}


def test_unparseable_answers_are_reasked_with_sampling(rated):
    """Every document is asked twice: greedily with the job's seed, then at retry_temperature with
    the next seed; documents whose second answer parses are rated with what it says."""
    by_prompt: dict[str, list[dict]] = {}
    for body in rated["requests"]:
        by_prompt.setdefault(body["messages"][-1]["content"], []).append(body)
    assert len(by_prompt) == 22 and all(len(asks) == 2 for asks in by_prompt.values())
    for first, second in by_prompt.values():
        assert (first["temperature"], first["seed"], second["temperature"], second["seed"]) == (0.0, 77, 0.6, 78)
        assert first["messages"][0]["role"] == "system" and "grammar" not in first  # the grammar is local-only
        assert NO_REQUEST not in first and MANY not in first
    docs = pl.concat([_read(rated["out"], "kept"), _read(rated["out"], "rejected")], how="diagonal_relaxed")
    rated_docs = docs.filter(~pl.col("text").str.contains(NEVER))
    assert len(rated_docs) == 20 and rated_docs["dataman_error"].is_null().all()
    for row in rated_docs.iter_rows(named=True):
        want, domain = (5, "E") if GOOD in row["text"] else (1, "L")
        assert [row[f"dataman_{c}"] for c in CRITERIA] == [want] * 14 and row["dataman_domain"] == domain
        assert row["dataman_answer"] is None
    assert rated["manifest"]["stages"][0]["rated"] == 20


def test_an_answer_that_never_parses_is_kept_raw_and_the_document_unrated(rated):
    rejected = _read(rated["out"], "rejected")
    never = rejected.filter(pl.col("text").str.contains(NEVER))
    assert len(never) == 2 and rated["manifest"]["rejected"] == {"rate": 0, "select": 2}
    assert never["dataman_answer"].to_list() == [UNPARSEABLE] * 2
    assert never["dataman_error"].str.starts_with("unparseable answer: ").all()
    assert all(never[f"dataman_{c}"].is_null().all() for c in CRITERIA)
    assert never["reject_reason"].str.starts_with("not rated by DataMan: unparseable answer").all()


def test_rate_distill_then_backend_distilled_in_a_job(rated, tmp_path, capsys):
    """`curate rate distill` on the run's ratings, then a job rating new documents with it: the
    stage's columns are the rater's own predictions, and select keeps the well-rated half."""
    assert main(["rate", "distill", "--ratings", str(rated["out"]), "--out", str(tmp_path / "rater")]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["documents"] == 20 and card["held_out"] == 4  # the 2 unrated documents are not learnt from
    assert card["agreement_with_llm"]["overall"]["accuracy"] == 1.0

    docs = _docs(tmp_path / "new.jsonl", [BAD, GOOD] * 4, start=100)
    rate = {"backend": "distilled", "distilled": str(tmp_path / "rater")}
    select = {"strategy": "top_k", "criterion": "overall", "budget_fraction": 0.5, "stratify": False}
    job = _job(tmp_path, "distilled", tmp_path / "new.jsonl", [{"rate": rate}, {"select": select}])
    manifest = run_job(load_job(job), tmp_path / "out")
    assert manifest["stages"][0]["model"] == f"distilled:{tmp_path / 'rater'}" and manifest["stages"][0]["rated"] == 8
    kept, rejected = _read(tmp_path / "out", "kept"), _read(tmp_path / "out", "rejected")
    both = pl.concat([kept, rejected], how="diagonal_relaxed").sort("id")
    want = DistilledRater(str(tmp_path / "rater")).rate(both["text"].to_list())
    for column, values in want.items():
        assert both[column].to_list() == values.tolist(), column
    assert sorted(kept["id"]) == sorted(d["id"] for d in docs if GOOD in d["text"])
    assert both["dataman_overall"].to_list() == [1, 5] * 4 and (both["dataman_tokens"] > 0).all()


def test_rephrase_custom_style_and_ratio_in_a_job(endpoint, tmp_path):
    """WRAP with a `custom` template beside `easy`, 2:1 real:synthetic; the endpoint sees the
    template filled with the document and the job's sampling settings, `typical_p` included."""
    docs = _docs(tmp_path / "docs.jsonl", [GOOD, BAD, GOOD, BAD])
    template = "Say this again for a child: {text}"
    rephrase = {
        "backend": "openai", "url": endpoint.url, "llm": "scripted", "tokenizer": gemma_path(),
        "styles": ["custom", "easy"], "template": template, "ratio": [2, 1],
        "sampling": {"temperature": 0.3, "top_p": 0.9, "typical_p": 0.42, "max_tokens": 40, "seed": 5},
    }  # fmt: skip
    before = len(endpoint.requests)
    manifest = run_job(
        load_job(_job(tmp_path, "wrap", tmp_path / "docs.jsonl", [{"rephrase": rephrase}])), tmp_path / "o"
    )
    requests = endpoint.requests[before:]
    prompts = sorted(body["messages"][-1]["content"] for body in requests)
    custom = sorted(template.replace("{text}", d["text"]) for d in docs)
    assert len(requests) == 8 and [p for p in prompts if not p.startswith(WRAP_PREAMBLE)] == custom
    for body in requests:
        assert {k: body[k] for k in ("temperature", "top_p", "typical_p", "max_tokens", "seed")} == {
            "temperature": 0.3, "top_p": 0.9, "typical_p": 0.42, "max_tokens": 40, "seed": 5,
        }  # fmt: skip
        assert NO_REQUEST not in body and MANY not in body
    assert manifest["kept"] == 4 and manifest["synthetic"] == 2  # round(4 * 1 / 2), and at least one
    kept = _read(tmp_path / "o", "kept")
    synthetic = kept.filter(pl.col("parent_id").is_not_null())
    assert len(synthetic) == 2 and set(synthetic["wrap_style"]) <= {"custom", "easy"}
    assert (synthetic["text"] == REPHRASE).all() and set(synthetic["parent_id"]) <= {d["id"] for d in docs}
    assert (synthetic["id"] == synthetic["parent_id"] + "#wrap-" + synthetic["wrap_style"]).all()
    assert manifest["stages"][0]["ratio"] == [2, 1]


# ---------------------------------------------------------------- the real llama.cpp server (slow)


def _chat(url: str, **sampling) -> str:
    body = {"messages": [{"role": "user", "content": "Write one sentence about rivers."}], "max_tokens": 12, **sampling}
    request = urllib.request.Request(
        f"{url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.load(r)["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_llm_serve_runs_gemma_and_typical_p_reaches_the_sampler():
    """`curate llm serve` serves the packaged Gemma 3 270M until SIGTERM. Sampled at temperature
    1.5 with three seeds, typical_p 0.01 leaves one token per step (one output), typical_p 1.0 does
    not: the field reaches llama.cpp's sampler rather than being dropped by the server."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [str(Path(sys.executable).parent / "curate"), "llm", "serve", "--port", str(port), "--n-ctx", "512"]
    proc = subprocess.Popen(
        [*command, "--threads", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving gemma") and f"http://127.0.0.1:{port}/v1" in line, line
        url = f"http://127.0.0.1:{port}/v1"
        with urllib.request.urlopen(f"{url}/models", timeout=30) as r:
            assert json.load(r)["data"]
        typical = {_chat(url, temperature=1.5, typical_p=0.01, seed=s) for s in (1, 2, 3)}
        free = {_chat(url, temperature=1.5, typical_p=1.0, seed=s) for s in (1, 2, 3)}
        assert len(typical) == 1 and len(free) > 1, (typical, free)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
    time.sleep(0.5)
    with pytest.raises(OSError):  # the server went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5)
