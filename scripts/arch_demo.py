"""The architectures side by side (issue 11's comparison): each registered architecture at the
`tiny` size, trained with the same seed, batch and number of tokens on a curation job's index,
then scored in bits per byte on the index's held-out (test split) documents.

Usage: .venv/bin/python scripts/arch_demo.py [--data out/demo/index] [--steps 150] [--out out/arch_demo]
Writes OUT/results.json and prints a Markdown table (bits per byte, parameters, tokens/s)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.config import TrainConfig
from models.evaluate import evaluate_checkpoint
from models.train import train

PAPERS = ["transformer", "based", "jrt", "h3", "block", "transformer+ngram"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="out/demo/index", help="an index directory (jobs/demo.yaml writes out/demo/index)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--max-docs", type=int, default=48, help="held-out documents scored, evenly spaced")
    p.add_argument("--arch", nargs="*", default=PAPERS, help="default: the papers' architectures and n-gram heads")
    p.add_argument("--out", default="out/arch_demo")
    args = p.parse_args()
    rows = {}
    for arch in args.arch:
        cfg = TrainConfig(
            arch=arch,
            size="tiny",
            steps=args.steps,
            seq_len=128,
            batch_size=16,
            lr=3e-3,
            seed=0,
            warmup_steps=10,
            eval_every=args.steps,
            checkpoint_every=args.steps,
            log_every=args.steps,
        )
        out = Path(args.out) / arch
        summary = train(cfg, args.data, out, log=lambda line: None)
        report = evaluate_checkpoint(out, args.data, split="test", max_docs=args.max_docs)
        rows[arch] = {
            "bits_per_byte": report["overall"]["bits_per_byte"],
            "parameters": summary["parameters"],
            "tokens_per_s": summary["tokens_per_s"],
            "train_tokens": args.steps * 16 * 128,
            "final_loss": summary["losses"][-1] if summary.get("losses") else None,
        }
        print(f"{arch}: {rows[arch]}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2))
    print("\n| architecture | parameters | held-out bits per byte | training tokens/s |\n|---|---:|---:|---:|")
    for arch, r in sorted(rows.items(), key=lambda kv: kv[1]["bits_per_byte"]):
        print(f"| {arch} | {r['parameters']:,} | {r['bits_per_byte']:.4f} | {r['tokens_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
