"""The CPU paths that kernels/ runs through torch.compile give the same values and gradients as eager."""

import warnings

import pytest
import torch

from kernels.linear_attention import linear_attention, taylor_feature_map
from kernels.rmsnorm import rms_norm, rms_norm_reference
from kernels.rotary import apply_rotary, apply_rotary_reference, rotary_tables
from tests.kernels_support import assert_close

g = torch.Generator().manual_seed(0)
X, RES = torch.randn(2, 16, 64, generator=g), torch.randn(2, 16, 64, generator=g)
W = torch.randn(64, generator=g)
Q = torch.randn(2, 4, 16, 32, generator=g)
COS, SIN = rotary_tables(16, 32)
FQ, FK = (taylor_feature_map(torch.randn(1, 2, 40, 4, generator=g)) for _ in range(2))
V = torch.randn(1, 2, 40, 8, generator=g)

CASES = {
    "rms_norm": (
        lambda x, w, r: rms_norm(x, w, 1e-6, r, backend="torch")[0],
        lambda x, w, r: rms_norm_reference(x, w, 1e-6, r)[0],
        (X, W, RES),
    ),
    "rotary": (
        lambda q: apply_rotary(q, COS, SIN, backend="torch"),
        lambda q: apply_rotary_reference(q, COS, SIN),
        (Q,),
    ),
    "linear_attention": (
        lambda q, k, v: linear_attention(q, k, v, chunk=16, backend="torch")[0],
        lambda q, k, v: linear_attention(q, k, v, backend="reference")[0],
        (FQ, FK, V),
    ),
}


@pytest.mark.parametrize("op", sorted(CASES))
def test_compiled_path_matches_eager(op, monkeypatch):
    monkeypatch.setenv("CURATE_KERNELS_COMPILE", "1")
    compiled, eager, tensors = CASES[op]
    outs = []
    for fn in (compiled, eager):
        inputs = [t.clone().requires_grad_() for t in tensors]
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="kernels: torch.compile")  # no silent fall-back to eager
            y = fn(*inputs)
        outs.append([y, *torch.autograd.grad((y * y).sum(), inputs)])
    for i, (got, want) in enumerate(zip(*outs)):
        assert_close(f"{op} output {i}", got, want)
