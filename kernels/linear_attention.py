"""Chunked linear attention with a feature map, an initial state and a recurrent step (Based, JRT-RNN).

With feature-mapped queries and keys (B, H, T, K), values (B, H, T, V) and a state (kv: (B, H, K, V),
z: (B, H, K)), position t attends to every position s <= t and to the state:

    o_t = q_t . (kv + sum_{s<=t} k_s v_s^T) / (q_t . (z + sum_{s<=t} k_s) + eps)

Based runs it causally from a zero state with `taylor_feature_map`; JRT-RNN's prefix linear attention
is the same call with `prefix_state(k_enc, v_enc)` as the initial state (the encoder's non-causal
sum), so one kernel serves both. The normaliser rides along as one more value column of ones, so the
kernel only computes unnormalised attention. Its backward is three calls of the same forward kernel:
dq is linear attention of (do, v, k), and dk, dv are linear attention over reversed time of (v, do, q)
and (k, q, do), started from the final state's gradient; the last of them ends on the initial state's
gradient.

Three implementations of the unnormalised core: `recurrent_reference` (a loop over t, obviously right,
the test oracle), `chunked_reference` (the kernel's algorithm in PyTorch, the CPU path) and the Triton
kernels (the CUDA path).
"""

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels.dispatch import compiled_on_cpu, pick_triton


class LinearAttentionState(NamedTuple):
    """The recurrent state: kv (B, H, K, V), the sum of k v^T; z (B, H, K), the sum of k."""

    kv: torch.Tensor
    z: torch.Tensor


def taylor_feature_map(x: torch.Tensor) -> torch.Tensor:
    """Based's 2nd-order Taylor map, (..., f) -> (..., 1 + f + f^2): phi(q).phi(k) = 1 + s + s^2/2, s = q.k/sqrt(f)."""
    f = x.shape[-1]
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2 * f)
    return torch.cat([torch.ones_like(x[..., :1]), x / f**0.25, outer], dim=-1)


def prefix_state(k: torch.Tensor, v: torch.Tensor) -> LinearAttentionState:
    """JRT-RNN's non-causal prefix: the state after reading feature-mapped keys k (B, H, M, K) and values v."""
    return LinearAttentionState(torch.einsum("bhmk,bhmv->bhkv", k.float(), v.float()), k.float().sum(2))


def linear_attention_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LinearAttentionState, eps: float = 1e-6
) -> tuple[torch.Tensor, LinearAttentionState]:
    """One decoding step: q, k (B, H, K) feature-mapped, v (B, H, V) -> (o (B, H, V), the state after it)."""
    kv = state.kv + k.float()[..., :, None] * v.float()[..., None, :]
    z = state.z + k.float()
    num = torch.einsum("bhk,bhkv->bhv", q.float(), kv)
    den = (q.float() * z).sum(-1, keepdim=True)
    return (num / (den + eps)).to(v.dtype), LinearAttentionState(kv, z)


def recurrent_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h0: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised o_t = (h0 + sum_{s<=t} k_s v_s^T)^T q_t and the final state, one position at a time."""
    B, H, T, K = q.shape
    h = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32) if h0 is None else h0.float()
    out = []
    for t in range(T):
        h = h + k[:, :, t].float()[..., :, None] * v[:, :, t].float()[..., None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t].float(), h))
    return torch.stack(out, dim=2), h


def chunked_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h0: torch.Tensor | None, chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as `recurrent_reference`, chunk by chunk: inter-chunk through the state, intra-chunk masked."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    pad = -T % chunk
    q, k, v = (torch.nn.functional.pad(t.float(), (0, 0, 0, pad)).unflatten(2, (-1, chunk)) for t in (q, k, v))
    kv = k.transpose(-1, -2) @ v  # (B, H, N, K, V): each chunk's contribution
    start = torch.cumsum(kv, dim=2) - kv  # state at the start of each chunk, without h0
    if h0 is not None:
        start = start + h0.float()[:, :, None]
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    o = q @ start + ((q @ k.transpose(-1, -2)) * causal) @ v
    final = start[:, :, -1] + kv[:, :, -1]
    return o.flatten(2, 3)[:, :, :T], final.reshape(B, H, K, V)


_chunked_compiled = compiled_on_cpu(chunked_reference)


@triton.jit
def _chunk_states_kernel(
    k, v, h0, states, hT, T, K, V, NC, HAS_H0: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr
):
    """Program (k-block, v-block, b*H + h): walk the chunks, storing the state at each chunk's start."""
    i_k, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    ok = i_k * BK + tl.arange(0, BK)
    ov = i_v * BV + tl.arange(0, BV)
    mkv = (ok[:, None] < K) & (ov[None, :] < V)
    h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        h += tl.load(h0 + i_bh * K * V + ok[:, None] * V + ov[None, :], mask=mkv, other=0.0).to(tl.float32)
    for n in range(NC):
        tl.store(states + ((i_bh * NC + n) * K + ok[:, None]) * V + ov[None, :], h, mask=mkv)
        ot = n * C + tl.arange(0, C)
        kt = tl.load(
            k + (i_bh * T + ot[None, :]) * K + ok[:, None], mask=(ot[None, :] < T) & (ok[:, None] < K), other=0.0
        ).to(tl.float32)  # (BK, C)
        vt = tl.load(
            v + (i_bh * T + ot[:, None]) * V + ov[None, :], mask=(ot[:, None] < T) & (ov[None, :] < V), other=0.0
        ).to(tl.float32)  # (C, BV)
        h += tl.dot(kt, vt, input_precision="ieee")
    tl.store(hT + i_bh * K * V + ok[:, None] * V + ov[None, :], h, mask=mkv)


@triton.jit
def _chunk_output_kernel(q, k, v, states, o, T, K, V, NC, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Program (v-block, chunk n, b*H + h): o = q S_n + (q k^T, lower triangle) v over the chunk."""
    i_v, n, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    ot = n * C + tl.arange(0, C)
    ov = i_v * BV + tl.arange(0, BV)
    acc = tl.zeros([C, BV], dtype=tl.float32)
    att = tl.zeros([C, C], dtype=tl.float32)
    for kb in range(0, K, BK):
        ok = kb + tl.arange(0, BK)
        qt = tl.load(
            q + (i_bh * T + ot[:, None]) * K + ok[None, :], mask=(ot[:, None] < T) & (ok[None, :] < K), other=0.0
        ).to(tl.float32)  # (C, BK)
        kt = tl.load(
            k + (i_bh * T + ot[None, :]) * K + ok[:, None], mask=(ot[None, :] < T) & (ok[:, None] < K), other=0.0
        ).to(tl.float32)  # (BK, C)
        s = tl.load(
            states + ((i_bh * NC + n) * K + ok[:, None]) * V + ov[None, :],
            mask=(ok[:, None] < K) & (ov[None, :] < V),
            other=0.0,
        )  # (BK, BV)
        acc += tl.dot(qt, s, input_precision="ieee")
        att += tl.dot(qt, kt, input_precision="ieee")
    att = tl.where(ot[:, None] >= ot[None, :], att, 0.0)
    vt = tl.load(
        v + (i_bh * T + ot[:, None]) * V + ov[None, :], mask=(ot[:, None] < T) & (ov[None, :] < V), other=0.0
    ).to(tl.float32)
    acc += tl.dot(att, vt, input_precision="ieee")
    tl.store(o + (i_bh * T + ot[:, None]) * V + ov[None, :], acc, mask=(ot[:, None] < T) & (ov[None, :] < V))


def _triton_forward(q, k, v, h0, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised chunked linear attention through the two kernels; o and the final state in float32."""
    B, H, T, K = q.shape
    V = v.shape[-1]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    nc = triton.cdiv(T, chunk)
    bk, bv = min(64, max(16, triton.next_power_of_2(K))), min(64, max(16, triton.next_power_of_2(V)))
    states = torch.empty(B * H, nc, K, V, device=q.device, dtype=torch.float32)
    h_final = torch.empty(B, H, K, V, device=q.device, dtype=torch.float32)
    h0c = None if h0 is None else h0.float().contiguous()
    _chunk_states_kernel[(triton.cdiv(K, bk), triton.cdiv(V, bv), B * H)](
        k,
        v,
        h0c if h0c is not None else h_final,
        states,
        h_final,
        T,
        K,
        V,
        nc,
        HAS_H0=h0c is not None,
        C=chunk,
        BK=bk,
        BV=bv,
    )
    o = torch.empty(B, H, T, V, device=q.device, dtype=torch.float32)
    _chunk_output_kernel[(triton.cdiv(V, bv), nc, B * H)](q, k, v, states, o, T, K, V, nc, C=chunk, BK=bk, BV=bv)
    return o, h_final


class _LinearAttentionTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, h0, chunk: int):
        o, h_final = _triton_forward(q, k, v, h0, chunk)
        ctx.save_for_backward(q, k, v, h0)
        ctx.chunk = chunk
        return o, h_final

    @staticmethod
    def backward(ctx, do, dh_final):
        q, k, v, h0 = ctx.saved_tensors
        if dh_final is None:
            dh_final = q.new_zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1], dtype=torch.float32)
        flip = lambda t: t.flip(2)  # noqa: E731
        h0_t = None if h0 is None else h0.transpose(-1, -2)
        dq, _ = _triton_forward(do, v, k, h0_t, ctx.chunk)
        dk, _ = _triton_forward(flip(v), flip(do), flip(q), dh_final.transpose(-1, -2), ctx.chunk)
        dv, dh0 = _triton_forward(flip(k), flip(q), flip(do), dh_final, ctx.chunk)
        dh0 = dh0 if h0 is not None and ctx.needs_input_grad[3] else None
        return dq.to(q.dtype), flip(dk).to(k.dtype), flip(dv).to(v.dtype), dh0, None


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: LinearAttentionState | None = None,
    eps: float = 1e-6,
    chunk: int = 64,
    backend: str = "auto",
) -> tuple[torch.Tensor, LinearAttentionState]:
    """Normalised causal linear attention of feature-mapped q, k (B, H, T, K) over v (B, H, T, V).

    Returns o (B, H, T, V) in v's dtype and the final state (float32), which `linear_attention_step`
    continues from. `initial_state` is a previous state or JRT's `prefix_state`. backend "auto": Triton
    on CUDA tensors, the compiled chunked PyTorch reference elsewhere; "reference" is the recurrent
    oracle.
    """
    B, H, T, K = q.shape
    if k.shape != q.shape or v.shape[:3] != q.shape[:3] or chunk < 16 or chunk & (chunk - 1):
        raise ValueError(
            f"linear_attention: need q, k (B, H, T, K), v (B, H, T, V) and a power-of-two chunk >= 16; got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, chunk {chunk}"
        )
    # the normaliser is one more value column of ones (and z one more state column)
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    h0 = None
    if initial_state is not None:
        h0 = torch.cat([initial_state.kv.float(), initial_state.z.float()[..., None]], dim=-1)
    if backend == "reference":
        o, h = recurrent_reference(q, k, v1, h0)
    elif pick_triton(backend, q, k, v):
        o, h = _LinearAttentionTriton.apply(q, k, v1, h0, chunk)
    else:
        o, h = _chunked_compiled(q, k, v1, h0, chunk)
    out = o[..., :-1] / (o[..., -1:] + eps)
    return out.to(v.dtype), LinearAttentionState(h[..., :-1], h[..., -1])
