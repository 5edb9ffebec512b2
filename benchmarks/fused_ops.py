"""kernels/: each op's compiled PyTorch path against its eager one (CPU), or its Triton kernel against
the PyTorch path and the libraries that ship the op (GPU); and the fused cross-entropy's peak memory
against F.cross_entropy(x @ W.T) at a 32k vocabulary.

    .venv/bin/python benchmarks/fused_ops.py            # CPU: compiled vs eager, memory
    .venv/bin/python benchmarks/fused_ops.py --device cuda   # GPU: Triton vs PyTorch vs Liger / fla, memory

Every time is the median of --repeats forward+backward passes after a warm-up (which also compiles):
CPU time of the process on CPU (robust to other jobs on a shared machine), wall time on CUDA. A ratio
above 1 means the named candidate is faster than its baseline, measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels.cross_entropy import linear_cross_entropy
from kernels.fft_conv import fft_conv, fft_conv_torch
from kernels.linear_attention import chunked_reference, linear_attention, taylor_feature_map
from kernels.memory import PeakMemory
from kernels.rmsnorm import rms_norm, rms_norm_reference
from kernels.rotary import apply_rotary, apply_rotary_reference, rotary_tables


def fwd_bwd_seconds(fn: Callable[[], torch.Tensor | tuple], inputs: list[torch.Tensor], repeats: int) -> float:
    """Median seconds of fn() plus the backward of the sum of its first output, after one warm-up."""

    def once() -> None:
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(out.float().sum(), inputs)

    # on CUDA wall time; on CPU the process's CPU time, which other jobs on a shared machine disturb less
    clock = time.perf_counter if inputs[0].is_cuda else time.process_time
    once()
    times = []
    for _ in range(repeats):
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        start = clock()
        once()
        if inputs[0].is_cuda:
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times)


@functools.cache
def compiled(fn: Callable) -> Callable:
    """fn through torch.compile, once per function."""
    return torch.compile(fn)


def cases(device: str) -> dict[str, tuple[list[torch.Tensor], dict[str, Callable]]]:
    """For each op: its inputs and the implementations to time, the baseline first."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device).requires_grad_()

    x, res, w = rand(8, 512, 768), rand(8, 512, 768), rand(768)
    q = rand(8, 12, 512, 64)
    cos, sin = (t.to(device) for t in rotary_tables(512, 64))
    fq, fk = (taylor_feature_map(rand(2, 8, 1024, 16)).detach().requires_grad_() for _ in range(2))
    fv = rand(2, 8, 1024, 64)
    u, filt = rand(4, 768, 1024), rand(768, 1024, scale=0.03)
    table = {
        "rms_norm + residual (8x512x768)": (
            [x, res, w],
            {
                "eager": lambda: rms_norm_reference(x, w, 1e-6, res),
                "compiled": lambda: compiled(rms_norm_reference)(x, w, 1e-6, res),
                "triton": lambda: rms_norm(x, w, 1e-6, res, backend="triton"),
            },
        ),
        "rotary (8x12x512x64)": (
            [q],
            {
                "eager": lambda: apply_rotary_reference(q, cos, sin),
                "compiled": lambda: compiled(apply_rotary_reference)(q, cos, sin),
                "triton": lambda: apply_rotary(q, cos, sin, backend="triton"),
            },
        ),
        "linear attention, Taylor f=16 (2x8x1024, K=273, V=64)": (
            [fq, fk, fv],
            {
                "eager": lambda: chunked_reference(fq, fk, fv, None),
                "compiled": lambda: compiled(chunked_reference)(fq, fk, fv, None),
                "triton": lambda: linear_attention(fq, fk, fv, backend="triton"),
            },
        ),
        "fft conv (4x768x1024, filter 1024)": (
            [u, filt],
            {
                "eager": lambda: fft_conv_torch(u, filt),
                "compiled": lambda: compiled(fft_conv_torch)(u, filt),
                "triton": lambda: fft_conv(u, filt, backend="triton"),
            },
        ),
    }
    if device == "cuda":
        try:
            from fla.ops.linear_attn import chunk_linear_attn

            table["linear attention, Taylor f=16 (2x8x1024, K=273, V=64)"][1]["fla chunk_linear_attn"] = lambda: (
                chunk_linear_attn(*(t.transpose(1, 2) for t in (fq, fk, fv)), scale=1.0, normalize=True)
            )
        except ImportError:
            pass
        try:
            from liger_kernel.transformers import LigerRMSNorm, liger_rotary_pos_emb  # noqa: F401

            norm = LigerRMSNorm(768, eps=1e-6).to(device)
            table["rms_norm + residual (8x512x768)"][1]["liger (add, then norm)"] = lambda: norm(x + res)
        except ImportError:
            pass
    return table


def cross_entropy_memory(device: str, n: int, d: int, V: int, repeats: int) -> list[str]:
    """Peak memory and time of fused linear CE vs F.cross_entropy(x @ W.T), forward + backward."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).to(device).requires_grad_()
    w = (torch.randn(V, d, generator=g) * d**-0.5).to(device).requires_grad_()
    target = torch.randint(0, V, (n,), generator=g).to(device)
    impls = {
        "F.cross_entropy(x @ W.T)": lambda: F.cross_entropy(x @ w.T, target),
        "fused (this package)": lambda: linear_cross_entropy(x, w, target)[0],
    }
    if device == "cuda":
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

            liger = LigerFusedLinearCrossEntropyLoss()
            impls["liger FLCE"] = lambda: liger(w, x, target)
        except ImportError:
            pass
    rows, base = [], None
    for name, fn in impls.items():
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn().backward()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            with PeakMemory() as mem:
                fn().backward()
            peak = mem.peak
        x.grad = w.grad = None
        seconds = fwd_bwd_seconds(fn, [x, w], repeats)
        base = base or (peak, seconds)
        rows.append(
            f"| {name} | {peak / 2**20:,.0f} MiB | {peak / base[0]:.3f} | {seconds * 1e3:,.1f} ms | "
            f"{base[1] / seconds:.2f} |"
        )
    return [
        f"fused linear cross-entropy, N={n}, d={d}, V={V}, forward + backward:",
        "| implementation | peak memory | ratio to plain | time | speed-up |",
        "|---|---|---|---|---|",
        *rows,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads")
    print("| op | baseline | candidate | baseline ms | candidate ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for op, (inputs, impls) in cases(args.device).items():
        names = ["eager", "compiled"] if args.device == "cpu" else list(impls)
        base = fwd_bwd_seconds(impls[names[0]], inputs, args.repeats)
        for name in names[1:]:
            t = fwd_bwd_seconds(impls[name], inputs, args.repeats)
            print(f"| {op} | {names[0]} | {name} | {base * 1e3:,.1f} | {t * 1e3:,.1f} | {base / t:.2f} |", flush=True)
    n, d = (8192, 768) if args.device == "cuda" else (2048, 256)
    print("\n".join(["", *cross_entropy_memory(args.device, n, d, 32000, args.repeats)]))


if __name__ == "__main__":
    main()
