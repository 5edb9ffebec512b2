"""Training tokens/s of each architecture against the Transformer at (nearly) equal parameter count.

    .venv/bin/python benchmarks/architectures.py [--size small] [--vocab 2000] [--batch 8] [--steps 5]

Every model of the named size (sizes keep the parameter counts close, models/registry.py) runs the
same AdamW training steps on the same random batches; the Transformer is measured in the same run
and each row prints its ratio to it. Timing is the median step after one warm-up step."""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from models.registry import ARCHITECTURES, build_model, count_parameters, model_configs


def tokens_per_s(arch: str, size: str, vocab: int, batch: int, steps: int, device: str) -> tuple[int, float]:
    """(parameters, median training tokens per second) of `arch` at `size`."""
    torch.manual_seed(0)
    cfg = model_configs(arch)[size]
    model = build_model(arch, {**cfg, "vocab_size": vocab}).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    T = cfg["seq_len"]
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 1):
        idx = torch.randint(0, vocab, (batch, T + 1), generator=gen).to(device)
        t0 = time.perf_counter()
        loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return count_parameters(model), batch * T / statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", nargs="*", default=sorted(ARCHITECTURES, key=lambda a: (a != "transformer", a)))
    args = parser.parse_args()
    os.environ.setdefault("CURATE_KERNELS_COMPILE", "0")  # measure the models, not compile warm-up
    arches = ["transformer"] + [a for a in args.arch if a != "transformer"]
    print(
        f"training tokens/s, size {args.size}, vocab {args.vocab}, batch {args.batch}, {args.device}, "
        f"median of {args.steps} steps"
    )
    print(f"{'architecture':<20} {'parameters':>12} {'tokens/s':>10} {'vs transformer':>15}")
    base = None
    for arch in arches:
        params, speed = tokens_per_s(arch, args.size, args.vocab, args.batch, args.steps, args.device)
        base = base or speed
        print(f"{arch:<20} {params:>12,} {speed:>10,.0f} {speed / base:>14.2f}x", flush=True)


if __name__ == "__main__":
    main()
