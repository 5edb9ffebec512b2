"""Per-core cost of every step of a crawl's curation, in one process, as CPU seconds per MB of text:
the figures docs/scale.md multiplies up to a Common Crawl snapshot.

    .venv/bin/python benchmarks/scale.py [--copies 1] [--models out/kenlm]

On the shipped web sample (OpenWebText + Common Crawl pages, 1,670 documents, 7.5 MB) repeated
`--copies` times, each step runs over every document in this process, timed in CPU seconds
(`time.process_time`, all threads: a shared machine slows the wall clock, not the CPU work):
langid (fastText lid.176), perplexity (the demo's Wikipedia KenLM model), harmful (the demo's
calibrated harmful model with its benign reference and web guard: three KenLM models), BPE
tokenization for the index (vocab 32,000, trained here on the sample, one thread) and exact-substring dedup
over the built index (`indexes.dedup.dedup_table`, k = 50). Every document is scored by every
model (an upper bound: a job with `models: {en: ...}` scores only that language's pages).
The suffix sort is timed by benchmarks/index.py (indexes/README.md). The baseline is the
perplexity step: each row prints its cost as a ratio to it, measured in the same run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# per-core figures: the BPE encodes on this thread only (its thread pool's idle spinning would count
# as CPU time on a loaded machine)
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from curate.langid import LangidConfig, LangidStage  # noqa: E402
from curate.perplexity.config import HarmfulConfig, PerplexityConfig  # noqa: E402
from curate.perplexity.stages import HarmfulFilter, PerplexityFilter  # noqa: E402
from curate.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from indexes.build import build_index  # noqa: E402
from indexes.dedup import dedup_table  # noqa: E402

BATCH = 256


def corpus(copies: int) -> list[dict]:
    docs = [
        json.loads(line)
        for f in sorted((REPO / "data" / "web").glob("*.jsonl.gz"))
        for line in gzip.open(f, "rt", encoding="utf-8")
    ]
    return [{"id": f"{d['id']}#{c}", "text": d["text"]} for c in range(copies) for d in docs]


def cpu_seconds(step: Callable[[], object]) -> float:
    t0 = time.process_time()
    step()
    return time.process_time() - t0


def batched(score: Callable[[list[str]], object], texts: list[str]) -> Callable[[], None]:
    return lambda: [score(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--models", default=str(REPO / "out" / "kenlm"), help="the demo job's KenLM models")
    args = parser.parse_args()
    models = Path(args.models)
    if not (models / "wiki").is_dir() or not (models / "harmful").is_dir():
        sys.exit(f"benchmarks/scale.py: no wiki and harmful models under {models}: run `curate run jobs/demo.yaml`")
    docs = corpus(args.copies)
    texts = [d["text"] for d in docs]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"{len(docs):,} documents, {mb:.1f} MB of text, {mb * 1e6 / len(docs):,.0f} bytes per document")

    seconds: dict[str, float] = {}
    langid = LangidStage(LangidConfig())
    langid.setup()
    seconds["langid"] = cpu_seconds(batched(langid.score, texts))
    perplexity = PerplexityFilter(PerplexityConfig(model=str(models / "wiki")))
    perplexity.setup()
    seconds["perplexity"] = cpu_seconds(batched(perplexity.score, texts))
    harmful = HarmfulFilter(HarmfulConfig(model=str(models / "harmful")))
    harmful.setup()
    seconds["harmful"] = cpu_seconds(batched(harmful.score, texts))

    with tempfile.TemporaryDirectory() as tmp:
        tok_path = Path(tmp) / "tokenizer.json"
        train_tokenizer(texts, tok_path, vocab_size=32000)
        tokenizer = load_tokenizer(tok_path)
        ids: list[list[int]] = []
        seconds["tokenize (index)"] = cpu_seconds(
            lambda: [ids.extend(tokenizer.encode_batch(texts[i : i + BATCH])) for i in range(0, len(texts), BATCH)]
        )
        tokens = sum(len(x) for x in ids)
        kept = Path(tmp) / "kept.parquet"
        pq.write_table(pa.Table.from_pylist(docs), kept)
        card = build_index([str(kept)], tok_path, Path(tmp) / "index", log=lambda *a: None)
        index_bytes = sum(p.stat().st_size for p in (Path(tmp) / "index").iterdir() if p.is_file())
        seconds["dedup (k=50, on the index)"] = cpu_seconds(lambda: dedup_table(Path(tmp) / "index", 50))

    print(f"BPE (vocab 32,000): {tokens:,} tokens, {mb * 1e6 / tokens:.2f} bytes of text per token")
    print(
        f"index: {index_bytes / 1e6:.1f} MB on disk for {card['tokens']:,} tokens: "
        f"{index_bytes / card['tokens']:.2f} bytes per token, {index_bytes / (mb * 1e6):.2f} bytes per byte of text"
    )
    base = seconds["perplexity"]
    head = f"{'CPU s':>8s} {'CPU s/GB':>10s} {'MB/s per core':>14s} {'docs/s per core':>16s} {'ratio':>6s}"
    print(f"\n{'step':28s} {head}")
    for name, s in seconds.items():
        print(f"{name:28s} {s:8.2f} {s / mb * 1e3:10.0f} {mb / s:14.2f} {len(docs) / s:16.0f} {s / base:6.2f}")
    print("ratio: the step's CPU seconds / the perplexity step's, same documents, same run")


if __name__ == "__main__":
    main()
