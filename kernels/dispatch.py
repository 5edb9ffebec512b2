"""Which implementation an op runs: its Triton kernel on CUDA tensors, its PyTorch path elsewhere.

The CPU path is the PyTorch reference, passed through `torch.compile` only where benchmarks/fused_ops.py
measured the compiled version faster (see kernels/README.md); `CURATE_KERNELS_COMPILE=0` turns compiling
off (a first call compiles for tens of seconds, which short CPU runs and tests may not want).
"""

import functools
import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """True when every given tensor lives on a CUDA device, where the Triton kernels run."""
    present = [t for t in tensors if t is not None]
    return bool(present) and all(t.is_cuda for t in present)


def pick_triton(backend: str, *tensors: torch.Tensor | None) -> bool:
    """Resolve an op's `backend` argument: "auto" (Triton on CUDA tensors), "triton" or "torch"."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"kernels: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    return use_triton(*tensors) if backend == "auto" else backend == "triton"


def compile_enabled() -> bool:
    """Whether CPU paths marked as faster compiled are compiled (env CURATE_KERNELS_COMPILE, default on)."""
    return os.environ.get("CURATE_KERNELS_COMPILE", "1") != "0"


def compiled_on_cpu(fn: F) -> F:
    """`fn` compiled by torch.compile on first use when compiling is enabled, else `fn` itself."""
    cache: dict[str, Callable] = {}

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not compile_enabled():
            return fn(*args, **kwargs)
        if "fn" not in cache:
            cache["fn"] = torch.compile(fn)
        try:
            return cache["fn"](*args, **kwargs)
        except Exception as err:  # no C++ compiler, an inductor gap: eager still works (and re-raises bad input)
            if cache["fn"] is fn:
                raise
            warnings.warn(
                f"kernels: torch.compile of {fn.__name__} failed ({err!r:.200}); running it eager", stacklevel=2
            )
            cache["fn"] = fn
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
