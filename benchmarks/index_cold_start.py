"""Cold start of index queries: a one-shot `curate index query` and `Engine(dir)` + a first query,
with the ahead-of-time search loops against numba's JIT (its on-disk cache warm), in one run.

    .venv/bin/python benchmarks/index_cold_start.py [INDEX_DIR] [--runs 15]

INDEX_DIR defaults to the demo's index (out/demo/index). Each variant runs once untimed first
(page cache, numba's cache), then `--runs` times in turn with the other; a run is a fresh process.
Printed: wall ms of the whole command (min and median), its CPU ms (user + system, median: what a
loaded machine inflates least), the `latency` it reports (the query alone),
and, in Python, the import of indexes.engine, `Engine(dir)`, the first query, and the same query
again (the query alone): "first-query overhead" = open + first query - query alone.
Ratios are JIT / AOT. Needs `python -m indexes.compile_loops` (or `make setup`) done first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUERY = " the United States"

# Runs in a fresh interpreter: the import, the open, the first query, the query again (ms, JSON).
IN_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
from indexes.engine import Engine
t1 = time.perf_counter()
engine = Engine(sys.argv[1])
t2 = time.perf_counter()
engine.count(engine.tokenize(sys.argv[2]))
t3 = time.perf_counter()
engine.count(engine.tokenize(sys.argv[2]))
t4 = time.perf_counter()
from indexes import search_loops
ms = lambda a, b: (b - a) * 1000
print(json.dumps({"backend": search_loops.BACKEND, "import": ms(t0, t1), "open": ms(t1, t2),
                  "first": ms(t2, t3), "again": ms(t3, t4)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index_dir", nargs="?", default=str(REPO / "out" / "demo" / "index"))
    parser.add_argument("--runs", type=int, default=15, help="timed runs per variant (default 15)")
    args = parser.parse_args()
    curate = str(Path(sys.executable).with_name("curate"))
    variants = {"aot": {}, "jit": {"CURATE_INDEX_LOOPS": "jit"}}
    cli = {name: [] for name in variants}
    py = {name: [] for name in variants}
    for i in range(args.runs + 1):
        for name, extra in variants.items():
            env = {**os.environ, **extra}
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            out = subprocess.run(
                [curate, "index", "query", args.index_dir, "count", QUERY], env=env, capture_output=True, text=True
            )
            wall = (time.perf_counter() - t0) * 1000
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
            if out.returncode != 0:
                raise SystemExit(f"curate index query failed:\n{out.stderr}")
            result = json.loads(out.stdout)
            inner = subprocess.run(
                [sys.executable, "-c", IN_PROCESS, args.index_dir, QUERY],
                env=env, cwd=REPO, capture_output=True, text=True, check=True,
            )  # fmt: skip
            timings = json.loads(inner.stdout)
            if timings["backend"] != name:
                raise SystemExit(f"expected the {name} loops, got {timings['backend']} (run indexes.compile_loops)")
            if i:  # the first round warms the page cache and numba's cache
                cli[name].append({"wall": wall, "cpu": cpu, "latency": result["latency"], "count": result["count"]})
                py[name].append(timings)

    print(f"index {args.index_dir}, count {QUERY!r}, {args.runs} runs each; machine load {os.getloadavg()[0]:.1f}")
    print(f"{'':>6} {'CLI wall min':>13} {'median':>8} {'CPU':>7} {'latency p50':>12} {'import':>8} {'Engine()':>9} "
          f"{'1st query':>10} {'again':>7} {'1st-query overhead':>19}")  # fmt: skip
    medians = {}
    for name in variants:
        wall = [r["wall"] for r in cli[name]]
        med = {k: statistics.median(t[k] for t in py[name]) for k in ("import", "open", "first", "again")}
        overhead = statistics.median(t["open"] + t["first"] - t["again"] for t in py[name])
        medians[name] = statistics.median(wall)
        cpu = statistics.median(r["cpu"] for r in cli[name])
        print(
            f"{name:>6} {min(wall):>11.0f}ms {medians[name]:>6.0f}ms {cpu:>5.0f}ms "
            f"{statistics.median(r['latency'] for r in cli[name]):>10.2f}ms {med['import']:>6.0f}ms "
            f"{med['open']:>7.1f}ms {med['first']:>8.2f}ms {med['again']:>5.2f}ms {overhead:>17.1f}ms"
        )
    counts = {r["count"] for rows in cli.values() for r in rows}
    assert len(counts) == 1, f"the variants disagree: {counts}"
    print(f"\nCLI median wall, JIT / AOT: {medians['jit'] / medians['aot']:.2f}x")


if __name__ == "__main__":
    main()
