"""Perplexity stage throughput: `curate run` (Ray, actors, batched) against a plain
single-process loop that reads the same file and calls kenlm line by line as CCNet does.

    .venv/bin/python benchmarks/perplexity.py [--copies 60]

The corpus is the shipped web sample (OpenWebText + Common Crawl, 1,670 documents) repeated
`--copies` times with fresh ids; the model is a CCNet-recipe model trained on the shipped
Wikipedia sample. Both sides score every document; the ratio is baseline time / curate time.
The langid stage's own speed (fastText lid.176.ftz, one process, same documents) is printed beside.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kenlm
import sentencepiece as spm

from curate import lm
from curate.langid import LangidConfig, LangidStage
from curate.normalize import normalize_reference

REPO = Path(__file__).resolve().parent.parent


def make_corpus(path: Path, copies: int) -> tuple[int, int]:
    docs = [
        json.loads(line)
        for f in sorted((REPO / "data" / "web").glob("*.jsonl.gz"))
        for line in gzip.open(f, "rt", encoding="utf-8")
    ]
    n = size = 0
    with open(path, "w", encoding="utf-8") as out:
        for copy in range(copies):
            for doc in docs:
                out.write(
                    json.dumps(
                        {"id": f"{doc['id']}#{copy}", "text": doc["text"], "source": doc["source"]}, ensure_ascii=False
                    )
                    + "\n"
                )
                n += 1
                size += len(doc["text"].encode("utf-8"))
    return n, size


def ccnet_loop(corpus: Path, model_dir: Path) -> list[float]:
    """The baseline: what cc_net's DocLM does per document, in one process."""
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / lm.SP_MODEL))
    model = kenlm.Model(str(model_dir / lm.KENLM_BINARY))
    out = []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            log_score, length = 0.0, 0
            for text_line in doc["text"].split("\n"):
                pieces = sp.encode_as_pieces(normalize_reference(text_line))
                log_score += model.score(" ".join(pieces))
                length += len(pieces) + 1
            out.append(10.0 ** (-log_score / length))
    return out


def langid_loop(corpus: Path) -> int:
    """The langid stage over the corpus in one process, in batches as an actor gets them."""
    stage = LangidStage(LangidConfig())
    stage.setup()
    n = 0
    with open(corpus, encoding="utf-8") as f:
        batch = []
        for line in f:
            batch.append(json.loads(line)["text"])
            if len(batch) == 256:
                n += len(stage.score(batch)["language"])
                batch = []
        n += len(stage.score(batch)["language"]) if batch else 0
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        corpus = tmp / "corpus.jsonl"
        n, size = make_corpus(corpus, args.copies)
        model_dir = tmp / "wiki"
        lm.train([lm.source(str(REPO / "data" / "wiki"))], model_dir, vocab=16000, log=lambda *_: None)
        print(f"corpus: {n} documents, {size / 1e6:.1f} MB of text; model: {model_dir.name} (order 5, 16k pieces)")

        t0 = time.perf_counter()
        baseline = ccnet_loop(corpus, model_dir)
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert langid_loop(corpus) == n
        t_langid = time.perf_counter() - t0

        job = tmp / "job.yaml"
        job.write_text(
            json.dumps(
                {
                    "name": "bench",
                    "inputs": [{"path": str(corpus)}],
                    "shard_docs": 2000,
                    "batch_docs": 256,
                    "max_doc_bytes": 10_000_000,
                    "stages": [{"perplexity": {"model": str(model_dir)}}],
                }
            )
        )
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "curate.cli", "run", str(job), "--out", str(tmp / "out")],
            capture_output=True,
            text=True,
        )
        t_run = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
        manifest = json.loads((tmp / "out" / "manifest.json").read_text())
        assert manifest["input"] == n == len(baseline), "both sides must score every document"

    rows = [
        ("plain CCNet loop (1 process)", t_base),
        ("curate run (Ray, incl. start-up)", t_run),
        ("langid alone (1 process)", t_langid),
    ]
    for name, t in rows:
        print(f"{name:34s} {t:7.1f} s  {n / t:8.0f} docs/s  {size / 1e6 / t:6.2f} MB/s")
    print(f"ratio (baseline time / curate time): {t_base / t_run:.2f}x")


if __name__ == "__main__":
    main()
