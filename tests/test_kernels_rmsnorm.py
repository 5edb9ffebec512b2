"""RMSNorm fused with the residual add: the Triton kernel and the PyTorch path against torch's F.rms_norm."""

import pytest
import torch
import torch.nn.functional as F

from kernels.rmsnorm import rms_norm
from tests.kernels_support import DEVICE, assert_close, gpu, needs_cuda


def _inputs(shape: tuple[int, ...], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, residual, up_y, up_h = (torch.randn(shape, generator=g).to(DEVICE) for _ in range(4))
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(DEVICE)
    return x.requires_grad_(), residual.requires_grad_(), weight.requires_grad_(), up_y, up_h


def _oracle(x, weight, eps, residual):
    h = x if residual is None else x + residual
    return F.rms_norm(h, (h.shape[-1],), weight, eps), h


def _check(shape: tuple[int, ...], backend: str, with_residual: bool) -> None:
    x, residual, weight, up_y, up_h = _inputs(shape)
    residual = residual if with_residual else None
    inputs = [x, weight] + ([residual] if with_residual else [])
    results = []
    for fn in (
        lambda: rms_norm(x, weight, 1e-6, residual, backend=backend),
        lambda: _oracle(x, weight, 1e-6, residual),
    ):
        y, h = fn()
        # gradients through both outputs, as a pre-norm block uses them (h goes on as the residual stream)
        results.append([y, h, *torch.autograd.grad((y * up_y).sum() + (h * up_h).sum(), inputs)])
    for name, got, want in zip(("y", "h", "dx", "dweight", "dresidual"), *results):
        assert_close(name, got, want)


@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_forward_and_backward_match_f_rms_norm(backend, with_residual):
    _check((3, 50, 96), backend, with_residual)  # 150 rows, a width that is no power of two


def test_bad_weight_shape_is_named():
    x, _, weight, _, _ = _inputs((4, 8))
    with pytest.raises(ValueError, match=r"weight must be \(8,\).*got weight \(7,\)"):
        rms_norm(x, weight[:7])


@gpu
@needs_cuda
@pytest.mark.parametrize("with_residual", [True, False])
def test_gpu_large(with_residual):
    _check((8, 2048, 768), "triton", with_residual)
