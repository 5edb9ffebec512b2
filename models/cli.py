"""`curate train`, `curate eval`, `curate generate` and `curate ablate` (wired into curate/cli.py)."""

from __future__ import annotations

import argparse
import json


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the training commands on the top-level `curate` parser."""
    train = sub.add_parser("train", help="train a language model on an index's tokenized shards")
    train.add_argument("--data", required=True, help="index directory (a run's OUT/index, `curate index build --out`)")
    train.add_argument("--arch", help="architecture (default: the config's, else transformer)")
    train.add_argument("--size", help="named size of the architecture: tiny, small, mini, 125m (default tiny)")
    train.add_argument("--config", help="training config (YAML): the keys of a job's `train:` section")
    train.add_argument("--out", required=True, help="output: checkpoint/ and metrics.jsonl; an existing one resumes")
    train.add_argument("--steps", type=int, help="optimizer steps (overrides the config)")
    train.add_argument("--seed", type=int, help="seed of the initialisation and the data order (overrides the config)")
    train.add_argument("--workers", type=int, help="Ray Train data-parallel workers (default 1: this process, no Ray)")
    train.add_argument("--address", help="Ray cluster for --workers (default: $RAY_ADDRESS, else a local Ray)")
    train.add_argument("--stop-at", type=int, help="stop after this step with a checkpoint (the same command resumes)")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="loss, perplexity and bits per byte of a trained model, per source")
    ev.add_argument("model", help="a checkpoint, or a `curate train` output directory")
    ev.add_argument("--data", required=True, help="the index the model was trained on (held-out documents, tokenizer)")
    ev.add_argument("--text", nargs="+", help="score these files (.jsonl, .jsonl.gz, .parquet), not the held-out split")
    ev.add_argument("--split", choices=["test", "val"], default="test", help="held-out split (default test)")
    ev.add_argument("--stride", type=int, help="window step for documents longer than the context (default: half)")
    ev.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    ev.add_argument("--max-docs", type=int, help="score this many documents, evenly spaced over the set")
    ev.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    ev.set_defaults(func=_eval)

    gen = sub.add_parser("generate", help="continue a prompt with a trained model")
    gen.add_argument("model", help="a checkpoint, or a `curate train` output directory")
    gen.add_argument("prompt")
    gen.add_argument("--data", help="index whose tokenizer to use (default: the one the model was trained on)")
    gen.add_argument("--max-tokens", type=int, default=100)
    gen.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float, help="nucleus sampling mass")
    gen.add_argument("--typical-p", type=float, help="locally typical sampling mass (Meister et al.)")
    gen.add_argument("--seed", type=int)
    gen.set_defaults(func=_generate)

    ab = sub.add_parser("ablate", help="estimate data mixtures by merging models trained on partitions")
    ab.add_argument("job", help="ablation job file (YAML), e.g. jobs/ablate_demo.yaml")
    ab.add_argument("--address", help="Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    ab.add_argument("--verbose", action="store_true", help="show Ray's own records too (else in OUT/logs/ray.log)")
    ab.set_defaults(func=_ablate)


def _train(args) -> int:
    from models.config import load_train_config
    from models.train import train

    overrides = {"arch": args.arch, "size": args.size, "steps": args.steps, "seed": args.seed, "workers": args.workers}
    cfg = load_train_config(args.config, **overrides)
    summary = train(cfg, args.data, args.out, stop_at=args.stop_at, address=args.address)
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    return 0


def _eval(args) -> int:
    from models.evaluate import evaluate_checkpoint, format_table
    from models.train import pick_device

    report = evaluate_checkpoint(
        args.model,
        args.data,
        args.split,
        args.text,
        args.batch_size,
        args.stride,
        str(pick_device("auto")),
        args.max_docs,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['model']} on {report['on']} (context {report['context']}, stride {report['stride']})")
        print(format_table(report))
    return 0


def _generate(args) -> int:
    from models.sampling import Sampling, generate_text

    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.typical_p)
    print(args.prompt + generate_text(args.model, args.prompt, args.data, args.max_tokens, sampling, args.seed))
    return 0


def _ablate(args) -> int:
    from models.ablate import run_ablation
    from models.ablate_spec import load_ablate_spec

    report = run_ablation(load_ablate_spec(args.job), args.address, args.verbose)
    for name, c in report["correlations"].items():
        print(f"{name}: Pearson {c['pearson']}, Spearman {c['spearman']} over {c['mixtures']} mixtures")
    print(f"report: {report['output']}/report.html")
    return 0
