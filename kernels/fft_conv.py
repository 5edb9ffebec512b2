"""FFT long convolution for H3's SSM path: y = causal_conv(u, k) + D * u, one filter per channel.

u is (B, C, L), the filter k (C, Lk) with Lk <= L, D (C,) or None. Zero-padding to n >= L + Lk - 1
keeps the convolution linear: a circular one would let later tokens leak into earlier outputs.

Three implementations: `fft_conv_reference` (a direct grouped conv1d, obviously right, the oracle),
`fft_conv_torch` (torch.fft, the CPU path) and a Triton kernel (the CUDA path). Triton has no FFT, so
the kernel does each length-n DFT as two small matrix products (the four-step / Monarch factorisation
n = N1 * N2 that FlashFFTConv uses): DFT over N1, a twiddle, DFT over N2; then multiplies by the filter's
spectrum and runs the inverse the same way, one program per (batch, channel) row, all in registers.
The backward is the same convolution on reversed sequences: du = flip(conv(flip(dy), k)) and
dk[j] = sum_b conv(flip(dy), u)[L - 1 - j].
"""

import functools
import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.dispatch import pick_triton

MAX_TRITON_FFT = 8192  # the kernel keeps an N1 x N2 complex tile per row in registers


def fft_conv_reference(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """y[b, c, t] = sum_{s <= t} k[c, s] u[b, c, t - s] + D[c] u[b, c, t], as a direct conv1d (O(L * Lk))."""
    C, Lk = k.shape
    y = F.conv1d(F.pad(u.float(), (Lk - 1, 0)), k.float().flip(-1)[:, None, :], groups=C)
    if D is not None:
        y = y + D.float()[:, None] * u.float()
    return y.to(u.dtype)


def fft_conv_torch(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
    """The same through torch.fft: rfft of both padded to a power of two >= L + Lk - 1, multiply, irfft."""
    L, Lk = u.shape[-1], k.shape[-1]
    n = triton.next_power_of_2(L + Lk - 1)
    y = torch.fft.irfft(torch.fft.rfft(u.float(), n=n) * torch.fft.rfft(k.float(), n=n), n=n)[..., :L]
    if D is not None:
        y = y + D.float()[:, None] * u.float()
    return y.to(u.dtype)


@functools.lru_cache(maxsize=16)
def _dft_tables(n1: int, n2: int, device: torch.device) -> torch.Tensor:
    """One flat float32 tensor on `device`: cos and -sin of the N1-point DFT matrix, of the N2-point one,
    and of the twiddles exp(-2 pi i k1 n2 / n), in that order (the kernels' `tables`)."""
    i1, i2 = torch.arange(n1, dtype=torch.float64), torch.arange(n2, dtype=torch.float64)
    parts = []
    for angle in (torch.outer(i1, i1) / n1, torch.outer(i2, i2) / n2, torch.outer(i1, i2) / (n1 * n2)):
        a = angle * (-2 * math.pi)
        parts += [a.cos().flatten(), a.sin().flatten()]
    return torch.cat(parts).float().to(device)


@triton.jit
def _load_table(ptr, R: tl.constexpr, S: tl.constexpr):
    return tl.load(ptr + tl.arange(0, R)[:, None] * S + tl.arange(0, S)[None, :])


@triton.jit
def _load_tables(tables, N1: tl.constexpr, N2: tl.constexpr):
    """The six DFT tables of `_dft_tables`, in its order."""
    f1r, f1i = _load_table(tables, N1, N1), _load_table(tables + N1 * N1, N1, N1)
    f2r, f2i = _load_table(tables + 2 * N1 * N1, N2, N2), _load_table(tables + 2 * N1 * N1 + N2 * N2, N2, N2)
    tr = _load_table(tables + 2 * N1 * N1 + 2 * N2 * N2, N1, N2)
    ti = _load_table(tables + 2 * N1 * N1 + 2 * N2 * N2 + N1 * N2, N1, N2)
    return f1r, f1i, f2r, f2i, tr, ti


@triton.jit
def _dft(x, f1r, f1i, f2r, f2i, tr, ti):
    """Spectrum of a real signal laid out x[n1, n2] = x[N2 n1 + n2]; X[k1, k2] is bin k1 + N1 k2."""
    ar = tl.dot(f1r, x, input_precision="ieee")
    ai = tl.dot(f1i, x, input_precision="ieee")
    br = ar * tr - ai * ti
    bi = ar * ti + ai * tr
    xr = tl.dot(br, f2r, input_precision="ieee") - tl.dot(bi, f2i, input_precision="ieee")
    xi = tl.dot(br, f2i, input_precision="ieee") + tl.dot(bi, f2r, input_precision="ieee")
    return xr, xi


@triton.jit
def _spectrum_kernel(x, out_r, out_i, L, tables, N1: tl.constexpr, N2: tl.constexpr):
    """Program r: the spectrum of row r of x (R, L), zero-padded to N1 * N2, into out (R, N1, N2)."""
    row = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, N1)[:, None] * N2 + tl.arange(0, N2)[None, :]
    xt = tl.load(x + row * L + idx, mask=idx < L, other=0.0).to(tl.float32)
    f1r, f1i, f2r, f2i, tr, ti = _load_tables(tables, N1, N2)
    xr, xi = _dft(xt, f1r, f1i, f2r, f2i, tr, ti)
    tl.store(out_r + row * N1 * N2 + idx, xr)
    tl.store(out_i + row * N1 * N2 + idx, xi)


@triton.jit
def _fftconv_kernel(u, kr, ki, y, L, KROWS, tables, N1: tl.constexpr, N2: tl.constexpr):
    """Program r: y[r] = first L samples of IDFT(DFT(u[r]) * K[r % KROWS]), u and y (R, L)."""
    row = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, N1)[:, None] * N2 + tl.arange(0, N2)[None, :]
    ut = tl.load(u + row * L + idx, mask=idx < L, other=0.0).to(tl.float32)
    f1r, f1i, f2r, f2i, tr, ti = _load_tables(tables, N1, N2)
    xr, xi = _dft(ut, f1r, f1i, f2r, f2i, tr, ti)
    krow = (row % KROWS) * N1 * N2
    sr = tl.load(kr + krow + idx)
    si = tl.load(ki + krow + idx)
    yr = xr * sr - xi * si
    yi = xr * si + xi * sr
    # inverse: conj(F2) on the right, conj twiddle, then the real part of conj(F1) on the left
    cr = tl.dot(yr, f2r, input_precision="ieee") + tl.dot(yi, f2i, input_precision="ieee")
    ci = tl.dot(yi, f2r, input_precision="ieee") - tl.dot(yr, f2i, input_precision="ieee")
    dr = cr * tr + ci * ti
    di = ci * tr - cr * ti
    out = (tl.dot(f1r, dr, input_precision="ieee") + tl.dot(f1i, di, input_precision="ieee")) / (N1 * N2)
    tl.store(y + row * L + idx, out, mask=idx < L)


def _split(n: int) -> tuple[int, int]:
    """n = N1 * N2 with N1 <= N2, both powers of two >= 16 (tl.dot's smallest tile)."""
    n = max(n, 256)
    n1 = 2 ** (int(math.log2(n)) // 2)
    return n1, n // n1


def _triton_causal_conv(u: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Rows of u (R, L) convolved causally with rows of filt (KR, Lf), row r with filter r % KR; float32."""
    R, L = u.shape
    n1, n2 = _split(triton.next_power_of_2(L + filt.shape[-1] - 1))
    tables = _dft_tables(n1, n2, u.device)
    spec_r = torch.empty(filt.shape[0], n1, n2, device=u.device, dtype=torch.float32)
    spec_i = torch.empty_like(spec_r)
    _spectrum_kernel[(filt.shape[0],)](filt.contiguous(), spec_r, spec_i, filt.shape[-1], tables, N1=n1, N2=n2)
    y = torch.empty(R, L, device=u.device, dtype=torch.float32)
    _fftconv_kernel[(R,)](u.contiguous(), spec_r, spec_i, y, L, filt.shape[0], tables, N1=n1, N2=n2)
    return y


class _FFTConvTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, k):
        B, C, L = u.shape
        ctx.save_for_backward(u, k)
        return _triton_causal_conv(u.reshape(B * C, L), k).view(B, C, L).to(u.dtype)

    @staticmethod
    def backward(ctx, dy):
        u, k = ctx.saved_tensors
        B, C, L = u.shape
        dy_rev = dy.flip(-1).reshape(B * C, L)
        du = _triton_causal_conv(dy_rev, k).flip(-1).view(B, C, L).to(u.dtype)
        corr = _triton_causal_conv(dy_rev, u.reshape(B * C, L)).view(B, C, L)  # [..., L-1-j] = dk[j]
        dk = corr.sum(0).flip(-1)[:, : k.shape[-1]].to(k.dtype)
        return du, dk


def fft_conv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Causal long convolution of u (B, C, L) with per-channel filters k (C, Lk <= L), plus D (C,) * u.

    backend "auto": the Triton kernel on CUDA tensors (padded length up to 8192, beyond it torch.fft),
    torch.fft elsewhere; "triton", "torch" force one; "reference" is the direct conv1d oracle.
    """
    if u.dim() != 3 or k.dim() != 2 or k.shape[0] != u.shape[1] or k.shape[1] > u.shape[2]:
        raise ValueError(
            f"fft_conv: need u (B, C, L) and k (C, Lk) with Lk <= L; got u {tuple(u.shape)}, k {tuple(k.shape)}"
        )
    if D is not None and D.shape != (u.shape[1],):
        raise ValueError(f"fft_conv: D must be ({u.shape[1]},), got {tuple(D.shape)}")
    if backend == "reference":
        return fft_conv_reference(u, k, D)
    fits = triton.next_power_of_2(u.shape[-1] + k.shape[-1] - 1) <= MAX_TRITON_FFT
    if pick_triton(backend, u, k) and (fits or backend == "triton"):
        y = _FFTConvTriton.apply(u, k)
        return y if D is None else y + D[:, None] * u
    return fft_conv_torch(u, k, D)
