"""Fused linear + cross-entropy: Triton and chunked PyTorch paths against full logits, Liger as an oracle."""

import pytest
import torch
import torch.nn.functional as F

from kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from kernels.memory import PeakMemory
from tests.kernels_support import DEVICE, gpu, needs_cuda


def _inputs(n: int, d: int, V: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(DEVICE).requires_grad_()
    w = (torch.randn(V, d, generator=g) * d**-0.5).to(DEVICE).requires_grad_()
    target = torch.randint(0, V, (n,), generator=g).to(DEVICE)
    target[::7] = -100  # ignored positions
    return x, w, target


def _check(x, w, target, backend: str, chunk_rows: int | None) -> None:
    """Mean and per-token losses and dx, dW (through both outputs) against the full-logits reference."""
    upstream = torch.randn(x.shape[0], generator=torch.Generator().manual_seed(1)).to(x.device)
    results = []
    for fn in (
        lambda: linear_cross_entropy(x, w, target, chunk_rows=chunk_rows, backend=backend),
        lambda: linear_cross_entropy_reference(x, w, target),
    ):
        mean, per_token = fn()
        results.append((mean, per_token, *torch.autograd.grad(mean + (per_token * upstream).sum(), [x, w])))
    for name, got, want in zip(("mean", "per_token", "dx", "dW"), *results):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=5e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert (results[0][1][target == -100] == 0).all()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_matches_full_logits_over_several_chunks_and_vocab_blocks(backend):
    # 100 rows in chunks of 32 (a ragged last chunk); V = 5000 spans two of the row kernel's 4096-wide blocks
    _check(*_inputs(100, 32, 5000), backend=backend, chunk_rows=32)


def test_default_chunking_matches_full_logits():
    _check(*_inputs(150, 64, 1000, seed=3), backend="triton", chunk_rows=None)


def test_agrees_with_liger_kernel():
    import liger_kernel.transformers as liger  # the dev extra installs it

    x, w, target = _inputs(128, 64, 1000, seed=5)
    ours, _ = linear_cross_entropy(x, w, target, backend="triton")
    dx, dw = torch.autograd.grad(ours, [x, w])
    theirs = liger.LigerFusedLinearCrossEntropyLoss(ignore_index=-100)(w, x, target)
    ldx, ldw = torch.autograd.grad(theirs, [x, w])
    for name, got, want in (("loss", ours, theirs), ("dx", dx, ldx), ("dW", dw, ldw)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=5e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_all_targets_ignored_gives_nan_mean_like_f_cross_entropy():
    x, w, target = _inputs(16, 8, 50)
    target[:] = -100
    mean, per_token = linear_cross_entropy(x, w, target)
    assert torch.isnan(mean) and torch.isnan(F.cross_entropy(x @ w.T, target))
    assert (per_token == 0).all()


def test_bad_shapes_name_the_tensors():
    x, w, target = _inputs(16, 8, 50)
    with pytest.raises(ValueError, match=r"weight \(50, 8\), target \(15,\)"):
        linear_cross_entropy(x, w, target[:15])


def test_peak_memory_never_holds_the_logits():
    n, d, V = 2048, 64, 8000  # chunks of 256 rows: an eighth of the logits
    logits_bytes = n * V * 4
    x, w, target = _inputs(n, d, V)
    peaks = {}
    for name, fn in (
        ("fused", lambda: linear_cross_entropy(x, w, target, backend="torch")[0]),
        ("plain", lambda: F.cross_entropy(x @ w.T, target)),
    ):
        with PeakMemory() as mem:
            fn().backward()
        peaks[name] = mem
        x.grad = w.grad = None
    assert peaks["plain"].largest >= logits_bytes  # the tracker does see a logits tensor when there is one
    assert peaks["fused"].largest < logits_bytes / 4
    assert peaks["fused"].peak < 0.5 * peaks["plain"].peak


@gpu
@needs_cuda
def test_gpu_large_vocabulary():
    _check(*_inputs(4096, 512, 32000), backend="triton", chunk_rows=None)


def test_evaluation_under_no_grad_matches_and_computes_no_gradients(monkeypatch):
    # the weight requires grad (a model's head) but grad mode is off: only the losses are computed
    import kernels.cross_entropy as ce

    x, w, target = _inputs(64, 16, 300)
    calls = []
    real = ce._chunk_pass
    monkeypatch.setattr(ce, "_chunk_pass", lambda *a, **k: calls.append(k.get("row_grad")) or real(*a, **k))
    with torch.no_grad():
        mean, per_token = linear_cross_entropy(x, w, target, chunk_rows=16, backend="torch")
        want_mean, want_tok = linear_cross_entropy_reference(x, w, target)
    torch.testing.assert_close(mean, want_mean, atol=1e-5, rtol=5e-4)
    torch.testing.assert_close(per_token, want_tok, atol=1e-5, rtol=5e-4)
    assert calls == [None]
