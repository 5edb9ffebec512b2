"""LLM stage benchmark, on the local llama.cpp server with Gemma 3 270M.

1. Pipeline overhead: the `rate` stage (ray.data.llm HTTP processor inside a Ray Data plan) on N
   documents against direct sequential calls to the same server with the same requests
   (DataMan prompt, greedy, the answer grammar). Greedy decoding makes both generate the same
   answers, which is checked; the ratio is pipeline time / direct time (target <= 1.1).
2. The distilled rater (fitted on those LLM ratings) rating the 1,000 OpenWebText documents,
   in documents/s against the LLM rater's documents/s from step 1.

    .venv/bin/python benchmarks/llm.py [--docs 24 --chars 600 --rounds 2]

The server is warmed on a document outside the measured ones, so that neither side starts with
its first prompt already cached. Rounds alternate direct and stage runs; the first stage run also
pays Ray Data's one-off start (worker imports, internal actors), reported as the cold ratio.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import polars as pl
import pyarrow as pa
import ray

from curate.llm import dataman
from curate.llm.chunking import head_and_tail
from curate.llm.config import RateConfig
from curate.llm.distill import DistilledActor, DistilledRater, distill
from curate.llm.prompts import DATAMAN_SYSTEM, dataman_prompt
from curate.llm.stages import RateStage
from curate.ray_runtime import init_ray
from curate.stages import Resources
from curate.tokenizer import load_tokenizer

OWT = Path(__file__).resolve().parent.parent / "data" / "web" / "openwebtext_1k.jsonl.gz"


def documents(n: int | None, chars: int | None) -> pa.Table:
    with gzip.open(OWT, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f][:n]
    texts = [d["text"][:chars] if chars else d["text"] for d in docs]
    return pa.table({
        "id": [d["id"] for d in docs], "text": pa.array(texts, pa.large_string()),
        "source": ["openwebtext"] * len(docs),
        "error": pa.nulls(len(docs), pa.string()), "input_row": list(range(len(docs))), "_shard": [0] * len(docs),
    })  # fmt: skip


def direct(stage: RateStage, texts: list[str]) -> tuple[float, list[str], int]:
    """The same requests, one after another, straight to the server."""
    tok = load_tokenizer(stage.tokenizer)
    answers, tokens = [], 0
    t0 = time.perf_counter()
    for text in texts:
        prompt = dataman_prompt(head_and_tail(text, tok, stage.config.keep_tokens)[0])
        body = {
            "model": stage.model,
            "messages": [{"role": "system", "content": DATAMAN_SYSTEM}, {"role": "user", "content": prompt}],
            **stage.sampling(0),
        }
        req = urllib.request.Request(
            f"{stage.url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=600) as r:
            reply = json.load(r)
        answers.append(reply["choices"][0]["message"]["content"])
        tokens += reply["usage"]["completion_tokens"]
    return time.perf_counter() - t0, answers, tokens


def through_stage(stage: RateStage, table: pa.Table) -> tuple[float, pl.DataFrame]:
    t0 = time.perf_counter()
    ds = stage.plan(ray.data.from_arrow(table), len(table), Resources(cpus=0.5, concurrency=1))
    rows = pl.from_arrow(pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow", batch_size=None))))
    return time.perf_counter() - t0, rows.sort("input_row")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--chars", type=int, default=600, help="documents cut to this many characters (CPU time)")
    ap.add_argument("--rounds", type=int, default=2, help="direct and stage runs alternate; the best of each counts")
    args = ap.parse_args()
    table = documents(args.docs + 1, args.chars)
    warm, table = table["text"][-1].as_py(), table.slice(0, args.docs)
    texts = table["text"].to_pylist()
    stage = RateStage(RateConfig(max_tokens=40, retries=0, batch_size=args.docs))
    directs, stages = [], []
    with stage.serving():
        init_ray()
        direct(stage, [warm])  # warm the server once for both
        for _ in range(args.rounds):
            t, answers, tokens = direct(stage, texts)
            directs.append(t)
            t, rows = through_stage(stage, table)
            stages.append(t)
    same = [dataman.parse_answer(a).scores["overall"] for a in answers] == rows["dataman_overall"].to_list()
    print(
        f"rate, {args.docs} documents of <= {args.chars} chars, Gemma 3 270M on llama.cpp "
        f"({tokens} generated tokens per run)"
    )
    for i, (d, s) in enumerate(zip(directs, stages)):
        print(
            f"  round {i + 1}: direct {d:7.2f} s ({tokens / d:5.1f} tokens/s), "
            f"stage {s:7.2f} s ({tokens / s:5.1f} tokens/s): {s / d:.3f}x"
        )
    print(
        f"  pipeline/direct time ratio: cold (first stage run) {stages[0] / directs[0]:.3f}, "
        f"best of each {min(stages) / min(directs):.3f} (target <= 1.1)"
    )
    print(f"  same ratings both ways: {same}")

    with tempfile.TemporaryDirectory() as tmp:
        rows.write_parquet(Path(tmp) / "rated.parquet")
        card = distill([str(Path(tmp) / "rated.parquet")], str(Path(tmp) / "rater"))
        corpus = documents(None, None)
        t0 = time.perf_counter()
        ratings = DistilledRater(str(Path(tmp) / "rater")).rate(corpus["text"].to_pylist())
        t_rater = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = DistilledActor(str(Path(tmp) / "rater"), stage.tokenizer, stage.config.keep_tokens)(corpus)
        t_actor = time.perf_counter() - t0
    assert len(ratings["dataman_overall"]) == len(corpus) and out["dataman_overall"].null_count == 0
    llm_rate = args.docs / min(stages)
    print(f"distilled rater, {len(corpus)} full OpenWebText documents, one process:")
    print(
        f"  ratings only            : {t_rater:6.2f} s = {len(corpus) / t_rater:6.0f} docs/s "
        f"({len(corpus) / t_rater / llm_rate:.0f}x the LLM rater's {llm_rate:.2f} docs/s)"
    )
    print(
        f"  + Gemma token counts     : {t_actor:6.2f} s = {len(corpus) / t_actor:6.0f} docs/s "
        "(the stage's dataman_tokens, for select budgets)"
    )
    print(
        f"  held-out agreement with the LLM ({card['held_out']} of {card['documents']} documents, "
        "too few to mean much):"
    )
    print("  " + json.dumps({k: v for k, v in card["agreement_with_llm"].items() if k in ("domain", "overall")}))
    ray.shutdown()


if __name__ == "__main__":
    main()
