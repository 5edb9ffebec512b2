"""Rotary embedding: the Triton kernel and the PyTorch path against rotation as complex multiplication."""

import pytest
import torch

from kernels.rotary import apply_rotary, rotary_tables
from tests.kernels_support import DEVICE, assert_close, gpu, needs_cuda


def _oracle(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Pair j of position t as a complex number times exp(i t theta^(-2j/D))."""
    T, D = x.shape[-2], x.shape[-1]
    freqs = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    turn = torch.polar(torch.ones(T, D // 2, dtype=torch.float64), torch.outer(torch.arange(T).double(), freqs))
    pairs = torch.view_as_complex(x.double().unflatten(-1, (D // 2, 2)).contiguous())
    return torch.view_as_real(pairs * turn.to(x.device)).flatten(-2).float()


def _check(B: int, T: int, H: int, D: int, backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    # (B, T, H, D) transposed to (B, H, T, D), as attention lays q and k out: not contiguous
    x = torch.randn(B, T, H, D, generator=g).to(DEVICE).transpose(1, 2).requires_grad_()
    up = torch.randn(B, H, T, D, generator=g).to(DEVICE)
    cos, sin = (t.to(DEVICE) for t in rotary_tables(T, D))
    got = apply_rotary(x, cos, sin, backend=backend)
    want = _oracle(x)
    assert_close("rotated", got, want)
    # the backward of a rotation is the opposite rotation, so the gradient is up rotated back
    (dx,) = torch.autograd.grad((got * up).sum(), [x])
    (want_dx,) = torch.autograd.grad((want * up).sum(), [x])
    assert_close("dx", dx, want_dx)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_matches_complex_rotation(backend):
    _check(2, 100, 3, 32, backend)  # 100 positions: two 64-row blocks, the second ragged


def test_an_offset_is_a_slice_of_the_tables():
    x = torch.randn(1, 2, 5, 8, device=DEVICE)
    cos, sin = (t.to(DEVICE) for t in rotary_tables(20, 8))
    late = apply_rotary(x, cos[10:15], sin[10:15], backend="triton")
    full = apply_rotary(torch.cat([torch.zeros(1, 2, 10, 8, device=DEVICE), x], dim=2), cos[:15], sin[:15])
    assert_close("offset", late, full[:, :, 10:])


def test_bad_tables_are_named():
    x = torch.randn(1, 2, 5, 8)
    cos, sin = rotary_tables(4, 8)
    with pytest.raises(ValueError, match=r"cos \(4, 4\)"):
        apply_rotary(x, cos, sin)


@gpu
@needs_cuda
def test_gpu_large():
    _check(8, 2048, 12, 64, "triton")
