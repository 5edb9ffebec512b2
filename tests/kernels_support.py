"""Shared by tests/test_kernels_*.py: the device the Triton kernels run on here, and the tolerance rule."""

import pytest
import torch

# CUDA when present; else CPU tensors through Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, ratio: float = 1e-3) -> None:
    """fla's rule for fp32 checks: max abs error <= 1e-6, or RMS(got - want) / RMS(want) < ratio."""
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got - want).abs().max().item()
    rel = ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt().clamp_min(1e-30)).item()
    assert err <= 1e-6 or rel < ratio, f"{name}: max abs error {err:.3g}, relative RMS error {rel:.3g}"


def grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    """Gradients of a random projection of `out` (a random upstream gradient) with respect to `inputs`."""
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    return list(torch.autograd.grad((out * upstream).sum(), inputs))
