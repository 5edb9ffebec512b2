"""Training throughput: curate's training loop (models/train.py) against a plain PyTorch loop of
the same model, optimizer, schedule and batches, in the same process; plus the loader's own
throughput, what torch.compile gives the plain loop, and the process's peak memory.

    .venv/bin/python benchmarks/train.py [--data INDEX_DIR] [--size tiny] [--steps 60]

Without --data it indexes data/web with a fresh 8,000-token BPE under out/bench_train/ (once).
Both loops start from the same seed and read `models.data.batches` for the same split and seed,
so their losses must agree step by step; the benchmark checks that before printing a ratio.
Curate's figure includes what its loop does besides the steps (metrics lines, the validation and
the checkpoint at the end); the plain loop does none of it."""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from curate.tokenizer import train_tokenizer
from indexes.build import build_index, iter_documents
from indexes.layout import CARD_NAME
from models.config import TrainConfig
from models.data import TokenShards, batches
from models.optim import build_optimizers, lr_at
from models.registry import build_model
from models.train import run_training

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_index(out: Path) -> Path:
    index = out / "index"
    if not (index / CARD_NAME).is_file():
        inputs = [str(ROOT / "data" / "web")]
        tokenizer = out / "tokenizer.json"
        train_tokenizer((d["text"] for d in iter_documents(inputs)), tokenizer, 8000)
        build_index(inputs, tokenizer, index, overwrite=True)
    return index


def loader_rate(shards: TokenShards, cfg: TrainConfig, steps: int) -> float:
    t0 = time.perf_counter()
    n = sum(x.numel() for x, _ in islice(batches(shards, "train", cfg.seq_len, cfg.batch_size, cfg.seed), steps))
    return n / (time.perf_counter() - t0)


def plain_loop(
    shards: TokenShards, cfg: TrainConfig, compile: bool = False, warmup: int = 0
) -> tuple[list[float], float]:
    """The textbook loop: forward, backward, clip, step. Returns the losses and the tokens/s of
    the steps after `warmup` (where torch.compile has compiled)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, cfg.architecture_config(shards.vocab_size))
    optimizers = build_optimizers(model, cfg)
    step_fn = torch.compile(model) if compile else model
    data = batches(shards, "train", cfg.seq_len, cfg.batch_size, cfg.seed)
    losses = []
    for step in range(cfg.steps):
        if step == warmup:
            t0 = time.perf_counter()
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
        x, y = next(data)
        loss = step_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, (cfg.steps - warmup) * cfg.batch_size * cfg.seq_len / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="curate's training loop against a plain PyTorch loop")
    p.add_argument("--data", help="index directory (default: build one from data/web under out/bench_train)")
    p.add_argument("--size", default="tiny")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeat", type=int, default=2, help="interleaved runs of each loop; the best is kept")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    args = p.parse_args(argv)

    index = Path(args.data) if args.data else bench_index(ROOT / "out" / "bench_train")
    shards = TokenShards(index)
    cfg = TrainConfig(
        size=args.size,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        eval_every=args.steps,
        checkpoint_every=args.steps,
        log_every=args.steps,
        device="cpu",
    )
    print(
        f"{cfg.size} model, {cfg.batch_size} x {cfg.seq_len} tokens per step, {cfg.steps} steps, "
        f"{torch.get_num_threads()} torch threads, index {index}"
    )

    loader = loader_rate(shards, cfg, 200)
    print(f"loader: {loader:,.0f} tokens/s (peak RSS {peak_rss_mb():,.0f} MB)")

    # interleaved repeats, best of each: the machine is shared, so single runs are noisy
    plain = ours = 0.0
    for _ in range(args.repeat):
        plain_losses, rate = plain_loop(shards, cfg)
        plain = max(plain, rate)
        print(f"plain PyTorch loop: {rate:,.0f} tokens/s (peak RSS {peak_rss_mb():,.0f} MB)")
        with tempfile.TemporaryDirectory() as tmp:
            summary = run_training(cfg, index, tmp, log=lambda _: None)
        ours = max(ours, summary["tokens_per_s"])
        print(f"curate's loop: {summary['tokens_per_s']:,.0f} tokens/s (peak RSS {peak_rss_mb():,.0f} MB)")

    # same model, batches and optimizer: the same losses (up to float reassociation in the kernels)
    assert summary["losses"][0] == plain_losses[0], (summary["losses"][0], plain_losses[0])
    drift = max(abs(a - b) for a, b in zip(summary["losses"], plain_losses))
    assert drift < 1e-3, f"the loops diverge (max loss difference {drift})"
    print(f"losses agree: step 1 {plain_losses[0]:.6f} in both, max difference over {cfg.steps} steps {drift:.2e}")
    print(
        f"ratio curate / plain (best of {args.repeat} each): {ours / plain:.2f}x; "
        f"loader / training: {loader / ours:,.0f}x"
    )

    if not args.no_compile:
        t0 = time.perf_counter()
        compiled_losses, compiled = plain_loop(shards, cfg, compile=True, warmup=5)
        print(
            f"plain loop + torch.compile: {compiled:,.0f} tokens/s after 5 warm-up steps "
            f"({time.perf_counter() - t0:.0f} s in all, compilation included); {compiled / plain:.2f}x eager "
            f"(peak RSS {peak_rss_mb():,.0f} MB)"
        )
        compiled_drift = max(abs(a - b) for a, b in zip(compiled_losses, plain_losses))
        print(f"compiled vs eager losses: max difference {compiled_drift:.2e}")
    print("MFU: not measured (this benchmark runs on the CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
