"""Rotary position embedding (RoPE) on (B, H, T, D) tensors, pairs (even, odd) rotated by position.

The convention matches models/transformer.py: cos and sin are (T, D/2) tables, pair j of position t
turns by angle t * theta^(-2j/D). The backward of a rotation is the rotation by minus the angle, so one
Triton kernel serves both directions; it reads any strides, so q and k need no copy after their
(B, T, H, D) -> (B, H, T, D) transpose.
"""

import torch
import triton
import triton.language as tl

from kernels.dispatch import compiled_on_cpu, pick_triton


def rotary_tables(seq_len: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, each (seq_len, head_dim / 2), float32."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def apply_rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (even, odd) pair of x (B, H, T, D) by its position's angle, in float32."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]  # (B, H, T, D/2)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).to(x.dtype)


_apply_rotary_compiled = compiled_on_cpu(apply_rotary_reference)


@triton.jit
def _rotary_kernel(x, cos, sin, out, H, T, half, sb, sh, st, sd, sign, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr):
    """Program (b*H + h, t-block): out[b, h, t, 2j:2j+2] = R(sign * angle[t, j]) x[b, h, t, 2j:2j+2]."""
    bh = tl.program_id(0)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    j = tl.arange(0, BLOCK_J)
    mask = (t[:, None] < T) & (j[None, :] < half)
    src = x + b * sb + h * sh + t[:, None].to(tl.int64) * st + (2 * j[None, :]) * sd
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + sd, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(cos + t[:, None] * half + j[None, :], mask=mask, other=0.0)
    s = tl.load(sin + t[:, None] * half + j[None, :], mask=mask, other=0.0) * sign
    dst = out + (bh * T + t[:, None]).to(tl.int64) * (2 * half) + 2 * j[None, :]
    tl.store(dst, (x1 * c - x2 * s).to(out.dtype.element_ty), mask=mask)
    tl.store(dst + 1, (x1 * s + x2 * c).to(out.dtype.element_ty), mask=mask)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    B, H, T, D = x.shape
    out = torch.empty((B, H, T, D), device=x.device, dtype=x.dtype)
    block_t = min(64, triton.next_power_of_2(T))
    _rotary_kernel[(B * H, triton.cdiv(T, block_t))](
        x, cos, sin, out, H, T, D // 2, *x.stride(), sign, BLOCK_T=block_t, BLOCK_J=triton.next_power_of_2(D // 2)
    )
    return out


class _RotaryTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0), None, None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """x (B, H, T, D) rotated by the tables' first T rows (slice them for an offset); same dtype as x.

    backend "auto": the Triton kernel on CUDA tensors, the compiled PyTorch reference elsewhere.
    """
    if x.dim() != 4 or x.shape[-1] % 2 or cos.shape != (x.shape[2], x.shape[3] // 2) or sin.shape != cos.shape:
        raise ValueError(
            f"apply_rotary: need x (B, H, T, D) with even D and cos, sin (T, D/2); got x {tuple(x.shape)}, "
            f"cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
        )
    if pick_triton(backend, x):
        return _RotaryTriton.apply(x, cos, sin)
    return _apply_rotary_compiled(x, cos, sin)
