"""Chunked linear attention: the Triton kernels and the chunked PyTorch path against the recurrent loop,
fla's Based and linear-attention references as oracles, causality, and the recurrent step."""

import pytest
import torch

from kernels.linear_attention import (
    LinearAttentionState,
    linear_attention,
    linear_attention_step,
    prefix_state,
    taylor_feature_map,
)
from tests.kernels_support import DEVICE, assert_close, gpu, needs_cuda


def _inputs(B: int, H: int, T: int, f: int, V: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, f, generator=g).to(DEVICE) for _ in range(2))
    v = torch.randn(B, H, T, V, generator=g).to(DEVICE)
    return q, k, v


def _check(B: int, H: int, T: int, f: int, V: int, backend: str, chunk: int, prefix: int) -> None:
    """Outputs, final state and every gradient (q, k, v, both parts of JRT's prefix state) vs the loop."""
    q, k, v = _inputs(B, H, T, f, V)
    fq, fk = (taylor_feature_map(t).requires_grad_() for t in (q, k))
    v.requires_grad_()
    inputs = [fq, fk, v]
    state = None
    if prefix:
        ke, ve = _inputs(B, H, prefix, f, V, seed=1)[1:]
        kv, z = prefix_state(taylor_feature_map(ke), ve)
        state = LinearAttentionState(kv.requires_grad_(), z.requires_grad_())
        inputs += [state.kv, state.z]
    g = torch.Generator().manual_seed(2)
    up_o = torch.randn(B, H, T, V, generator=g).to(DEVICE)
    up_kv = torch.randn(fk.shape[:2] + (fk.shape[-1], V), generator=g).to(DEVICE) * 1e-3
    results = []
    for be in (backend, "reference"):
        o, final = linear_attention(fq, fk, v, state, chunk=chunk, backend=be)
        loss = (o * up_o).sum() + (final.kv * up_kv).sum()
        results.append([o, final.kv, final.z, *torch.autograd.grad(loss, inputs)])
    names = ["o", "final kv", "final z", "dq", "dk", "dv", "d prefix kv", "d prefix z"]
    for name, got, want in zip(names, *results):
        assert_close(name, got, want)


@pytest.mark.parametrize("prefix", [0, 20])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_matches_the_recurrent_loop(backend, prefix):
    # Taylor features of f=8: K = 73 (two 64-wide key blocks); 100 positions in chunks of 32 (ragged)
    _check(1, 2, 100, 8, 16, backend, chunk=32, prefix=prefix)


def test_based_mode_matches_fla_parallel_based():
    import fla.ops.based.naive as naive  # the dev extra installs fla-core

    q, k, v = _inputs(1, 2, 48, 8, 16)
    o, _ = linear_attention(taylor_feature_map(q), taylor_feature_map(k), v, backend="triton", chunk=16)
    assert_close("o", o, naive.naive_parallel_based(q, k, v, use_norm=True))


def test_prefix_mode_matches_fla_linear_attention_with_initial_state():
    import fla.ops.linear_attn.naive as naive

    q, k, v = _inputs(1, 2, 48, 4, 8)
    fq, fk = taylor_feature_map(q).relu(), taylor_feature_map(k).relu()
    ke, ve = _inputs(1, 2, 10, 4, 8, seed=3)[1:]
    state = prefix_state(taylor_feature_map(ke).relu(), ve)
    o, _ = linear_attention(fq, fk, v, state, eps=1e-10, backend="triton", chunk=16)
    t = lambda x: x.transpose(1, 2)  # noqa: E731  fla lays tensors out (B, T, H, D)
    want, _ = naive.naive_recurrent_linear_attn(
        t(fq), t(fk), t(v), scale=1.0, initial_state=(state.kv, state.z[:, None]), normalize=True
    )
    assert_close("o", o, t(want))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_later_tokens_never_reach_earlier_outputs(backend):
    q, k, v = _inputs(1, 2, 64, 4, 8)
    fq, fk = taylor_feature_map(q), taylor_feature_map(k)
    v.requires_grad_()
    o, _ = linear_attention(fq, fk, v, chunk=16, backend=backend)
    (dv,) = torch.autograd.grad(o[:, :, 20].sum(), [v])  # position 20 sits inside the second chunk
    assert dv[:, :, 21:].abs().max() == 0 and dv[:, :, :21].abs().max() > 0


def test_recurrent_steps_equal_the_parallel_form():
    q, k, v = _inputs(2, 2, 40, 4, 8)
    fq, fk = taylor_feature_map(q), taylor_feature_map(k)
    ke, ve = _inputs(2, 2, 6, 4, 8, seed=4)[1:]
    start = prefix_state(taylor_feature_map(ke), ve)
    o, final = linear_attention(fq[:, :, :30], fk[:, :, :30], v[:, :, :30], start, chunk=16)
    state, steps = final, []
    for t in range(30, 40):  # decode the last 10 positions one at a time from the parallel form's state
        out, state = linear_attention_step(fq[:, :, t], fk[:, :, t], v[:, :, t], state)
        steps.append(out)
    whole, whole_final = linear_attention(fq, fk, v, start, chunk=16)
    assert_close("steps", torch.stack(steps, dim=2), whole[:, :, 30:])
    assert_close("prefix part", o, whole[:, :, :30])
    assert_close("state", state.kv, whole_final.kv)


def test_bad_chunk_is_named():
    q, k, v = _inputs(1, 1, 8, 4, 4)
    with pytest.raises(ValueError, match="chunk 24"):
        linear_attention(q, k, v, chunk=24)


@gpu
@needs_cuda
@pytest.mark.parametrize("prefix", [0, 256])
def test_gpu_large(prefix):
    _check(2, 8, 2048, 16, 64, "triton", chunk=64, prefix=prefix)
