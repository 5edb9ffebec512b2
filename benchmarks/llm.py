"""LLM stage benchmark, on the local llama.cpp server with Gemma 3 270M.

1. Pipeline overhead: the `rate` stage (ray.data.llm HTTP processor inside a Ray Data plan) on N
   documents against direct sequential calls to the same server with the same requests
   (DataMan prompt, greedy, the answer grammar). Greedy decoding makes both generate the same
   answers, which is checked; the ratio is pipeline time / direct time (target <= 1.1).
   The benchmark fails (exit 1) unless every round's stage ratings (domain and all 14 criteria)
   equal the direct answers' parsed ratings, document by document.
2. The distilled rater (fitted on those LLM ratings) on the same N documents, in documents/s
   against the LLM rater's documents/s from step 1 (best of several repetitions); then its
   throughput alone on the 1,000 full OpenWebText documents.

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
from curate.llm.prompts import CRITERIA, DATAMAN_SYSTEM, dataman_prompt
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


def rating_differences(answers: list[str], rows: pl.DataFrame) -> list[str]:
    """Where the stage's ratings differ from the direct answers' parsed ratings (an unparseable
    answer must be unrated on both sides)."""
    out = []
    for answer, row in zip(answers, rows.iter_rows(named=True)):
        try:
            parsed = dataman.parse_answer(answer)
            want = {"domain": parsed.domain, **parsed.scores}
        except dataman.AnswerError:
            want = {"domain": None, **{c: None for c in CRITERIA}}
        got = {"domain": row["dataman_domain"], **{c: row[f"dataman_{c}"] for c in CRITERIA}}
        if got != want:
            out.append(f"{row['id']}: stage {got} != direct {want}")
    if len(answers) != len(rows):
        out.append(f"{len(rows)} rows from the stage for {len(answers)} documents")
    return out


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=24)
    ap.add_argument("--chars", type=int, default=600, help="documents cut to this many characters (CPU time)")
    ap.add_argument("--rounds", type=int, default=2, help="direct and stage runs alternate; the best of each counts")
    ap.add_argument(
        "--repeat", type=int, default=5, help="repetitions of the distilled rater's timing on the same documents"
    )
    args = ap.parse_args()
    table = documents(args.docs + 1, args.chars)
    warm, table = table["text"][-1].as_py(), table.slice(0, args.docs)
    texts = table["text"].to_pylist()
    stage = RateStage(RateConfig(max_tokens=40, retries=0, batch_size=args.docs))
    directs, stages = [], []
    with stage.serving():
        init_ray()
        direct(stage, [warm])  # warm the server once for both
        direct_answers, stage_rows = [], []
        for _ in range(args.rounds):
            t, answers, tokens = direct(stage, texts)
            directs.append(t), direct_answers.append(answers)
            t, rows = through_stage(stage, table)
            stages.append(t), stage_rows.append(rows)
    differences = [d for answers, rows in zip(direct_answers, stage_rows) for d in rating_differences(answers, rows)]
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
    print(f"  same ratings both ways (domain and 14 criteria, every document, every round): {not differences}")
    if differences:
        raise SystemExit("ratings differ between the stage and direct calls:\n" + "\n".join(differences[:10]))

    llm_rate = args.docs / min(stages)
    with tempfile.TemporaryDirectory() as tmp:
        rows.write_parquet(Path(tmp) / "rated.parquet")
        card = distill([str(Path(tmp) / "rated.parquet")], str(Path(tmp) / "rater"))
        rater = DistilledRater(str(Path(tmp) / "rater"))
        actor = DistilledActor(str(Path(tmp) / "rater"), stage.tokenizer, stage.config.keep_tokens)
        t_same = best_of(lambda: rater.rate(texts), args.repeat)
        t_same_actor = best_of(lambda: actor(table), args.repeat)
        corpus = documents(None, None)
        t0 = time.perf_counter()
        ratings = rater.rate(corpus["text"].to_pylist())
        t_rater = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = actor(corpus)
        t_actor = time.perf_counter() - t0
    assert len(ratings["dataman_overall"]) == len(corpus) and out["dataman_overall"].null_count == 0
    print(f"distilled rater against the LLM rater on the same {args.docs} documents (best of {args.repeat}):")
    print(
        f"  ratings only            : {args.docs / t_same:8.0f} docs/s = {args.docs / t_same / llm_rate:.0f}x "
        f"the LLM rater's {llm_rate:.2f} docs/s"
    )
    print(
        f"  + Gemma token counts     : {args.docs / t_same_actor:8.0f} docs/s = "
        f"{args.docs / t_same_actor / llm_rate:.0f}x (the stage's dataman_tokens, for select budgets)"
    )
    print(f"distilled rater alone, {len(corpus)} full OpenWebText documents (longer than the ones above):")
    print(f"  ratings only            : {t_rater:6.2f} s = {len(corpus) / t_rater:6.0f} docs/s")
    print(f"  + Gemma token counts     : {t_actor:6.2f} s = {len(corpus) / t_actor:6.0f} docs/s")
    print(
        f"  held-out agreement with the LLM ({card['held_out']} of {card['documents']} documents, "
        "too few to mean much):"
    )
    print("  " + json.dumps({k: v for k, v in card["agreement_with_llm"].items() if k in ("domain", "overall")}))
    ray.shutdown()


if __name__ == "__main__":
    main()
