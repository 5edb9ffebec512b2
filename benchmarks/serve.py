"""Serving benchmark: queries/s of the HTTP API under concurrent clients, in one run:
`curate index serve` (one uvicorn process) against `curate index serve --ray` at 1 and 2 replicas.

    .venv/bin/python benchmarks/serve.py [--index DIR] [--clients 100] [--requests 2000]

Without --index, a 4-shard index of the shipped wiki sample is built in a temporary folder. The
queries are count, prob and ntd (max_support 100) of 1-3 token n-grams drawn from the indexed
documents; every answer is checked against the engine in this process (`wrong` must be 0). The
clients are asyncio tasks on one aiohttp session here, so on a small machine the client, the
servers and Ray share the cores: read the ratios (queries/s over the single process's), measured
in the same run, rather than the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curate.cli import main as curate_main  # noqa: E402
from indexes.engine import Engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="an index directory (default: build a 4-shard one from data/wiki)")
    parser.add_argument("--clients", type=int, default=100, help="concurrent clients (default 100)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per server (default 2000)")
    parser.add_argument("--replicas", default="1,2", help="Ray Serve replica counts, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(args.index) if args.index else build_index(Path(tmp))
        engine = Engine(index)
        queries = make_queries(engine, args.requests)
        rows = [run_single(index, queries, args.clients)]
        rows += run_ray(index, queries, args.clients, [int(r) for r in args.replicas.split(",")])
    base = rows[0]["qps"]
    head = ["clients", "requests", "q/s", "ratio", "p50 ms", "p95 ms", "errors", "wrong"]
    print(f"{'server':<26}" + "".join(f"{name:>9}" for name in head))
    for row in rows:
        print(
            f"{row['server']:<26}{row['clients']:>9}{row['requests']:>9}{row['qps']:>9.1f}{row['qps'] / base:>9.2f}"
            f"{row['p50']:>9.1f}{row['p95']:>9.1f}{row['errors']:>9}{row['wrong']:>9}"
        )
    print(json.dumps({"index": str(index), "cpus": os.cpu_count(), "rows": rows}))


def build_index(root: Path) -> Path:
    wiki = str(REPO / "data" / "wiki")
    tok = str(root / "tok.json")
    if curate_main(["tokenizer", "train", "--input", wiki, "--out", tok, "--vocab", "3000"]) != 0:
        raise SystemExit("tokenizer training failed")
    argv = [
        "index",
        "build",
        "--input",
        wiki,
        "--tokenizer",
        tok,
        "--out",
        str(root / "ix"),
        "--shard-tokens",
        "180000",
    ]
    if curate_main(argv) != 0:
        raise SystemExit("index build failed")
    return root / "ix"


def make_queries(engine: Engine, n: int) -> list[tuple[dict, dict]]:
    """(request, the engine's answer without latency) pairs: count, prob and ntd of n-grams from documents."""
    from indexes.server import answer

    rng = random.Random(0)
    pairs = []
    for i in range(n):
        doc = engine.get_doc_by_ix(rng.randrange(engine.get_total_doc_cnt()), 200)["token_ids"]
        length = rng.randint(1, 3)
        start = rng.randrange(max(1, len(doc) - length))
        ids = doc[start : start + length] or [1]
        request = [
            {"query_type": "count", "query_ids": ids},
            {"query_type": "prob", "query_ids": ids},
            {"query_type": "ntd", "query_ids": ids, "max_support": 100},
        ][i % 3]
        want = json.loads(json.dumps(answer(engine, request)))
        want.pop("latency")
        pairs.append((request, want))
    return pairs


async def _drive(url: str, queries: list[tuple[dict, dict]], clients: int) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = wrong = 0
    todo = iter(queries)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors, wrong
        for request, want in todo:
            t0 = time.perf_counter()
            async with session.post(url, json=request) as response:
                out = await response.json(content_type=None)
            latencies.append((time.perf_counter() - t0) * 1000)
            if response.status != 200:
                errors += 1
                continue
            out.pop("latency")
            wrong += out != want

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        seconds = time.perf_counter() - t0
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(queries),
        "qps": len(queries) / seconds,
        "p50": statistics.median(latencies),
        "p95": latencies[int(0.95 * (len(latencies) - 1))],
        "errors": errors,
        "wrong": wrong,
    }


def measure(url: str, queries: list[tuple[dict, dict]], clients: int) -> dict:
    asyncio.run(_drive(url, queries[: len(queries) // 10], clients))  # warm: connections, replicas' caches
    row = asyncio.run(_drive(url, queries, clients))
    print(f"{url}: {row}", file=sys.stderr, flush=True)  # as it comes: a long run shows its progress
    return row


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_single(index: Path, queries: list[tuple[dict, dict]], clients: int) -> dict:
    port = _free_port()
    curate = str(Path(sys.executable).parent / "curate")
    server = subprocess.Popen([curate, "index", "serve", str(index), "--port", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("curate index serve exited") from None
                time.sleep(0.5)
        return {"server": "uvicorn, 1 process", **measure(url, queries, clients)}
    finally:
        server.terminate()
        server.wait(timeout=60)


def run_ray(index: Path, queries: list[tuple[dict, dict]], clients: int, replica_counts: list[int]) -> list[dict]:
    from ray import serve

    from curate.ray_runtime import init_ray
    from indexes.serve_ray import deploy

    init_ray()
    port = _free_port()
    rows = []
    try:
        for replicas in replica_counts:
            url = deploy(index, "127.0.0.1", port, replicas)
            rows.append({"server": f"Ray Serve, {replicas} replica(s)", **measure(url, queries, clients)})
    finally:
        serve.shutdown()
    return rows


if __name__ == "__main__":
    main()
