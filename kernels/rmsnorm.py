"""RMSNorm fused with the residual add: h = x + residual; y = h / rms(h) * weight.

Pre-norm blocks add a sublayer's output to the residual stream and normalise the sum straight away;
fusing the two reads each activation once. The Triton forward and backward follow the pattern of
Triton's layer-norm tutorial (one program per row forward; the backward gives each program a run of
rows and reduces their weight-gradient partials afterwards).
"""

import torch
import triton
import triton.language as tl

from kernels.dispatch import compiled_on_cpu, pick_triton


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, h): h = x + residual (or x), y = h * rsqrt(mean(h^2) + eps) * weight, computed in float32."""
    h = x if residual is None else x + residual
    h32 = h.float()
    y = h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype), h


_rms_norm_compiled = compiled_on_cpu(rms_norm_reference)


@triton.jit
def _rms_fwd_kernel(x, res, h_out, y, w, rstd_out, D, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    h = tl.load(x + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        h += tl.load(res + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(h_out + row * D + cols, h.to(h_out.dtype.element_ty), mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, 0) / D + eps)
    wv = tl.load(w + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y + row * D + cols, (h * rstd * wv).to(y.dtype.element_ty), mask=mask)
    tl.store(rstd_out + row, rstd)


@triton.jit
def _rms_bwd_kernel(
    dy, dh_in, h, w, rstd, dh_out, dw_part, N, D, ROWS: tl.constexpr, HAS_DH: tl.constexpr, BLOCK: tl.constexpr
):
    """Rows [pid*ROWS, pid*ROWS + ROWS): dh = dh_in + rstd * (w*dy - hn * mean(w*dy*hn)); dw partial = sum dy*hn."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    wv = tl.load(w + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    for row in range(pid * ROWS, tl.minimum(pid * ROWS + ROWS, N)):
        row = tl.cast(row, tl.int64)
        hv = tl.load(h + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(dy + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(rstd + row)
        hn = hv * r
        gw = g * wv
        dh = r * (gw - hn * (tl.sum(gw * hn, 0) / D))
        if HAS_DH:
            dh += tl.load(dh_in + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dh_out + row * D + cols, dh.to(dh_out.dtype.element_ty), mask=mask)
        dw += g * hn
    tl.store(dw_part + pid * D + cols, dw, mask=mask)


class _RMSNormTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, residual, eps: float):
        shape, D = x.shape, x.shape[-1]
        x2 = x.reshape(-1, D).contiguous()
        res2 = None if residual is None else residual.reshape(-1, D).contiguous()
        n = x2.shape[0]
        h = x2 if res2 is None else torch.empty_like(x2)
        y = torch.empty_like(x2)
        rstd = torch.empty(n, device=x.device, dtype=torch.float32)
        block = triton.next_power_of_2(D)
        _rms_fwd_kernel[(n,)](
            x2, res2 if res2 is not None else x2, h, y, weight, rstd, D, eps, HAS_RES=res2 is not None, BLOCK=block
        )
        ctx.save_for_backward(h, weight, rstd)
        ctx.has_res = residual is not None
        return (y.view(shape), h.view(shape)) if ctx.has_res else y.view(shape)

    @staticmethod
    def backward(ctx, dy, *dh_rest):
        h, weight, rstd = ctx.saved_tensors
        dh_in = dh_rest[0] if dh_rest else None
        n, D = h.shape
        rows = max(1, triton.cdiv(n, 1024))
        programs = triton.cdiv(n, rows)
        dy2 = dy.reshape(n, D).contiguous()
        dh_in2 = None if dh_in is None else dh_in.reshape(n, D).contiguous()
        dh = torch.empty_like(h)
        dw_part = torch.empty(programs, D, device=h.device, dtype=torch.float32)
        _rms_bwd_kernel[(programs,)](
            dy2,
            dh_in2 if dh_in2 is not None else dy2,
            h,
            weight,
            rstd,
            dh,
            dw_part,
            n,
            D,
            ROWS=rows,
            HAS_DH=dh_in2 is not None,
            BLOCK=triton.next_power_of_2(D),
        )
        dh = dh.view(dy.shape)
        return dh, dw_part.sum(0).to(weight.dtype), dh if ctx.has_res else None, None


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, h) with h = x + residual (x itself without one) and y = RMSNorm(h) * weight over the last dim.

    Return h as the new residual stream. backend "auto": the Triton kernel on CUDA tensors, the
    compiled PyTorch reference elsewhere; "triton" or "torch" force one.
    """
    if weight.shape != x.shape[-1:] or (residual is not None and residual.shape != x.shape):
        raise ValueError(
            f"rms_norm: weight must be ({x.shape[-1]},) and residual like x {tuple(x.shape)}; got weight "
            f"{tuple(weight.shape)}, residual {None if residual is None else tuple(residual.shape)}"
        )
    if pick_triton(backend, x, weight, residual):
        if residual is None:
            return _RMSNormTriton.apply(x, weight, None, eps), x
        return _RMSNormTriton.apply(x, weight, residual, eps)
    return _rms_norm_compiled(x, weight, eps, residual)
