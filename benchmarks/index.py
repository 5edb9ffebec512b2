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

Build: wall time and peak RSS of a fresh process that writes the tables from the tokenized files,
every builder at its default:
- curate's default build: the corpus cut into one shard per core (indexes.build.default_shard_count
  and split_shard, as `curate index build` does without --shard-tokens), the shards sorted at once
  with libsais, one thread each as its Ray tasks do (Ray start-up excluded);
- curate on one shard, with each sorter (libsais over the tokens, one core; pydivsufsort over the
  bytes, its OpenMP threads);
- `python -m infini_gram.indexing` on one shard (rust_indexing make-part/merge/concat, all cores).
`speedup` is infini-gram / curate's default build. Queries: p50/p95 latency of count, prob, ntd and
infgram_prob through each engine's Python API on the largest index (infini-gram with prefetching
off), for curate's one-shard and default indexes (the cost of more shards), and batched count
throughput against the engine's one-query loop. Ratios are baseline / curate for speed (above 1 =
curate faster) and curate / baseline for latency.

The benchmark fails (exit 1) when a check that must hold does not: the two sorters' tables differ,
a table is out of order on 2,000 sampled neighbours, the default shards are not the one-shard
corpus cut at document boundaries, curate's one-shard table differs from infini-gram's on the
`chunks` corpus (on `python-source` it may, see above), or any timed query's answers differ
between the engines or between curate's two indexes.
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
from indexes.build import ShardInfo, ShardWriter, default_shard_count, split_shard  # noqa: E402
from indexes.engine import Engine  # noqa: E402
from indexes.layout import CARD_NAME  # noqa: E402

CHUNK = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e6,1e7,1e8", help="shard sizes in tokens, comma-separated")
    parser.add_argument("--queries", type=int, default=1000, help="queries per type for latency")
    parser.add_argument(
        "--cores", type=int, default=os.cpu_count(), help="cores the default build counts (default: this machine's)"
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
        f"{'tokens':>12} {'shards':>6} {'default s':>10} {'1 shard s':>10} {'pydivsufsort s':>15} "
        f"{'infini-gram s':>14} {'speedup':>8} {'1-shard speedup':>16} {'default tok/s':>14} {'RSS MB':>7} "
        f"{'1-shard RSS MB':>15} {'ig RSS MB':>10} {'bytes/token':>12} {'table = ig':>11}"
    )
    failures: list[str] = []
    for n in sizes:
        one_dir, default_dir, pydss_dir, ref_dir = (work / f"{side}-{n}" for side in ("one", "default", "pydss", "ref"))
        documents = chunk_documents(pool, n) if args.corpus == "chunks" else source_documents(tokenizer_path)
        write_shards(n, one_dir, tokenizer_path, documents)
        for copy in (default_dir, pydss_dir, ref_dir):
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(one_dir, copy)
        shards = split_default([default_dir, one_dir, pydss_dir, ref_dir], args.cores)
        rust_indexing = [
            sys.executable, "-m", "infini_gram.indexing", "--data_dir", str(ref_dir), "--save_dir", str(ref_dir),
            "--token_dtype", "u16", "--cpus", str(os.cpu_count()), "--mem", "16", "--shards", "1",
            "--ulimit", "4096",
        ]  # fmt: skip
        times = timed_interleaved(
            {
                "default": (sort_command(default_dir, shards, "libsais"), lambda: None),
                "one": (sort_command(one_dir, 1, "libsais"), lambda: None),
                "pydss": (sort_command(pydss_dir, 1, "pydivsufsort"), lambda: None),
                "ref": (rust_indexing, lambda ref_dir=ref_dir: [p.unlink() for p in ref_dir.glob("table.*")]),
            },
            args.repeat,
        )
        default, one, pydss, ref = times["default"], times["one"], times["pydss"], times["ref"]
        files = sum(f.stat().st_size for f in default_dir.glob("*.[0-9]*"))
        table = (one_dir / "table.0").read_bytes()
        identical = table == (ref_dir / "table.0").read_bytes()
        label = f"{n:,}"
        checks = {
            "the sorters' tables differ": table == (pydss_dir / "table.0").read_bytes(),
            "a table is out of order": sorted_neighbours(one_dir, 0)
            and all(sorted_neighbours(default_dir, s) for s in range(shards)),
            "the default shards are not the corpus cut at document boundaries": same_corpus(one_dir, default_dir),
            "curate's table differs from infini-gram's": identical or args.corpus != "chunks",
        }
        failures += [f"{label}: {problem}" for problem, ok in checks.items() if not ok]
        print(
            f"{label:>12} {shards:>6} {default['seconds']:>10.2f} {one['seconds']:>10.2f} {pydss['seconds']:>15.2f} "
            f"{ref['seconds']:>14.2f} {ref['seconds'] / default['seconds']:>8.2f} "
            f"{ref['seconds'] / one['seconds']:>16.2f} {n / default['seconds']:>14,.0f} {default['rss_mb']:>7.0f} "
            f"{one['rss_mb']:>15.0f} {ref['rss_mb']:>10.0f} {files / n:>12.2f} {str(identical):>11}"
        )
        for d in (ref_dir, pydss_dir) + ((one_dir, default_dir) if n != max(sizes) else ()):
            shutil.rmtree(d)

    largest = max(sizes)
    print(f"\nquery latency on the {largest:,}-token indexes ({args.queries} queries per type, ms)")
    failures += query_benchmark(work / f"one-{largest}", work / f"default-{largest}", args.queries)
    if not args.workdir:
        shutil.rmtree(work)
    if failures:
        print("\nFAILED:\n" + "\n".join(failures), file=sys.stderr)
        raise SystemExit(1)


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


def write_shards(n: int, out_dir: Path, tokenizer_path: Path, documents: Iterator[np.ndarray]) -> None:
    """One shard's tokenized.0/offset.0 of about n tokens (separators included) plus a card, no
    table yet; metadata.0/metaoff.0 too, for split_default, which removes them."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    writer = ShardWriter(out_dir, 0, 2)
    while writer.tokens < n:
        writer.add(next(documents))
    writer.close()
    tokenizer = load_tokenizer(tokenizer_path)
    card = {
        "format": "infini-gram v4",
        "token_width": 2,
        "vocab_size": tokenizer.vocab_size,
        "eos_token_id": tokenizer.eos_token_id,
        "shards": 1,
        "tokens": writer.tokens,
        "documents": writer.docs,
        "tokenizer": None,
    }
    (out_dir / CARD_NAME).write_text(json.dumps(card))


def split_default(index_dirs: list[Path], cores: int) -> int:
    """Cut the first directory's shard as the default build does on `cores` cores; drop every
    directory's metadata (the benchmark compares token files only). Returns the shard count."""
    card = json.loads((index_dirs[0] / CARD_NAME).read_text())
    pieces = default_shard_count(card["tokens"], cores)
    if pieces > 1:
        card["shards"] = len(split_shard(index_dirs[0], ShardInfo(0, card["tokens"], card["documents"]), pieces, 2))
        (index_dirs[0] / CARD_NAME).write_text(json.dumps(card))
    for d in index_dirs:
        for f in [*d.glob("metadata.*"), *d.glob("metaoff.*")]:
            f.unlink()
    return card["shards"]


def same_corpus(one_dir: Path, split_dir: Path) -> bool:
    """Whether the shards of `split_dir` are the one shard of `one_dir` cut between documents."""
    shards = json.loads((split_dir / CARD_NAME).read_text())["shards"]
    parts = [(split_dir / f"tokenized.{s}").read_bytes() for s in range(shards)]
    offsets, base = [], 0
    for s, part in enumerate(parts):
        offsets.append(np.fromfile(split_dir / f"offset.{s}", "<u8") + np.uint64(base))
        base += len(part)
    return (
        all(part[:2] == b"\xff\xff" for part in parts)
        and b"".join(parts) == (one_dir / "tokenized.0").read_bytes()
        and np.array_equal(np.concatenate(offsets), np.fromfile(one_dir / "offset.0", "<u8"))
    )


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


def query_benchmark(one_dir: Path, default_dir: Path, queries: int) -> list[str]:
    """Latency of curate's one-shard and default indexes and infini-gram's engine on the one-shard
    files; returns the checks that failed (answers that differ)."""
    from infini_gram.engine import InfiniGramEngine

    one, default = Engine(one_dir), Engine(default_dir)
    ref = InfiniGramEngine(
        index_dir=str(one_dir),
        eos_token_id=one.eos_token_id,
        vocab_size=65535,
        token_dtype="u16",
        ds_prefetch_depth=0,
        sa_prefetch_depth=0,
        od_prefetch_depth=0,
    )
    tokens = one.shards[0].tokens.view("<u2")
    rng = random.Random(0)
    failures = []

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
        f"{'query':>32} {'curate 1 shard p50':>19} {'p95':>8} {f'{len(default.shards)} shards p50':>15} {'p95':>8} "
        f"{'infini-gram p50':>16} {'p95':>8} {'p50 ratio':>10} {'p95 ratio':>10} {'shards cost p50':>16}"
    )
    for name, (method, calls) in workloads.items():
        for engine in (one, default, ref):  # warm-up: page cache
            for call in calls[:50]:
                getattr(engine, method)(*call)
        one_ms = latencies(getattr(one, method), calls)
        default_ms = latencies(getattr(default, method), calls)
        ref_ms = latencies(getattr(ref, method), calls)
        for call in calls[:100]:
            expected = getattr(ref, method)(*call)
            if getattr(one, method)(*call) != expected or (
                method != "ntd" and getattr(default, method)(*call) != expected
            ):
                failures.append(f"{method}{call}: answers differ")
        if method == "ntd":  # sampled ntd depends on where shards are cut; exact counts must agree
            for (prompt,) in calls[:100]:
                if default.ntd(prompt, max_support=10**9) != one.ntd(prompt, max_support=10**9):
                    failures.append(f"ntd({prompt}): the default shards' answer differs")
        p50, p95 = np.percentile(one_ms, [50, 95])
        d50, d95 = np.percentile(default_ms, [50, 95])
        r50, r95 = np.percentile(ref_ms, [50, 95])
        print(
            f"{name:>32} {p50:>19.4f} {p95:>8.4f} {d50:>15.4f} {d95:>8.4f} {r50:>16.4f} {r95:>8.4f} "
            f"{p50 / r50:>10.2f} {p95 / r95:>10.2f} {d50 / p50:>16.2f}"
        )

    batch = [ngram(rng.randint(1, 10)) for _ in range(20 * queries)]
    t0 = time.perf_counter()
    one_counts = one.count_batch(batch)
    one_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    default_counts = default.count_batch(batch)
    default_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_counts = [ref.count(q) for q in batch]
    ref_s = time.perf_counter() - t0
    if not one_counts == default_counts == ref_counts:
        failures.append("count_batch: counts differ")
    print(
        f"\nbatched count, {len(batch):,} queries: curate count_batch {len(batch) / one_s:,.0f} q/s "
        f"({len(batch) / default_s:,.0f} on {len(default.shards)} shards), infini-gram loop "
        f"{len(batch) / ref_s:,.0f} q/s, ratio {ref_s / one_s:.2f}x"
    )
    return failures


def latencies(method, calls) -> np.ndarray:
    out = np.empty(len(calls))
    for i, call in enumerate(calls):
        t0 = time.perf_counter()
        method(*call)
        out[i] = (time.perf_counter() - t0) * 1000
    return out


if __name__ == "__main__":
    main()
