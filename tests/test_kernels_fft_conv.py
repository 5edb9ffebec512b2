"""FFT long convolution: the Triton four-step-DFT kernel and the torch.fft path against a direct conv1d."""

import pytest
import torch

from kernels.fft_conv import fft_conv
from tests.kernels_support import DEVICE, assert_close, gpu, needs_cuda


def _inputs(B: int, C: int, L: int, Lk: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, C, L, generator=g).to(DEVICE).requires_grad_()
    k = (torch.randn(C, Lk, generator=g) * Lk**-0.5).to(DEVICE).requires_grad_()
    D = torch.randn(C, generator=g).to(DEVICE).requires_grad_()
    up = torch.randn(B, C, L, generator=g).to(DEVICE)
    return u, k, D, up


def _check(B: int, C: int, L: int, Lk: int, backend: str) -> None:
    u, k, D, up = _inputs(B, C, L, Lk)
    results = []
    for be in (backend, "reference"):
        y = fft_conv(u, k, D, backend=be)
        results.append([y, *torch.autograd.grad((y * up).sum(), [u, k, D])])
    for name, got, want in zip(("y", "du", "dk", "dD"), *results):
        assert_close(name, got, want)


@pytest.mark.parametrize("L, Lk", [(100, 100), (256, 64), (37, 5)])  # padded FFT sizes 256 and 512
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_matches_direct_convolution(backend, L, Lk):
    _check(2, 3, L, Lk, backend)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_later_inputs_never_reach_earlier_outputs(backend):
    u, k, _, _ = _inputs(1, 2, 128, 128)
    y = fft_conv(u, k, backend=backend)
    changed = u.detach().clone()
    changed[..., 50:] += 10.0
    y2 = fft_conv(changed, k.detach(), backend=backend)
    assert (y2[..., :50] - y[..., :50]).abs().max() < 1e-5
    assert (y2[..., 50:] - y[..., 50:]).abs().max() > 1.0


def test_filter_longer_than_the_input_is_named():
    u, k, _, _ = _inputs(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"Lk <= L.*k \(2, 8\)"):
        fft_conv(u[..., :4], k)


@gpu
@needs_cuda
def test_gpu_large():
    _check(4, 256, 2048, 2048, "triton")
