"""Ray's fixed cost per `curate run`: CPU seconds by process of the same small run under settings
of Ray's, side by side, and of the same run joining a long-lived Ray (`--address`):

    .venv/bin/python benchmarks/ray_fixed_cost.py [--copies 1] [--repeat 3] [--variants default,address,...]

Each variant is `curate run` of the perplexity stage (a 16k-piece Wikipedia model) over the
shipped web sample (`--copies` times) in a fresh process, with environment variables of its own
(Ray reads `RAY_<name>` for its system settings); the variants take turns, `--repeat` rounds, so a
change of load hits them alike. Per variant it prints the median over rounds of the total CPU
seconds, of the wall time, and of each role's CPU seconds (benchmarks/perplexity.py's
`process_cpu`: the run's process tree, and with `address` the long-lived Ray's processes over the
run too). Outputs are checked identical across variants (the manifest's sha256 of every file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from perplexity import LocalRay, curate_run, make_corpus, train_models, warm_up

# name -> environment of the run; `address` joins the long-lived Ray instead of starting one
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "address": {},
    "no-prestart": {"RAY_prestart_worker_first_driver": "0"},
    "no-metrics": {"RAY_enable_metrics_collection": "0"},
    "no-usage-stats": {"RAY_USAGE_STATS_ENABLED": "0"},
    "no-task-events": {"RAY_task_events_report_interval_ms": "0"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="stage workers (default: one per core)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of: {', '.join(VARIANTS)}")
    parser.add_argument("--env", action="append", default=[], help="NAME=K=V,K=V: a variant of your own")
    args = parser.parse_args()
    variants = {name: VARIANTS[name] for name in args.variants.split(",") if name}
    for given in args.env:
        name, _, settings = given.partition("=")
        variants[name] = dict(kv.split("=", 1) for kv in settings.split(",") if kv)
    with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        corpus = tmp / "corpus.jsonl"
        n, size = make_corpus(corpus, args.copies)
        dirs = train_models(tmp, ["perplexity"])
        stage = {"perplexity": {"model": str(dirs["wiki"])}}
        print(f"corpus: {n} documents, {size / 1e6:.1f} MB; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
        runs: dict[str, list[tuple[float, dict[str, float]]]] = {name: [] for name in variants}
        digests: dict[str, dict] = {}
        with LocalRay(os.cpu_count() or 1, tmp) if "address" in variants else _nothing() as ray:
            if ray:
                warm_up(ray, tmp, dirs)
            for round_ in range(args.repeat):
                for name, env in variants.items():
                    tag = f"{name}-{round_}"
                    on = ray if name == "address" else None
                    seconds, _, usage = curate_run(tmp, corpus, stage, args.workers, tag, on, env)
                    runs[name].append((seconds, {role: sum(cpus) for role, cpus in usage.roles.items()}))
                    shards = json.loads((tmp / f"out-{tag}" / "manifest.json").read_text())["shards"]
                    digests[tag] = {rel: f["sha256"] for rel, f in shards.items()}
                    total = sum(runs[name][-1][1].values())
                    print(f"  round {round_ + 1} {name}: {seconds:.1f}s, {total:.1f} CPU s", flush=True)
        assert len({json.dumps(d, sort_keys=True) for d in digests.values()}) == 1, "outputs differ between variants"
        print(f"\nmedians of {args.repeat} rounds (outputs identical across all {len(digests)} runs):")
        for name, measured in runs.items():
            wall = statistics.median(s for s, _ in measured)
            total = statistics.median(sum(r.values()) for _, r in measured)
            roles = sorted({role for _, r in measured for role in r})
            by_role = {role: statistics.median(r.get(role, 0.0) for _, r in measured) for role in roles}
            parts = ", ".join(f"{role} {cpu:.1f}" for role, cpu in sorted(by_role.items(), key=lambda i: -i[1]))
            print(f"{name:16s} {total:5.1f} CPU s, {wall:5.1f}s wall: {parts}")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_) -> None:
        pass


if __name__ == "__main__":
    main()
