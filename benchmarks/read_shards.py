"""CPU of reading one input file's shards, against one sequential read of the file, in one run:

    .venv/bin/python benchmarks/read_shards.py [--copies 20 100] [--shard-docs 2000]

The corpus is `benchmarks/perplexity.py`'s (the shipped web sample repeated `--copies` times, one
.jsonl), and the same gzipped. For each it prints the CPU seconds (this process, user + system) of
- planning: `plan_shards` (one pass that counts the records and notes where each shard starts),
  and for the .gz `index_gz_shards` (its seek index, another pass, in C);
- one sequential read: `read_shard` over the whole file as one shard (the baseline);
- the planned shards, each read from its offset (what `curate run`'s read tasks do); a .gz once
  with its seek index (what `curate run` does) and once without (decompressed up to the offset);
- the same shards each read from the file's start (how they were read before issue 14);
and the shard reads as ratios to the sequential read (1.0x: no re-reading).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from perplexity import make_corpus

from curate.documents import ShardSpec, count_records, index_gz_shards, plan_shards, read_shard

MAX_DOC_BYTES = 1 << 30


def cpu(work: Callable[[], object]) -> float:
    t0 = time.process_time()
    work()
    return time.process_time() - t0


def measure(path: Path, shard_docs: int, index_dir: Path) -> None:
    def reads(shards: list[ShardSpec]) -> str:
        seconds = cpu(lambda: [read_shard(s, MAX_DOC_BYTES) for s in shards])
        return f"{seconds:7.2f} s ({seconds / sequential:5.2f}x)"

    planning = cpu(lambda: plan_shards([(path, None)], shard_docs))
    shards = plan_shards([(path, None)], shard_docs)
    whole = ShardSpec(0, str(path), 0, count_records(path), None)
    from_start = [dataclasses.replace(s, offset=0, line=0) for s in shards]
    sequential = cpu(lambda: read_shard(whole, MAX_DOC_BYTES))
    print(
        f"{path.name:<16} {path.stat().st_size / 1e6:4.0f} MB {len(shards):3d} shards  plan {planning:5.2f} s  "
        f"one read {sequential:5.2f} s  shards from the start {reads(from_start)}"
    )
    if path.name.endswith(".gz"):
        indexing = cpu(lambda: index_gz_shards(shards, index_dir))
        indexed = index_gz_shards(shards, index_dir)
        print(f"{'':>33}index {indexing:5.2f} s  shards from offsets, with the index {reads(indexed)}")
        print(f"{'':>33}shards from offsets, without an index (decompressed up to them) {reads(shards)}")
    else:
        print(f"{'':>33}shards from offsets {reads(shards)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, nargs="+", default=[20])
    parser.add_argument("--shard-docs", type=int, default=2000)  # benchmarks/perplexity.py's job
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for copies in args.copies:
            corpus = Path(tmp) / f"web-x{copies}.jsonl"
            make_corpus(corpus, copies)
            with open(corpus, "rb") as f, gzip.open(f"{corpus}.gz", "wb", compresslevel=6) as out:
                shutil.copyfileobj(f, out)
            for path in (corpus, Path(f"{corpus}.gz")):
                measure(path, args.shard_docs, Path(tmp) / "index")


if __name__ == "__main__":
    main()
