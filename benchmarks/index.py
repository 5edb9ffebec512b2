"""Index benchmark: curate against the infini-gram 2.6.0 wheel, on the same tokenized files.

    .venv/bin/python benchmarks/index.py [--sizes 1e6,1e7,1e8] [--queries 1000] [--repeat 3] [--corpus chunks]

Corpora, tokenized with a byte-level BPE (vocab 32,000) trained on the shipped web and wiki samples:
- `chunks` (default): documents of 3-31 random 64-token chunks (drawn with replacement) of the
  shipped samples, so 10M and 100M tokens are real text, repeated and shuffled in short pieces;
- `python-source`: the .py files of this environment's site-packages, one document per file in
  path order, up to the size asked: real files, with the long exact duplicates (vendored copies,
  licence headers, generated code) that an undeduplicated corpus has. The tables may differ
  there: infini-gram's merge compares suffixes only up to 100 KB, so suffixes that share a
  longer prefix can come out of order; curate's order is checked on sampled neighbours.

Build: wall time and peak RSS of a fresh process that writes table.0 from tokenized.0 — curate's
`build_suffix_array` with each sorter (libsais over the tokens, one core; pydivsufsort over the
bytes, its OpenMP threads) against `python -m infini_gram.indexing` (rust_indexing
make-part/merge/concat, all cores); `speedup` is libsais's. A last row builds the largest size as
two shards: curate sorts them at once (one thread each, as its Ray tasks do, Ray start-up
excluded), infini-gram one after the other with all cores each. Queries: p50/p95 latency of count, prob, ntd and
infgram_prob through each engine's Python API on the same index (infini-gram with prefetching
off), and batched count throughput against the engine's one-query loop. Ratios are
baseline / curate for speed (above 1 = curate faster) and curate / baseline for latency.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curate.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from indexes.build import ShardWriter  # noqa: E402
from indexes.engine import Engine  # noqa: E402
from indexes.layout import CARD_NAME  # noqa: E402

CHUNK = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e6,1e7,1e8", help="shard sizes in tokens, comma-separated")
    parser.add_argument("--queries", type=int, default=1000, help="queries per type for latency")
    parser.add_argument(
        "--parallel-shards",
        type=int,
        default=2,
        help="also build the largest size as this many shards, sorted at once (0: skip)",
    )
    parser.add_argument("--workdir", help="keep files here (default: a temporary directory)")
    parser.add_argument("--repeat", type=int, default=3, help="builds per side and size; the median is reported")
    parser.add_argument(
        "--corpus", choices=["chunks", "python-source"], default="chunks", help="what the shards hold (see above)"
    )
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="curate-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    tokenizer_path, pool = tokenized_pool(work)
    print(f"corpus: {args.corpus}; pool of shipped text: {pool.size:,} tokens; machine: {os.cpu_count()} cores\n")
    print(
        f"{'tokens':>12} {'libsais s':>10} {'pydivsufsort s':>15} {'infini-gram s':>14} {'speedup':>8} "
        f"{'speedup pydss':>14} {'curate tok/s':>13} {'RSS MB':>7} {'pydss RSS MB':>13} {'ig RSS MB':>10} "
        f"{'bytes/token':>12} {'tables identical':>17} {'sorters agree':>14} {'curate sorted':>14}"
    )
    rows = [(n, 1) for n in sizes] + ([(max(sizes), args.parallel_shards)] if args.parallel_shards > 1 else [])
    for n, shards in rows:
        ours_dir, pydss_dir, ref_dir = (work / f"{side}-{n}-{shards}" for side in ("ours", "pydss", "ref"))
        if args.corpus == "chunks":
            write_shards(n, ours_dir, tokenizer_path, shards, chunk_documents(pool, n))
        else:
            write_shards(n, ours_dir, tokenizer_path, shards, source_documents(tokenizer_path))
        for copy in (pydss_dir, ref_dir):
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(ours_dir, copy, ignore=shutil.ignore_patterns("table.*"))
        rust_indexing = [
            sys.executable,
            "-m",
            "infini_gram.indexing",
            "--data_dir",
            str(ref_dir),
            "--save_dir",
            str(ref_dir),
            "--token_dtype",
            "u16",
            "--cpus",
            str(os.cpu_count()),
            "--mem",
            "16",
            "--shards",
            str(shards),
            "--ulimit",
            "4096",
        ]
        times = timed_interleaved(
            {
                "ours": (sort_command(ours_dir, shards, "libsais"), lambda: None),
                "pydss": (sort_command(pydss_dir, shards, "pydivsufsort"), lambda: None),
                "ref": (rust_indexing, lambda ref_dir=ref_dir: [p.unlink() for p in ref_dir.glob("table.*")]),
            },
            args.repeat,
        )
        ours, pydss, ref = times["ours"], times["pydss"], times["ref"]
        files = sum(f.stat().st_size for f in ours_dir.glob("*.[0-9]*"))
        identical = all(
            (ours_dir / f"table.{s}").read_bytes() == (ref_dir / f"table.{s}").read_bytes() for s in range(shards)
        )
        agree = all(
            (ours_dir / f"table.{s}").read_bytes() == (pydss_dir / f"table.{s}").read_bytes() for s in range(shards)
        )
        ordered = all(sorted_neighbours(ours_dir, s) for s in range(shards))
        label = f"{n:,}" if shards == 1 else f"{shards}x{n // shards:,}"
        print(
            f"{label:>12} {ours['seconds']:>10.2f} {pydss['seconds']:>15.2f} {ref['seconds']:>14.2f} "
            f"{ref['seconds'] / ours['seconds']:>8.2f} {ref['seconds'] / pydss['seconds']:>14.2f} "
            f"{n / ours['seconds']:>13,.0f} {ours['rss_mb']:>7.0f} {pydss['rss_mb']:>13.0f} {ref['rss_mb']:>10.0f} "
            f"{files / n:>12.2f} {str(identical):>17} {str(agree):>14} {str(ordered):>14}"
        )
        shutil.rmtree(ref_dir)
        shutil.rmtree(pydss_dir)
        if (n, shards) != (max(sizes), 1):
            shutil.rmtree(ours_dir)

    largest = work / f"ours-{max(sizes)}-1"
    print(f"\nquery latency on the {max(sizes):,}-token index ({args.queries} queries per type, ms)")
    query_benchmark(largest, args.queries)
    if not args.workdir:
        shutil.rmtree(work)


def tokenized_pool(work: Path) -> tuple[Path, np.ndarray]:
    """All shipped sample text, tokenized once, as one token array."""
    from tests.index_support import real_texts

    texts = real_texts()
    tokenizer_path = work / "tokenizer.json"
    tokenizer = train_tokenizer(texts, tokenizer_path, vocab_size=32000)
    ids = [np.asarray(e, np.uint16) for e in tokenizer.encode_batch(texts)]
    return tokenizer_path, np.concatenate(ids)


def chunk_documents(pool: np.ndarray, n: int) -> Iterator[np.ndarray]:
    """Endless documents of 3-31 random 64-token chunks of the pool (seeded by the size)."""
    rng = np.random.default_rng(n)
    chunks = pool.size // CHUNK
    while True:
        picks = rng.integers(0, chunks, size=int(rng.integers(3, 32))) * CHUNK
        yield np.concatenate([pool[p : p + CHUNK] for p in picks])


def source_documents(tokenizer_path: Path) -> Iterator[np.ndarray]:
    """The .py files of this environment's site-packages, tokenized, one document per file."""
    tokenizer = load_tokenizer(tokenizer_path)
    files = sorted(Path(np.__file__).parents[1].rglob("*.py"))
    for i in range(0, len(files), 256):
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in files[i : i + 256]]
        for ids in tokenizer.encode_batch(texts):
            yield np.asarray(ids, np.uint16)
    raise SystemExit(f"site-packages holds fewer tokens than asked ({len(files):,} files)")


def write_shards(n: int, out_dir: Path, tokenizer_path: Path, shards: int, documents: Iterator[np.ndarray]) -> None:
    """tokenized.{s}/offset.{s} of about n/shards tokens each (separators included) plus a card,
    no tables yet."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    tokens = docs = 0
    for s in range(shards):
        writer = ShardWriter(out_dir, s, 2)
        while writer.tokens < n // shards:
            writer.add(next(documents))
        writer.close()
        tokens, docs = tokens + writer.tokens, docs + writer.docs
        for kind in ("metadata", "metaoff"):  # the benchmark compares token files only
            (out_dir / f"{kind}.{s}").unlink()
    tokenizer = load_tokenizer(tokenizer_path)
    card = {
        "format": "infini-gram v4",
        "token_width": 2,
        "vocab_size": tokenizer.vocab_size,
        "eos_token_id": tokenizer.eos_token_id,
        "shards": shards,
        "tokens": tokens,
        "documents": docs,
        "tokenizer": None,
    }
    (out_dir / CARD_NAME).write_text(json.dumps(card))


def sorted_neighbours(index_dir: Path, s: int, samples: int = 2000) -> bool:
    """Whether 2,000 random neighbouring entries of curate's table are in memcmp order."""
    ds = np.fromfile(index_dir / f"tokenized.{s}", np.uint8).tobytes()
    table = np.fromfile(index_dir / f"table.{s}", np.uint8)
    pointers = table.reshape(-1, table.size * 2 // len(ds))
    ranks = np.random.default_rng(s).integers(0, len(pointers) - 1, samples)
    return all(_suffix_less(ds, _pointer(pointers[r]), _pointer(pointers[r + 1])) for r in ranks)


def _pointer(entry: np.ndarray) -> int:
    return int.from_bytes(entry.tobytes(), "little")


def _suffix_less(ds: bytes, a: int, b: int) -> bool:
    """ds[a:] < ds[b:] without copying whole suffixes: compare growing prefixes."""
    length = 1024
    while True:
        x, y = ds[a : a + length], ds[b : b + length]
        if x != y or len(x) < length or len(y) < length:
            return x < y
        length *= 2


def sort_command(index_dir: Path, shards: int, sorter: str) -> list[str]:
    """A fresh process that writes every table.{s} of `index_dir`, the shards sorted at once."""
    sort = f"lambda s: build_suffix_array({str(index_dir)!r}, s, 2, {sorter!r})"
    code = "from indexes.suffix_array import build_suffix_array; " + (
        f"({sort})(0)"
        if shards == 1
        else "from concurrent.futures import ThreadPoolExecutor; "
        f"list(ThreadPoolExecutor({shards}).map({sort}, range({shards})))"
    )
    return [sys.executable, "-c", code]


def timed_interleaved(commands: dict[str, tuple[list[str], Callable[[], object]]], repeat: int) -> dict[str, dict]:
    """Per named command: median wall seconds of `repeat` runs and peak RSS (the largest process of
    the tree). The commands take turns, so a slow spell of the machine hits every side alike; each
    one's `before` runs ahead of it, untimed."""
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, (command, before) in commands.items():
            before()
            t0 = time.perf_counter()
            result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], cwd=REPO, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            if result.returncode != 0:
                raise RuntimeError(f"{command[:3]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
            runs[name].append({"seconds": seconds, "rss_mb": int(result.stderr.strip().splitlines()[-1]) / 1024})
    return {
        name: {"seconds": statistics.median(r["seconds"] for r in rs), "rss_mb": max(r["rss_mb"] for r in rs)}
        for name, rs in runs.items()
    }


def query_benchmark(index_dir: Path, queries: int) -> None:
    from infini_gram.engine import InfiniGramEngine

    ours = Engine(index_dir)
    ref = InfiniGramEngine(
        index_dir=str(index_dir),
        eos_token_id=ours.eos_token_id,
        vocab_size=65535,
        token_dtype="u16",
        ds_prefetch_depth=0,
        sa_prefetch_depth=0,
        od_prefetch_depth=0,
    )
    tokens = ours.shards[0].tokens.view("<u2")
    rng = random.Random(0)

    def ngram(n: int) -> list[int]:
        i = rng.randrange(0, tokens.size - n)
        return [int(t) for t in tokens[i : i + n]]

    workloads = {
        "count n=1..10": ("count", [(ngram(rng.randint(1, 10)),) for _ in range(queries)]),
        "prob n=5": ("prob", [(q[:-1], q[-1]) for q in (ngram(5) for _ in range(queries))]),
        "ntd n=5": ("ntd", [(ngram(4),) for _ in range(queries)]),
        "infgram_prob 100-token prompt": (
            "infgram_prob",
            [(q[:-1], q[-1]) for q in (ngram(101) for _ in range(queries))],
        ),
    }
    print(
        f"{'query':>32} {'curate p50':>11} {'p95':>8} {'infini-gram p50':>16} {'p95':>8} "
        f"{'p50 ratio':>10} {'p95 ratio':>10}"
    )
    for name, (method, calls) in workloads.items():
        for engine in (ours, ref):  # warm-up: JIT, page cache
            for call in calls[:50]:
                getattr(engine, method)(*call)
        ours_ms = latencies(getattr(ours, method), calls)
        ref_ms = latencies(getattr(ref, method), calls)
        for call in calls[:100]:
            assert getattr(ours, method)(*call) == getattr(ref, method)(*call), (method, call)
        p50, p95 = np.percentile(ours_ms, [50, 95])
        r50, r95 = np.percentile(ref_ms, [50, 95])
        print(f"{name:>32} {p50:>11.4f} {p95:>8.4f} {r50:>16.4f} {r95:>8.4f} {p50 / r50:>10.2f} {p95 / r95:>10.2f}")

    batch = [ngram(rng.randint(1, 10)) for _ in range(20 * queries)]
    t0 = time.perf_counter()
    ours_counts = ours.count_batch(batch)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_counts = [ref.count(q) for q in batch]
    ref_s = time.perf_counter() - t0
    assert ours_counts == ref_counts
    print(
        f"\nbatched count, {len(batch):,} queries: curate count_batch {len(batch) / ours_s:,.0f} q/s, "
        f"infini-gram loop {len(batch) / ref_s:,.0f} q/s, ratio {ref_s / ours_s:.2f}x"
    )


def latencies(method, calls) -> np.ndarray:
    out = np.empty(len(calls))
    for i, call in enumerate(calls):
        t0 = time.perf_counter()
        method(*call)
        out[i] = (time.perf_counter() - t0) * 1000
    return out


if __name__ == "__main__":
    main()
