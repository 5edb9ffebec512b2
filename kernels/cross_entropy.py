"""Fused linear + cross-entropy: the loss of `x @ weight.T` against targets without the [N, V] logits.

Rows are processed in chunks; a chunk's logits exist only while its log-sum-exp and, when training,
its gradient (`softmax - onehot`, in place) are computed, and dx and dW (float32) are accumulated
straight away, so the backward of the mean loss is a scaling (Liger-Kernel's scheme). Unlike Liger,
evaluation without gradients runs the log-sum-exp alone, and the per-token losses carry gradients too:
their backward recomputes each chunk's logits from the saved log-sum-exp per row.

`linear_cross_entropy` is what models call; `linear_cross_entropy_reference` is the plain PyTorch
oracle, which does materialise the logits.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.dispatch import pick_triton

IGNORE_INDEX = -100


def linear_cross_entropy_reference(
    x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and per-token losses (0 where ignored) through full float32 logits: the oracle."""
    logits = (x @ weight.T).float()  # (N, V)
    per_token = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    return per_token.sum() / (target != ignore_index).sum(), per_token


@triton.jit
def _row_stats_kernel(logits, stride, target, lse_out, loss_out, V, ignore_index, BLOCK_V: tl.constexpr):
    """One program per row: online log-sum-exp over V in blocks, then lse - logit[target]."""
    row = tl.program_id(0).to(tl.int64)
    ptr = logits + row * stride
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
        m = m_new
    lse = m + tl.log(s)
    t = tl.load(target + row)
    ignored = t == ignore_index
    z_t = tl.load(ptr + tl.where(ignored, 0, t)).to(tl.float32)
    tl.store(lse_out + row, lse)
    tl.store(loss_out + row, tl.where(ignored, 0.0, lse - z_t))


@triton.jit
def _logits_grad_kernel(logits, stride, target, lse, row_grad, V, BLOCK_V: tl.constexpr):
    """One program per row, in place: logits <- (softmax - onehot(target)) * row_grad (0 for ignored rows)."""
    row = tl.program_id(0).to(tl.int64)
    ptr = logits + row * stride
    t = tl.load(target + row)
    r = tl.load(lse + row)
    g = tl.load(row_grad + row)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(ptr + cols, mask=cols < V, other=0.0).to(tl.float32)
        p = tl.exp(z - r) - tl.where(cols == t, 1.0, 0.0)
        tl.store(ptr + cols, (p * g).to(logits.dtype.element_ty), mask=cols < V)


def _block_v(V: int) -> int:
    return min(triton.next_power_of_2(V), 4096)


def _row_stats(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, triton_path: bool):
    """(lse, loss) per row of a chunk, float32; loss is 0 where the target is ignored."""
    if triton_path:
        n, V = logits.shape
        lse, loss = (torch.empty(n, device=logits.device, dtype=torch.float32) for _ in range(2))
        _row_stats_kernel[(n,)](logits, logits.stride(0), target, lse, loss, V, ignore_index, BLOCK_V=_block_v(V))
        return lse, loss
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1)
    ignored = target == ignore_index
    z_t = z.gather(1, target.masked_fill(ignored, 0)[:, None])[:, 0]
    return lse, (lse - z_t).masked_fill(ignored, 0.0)


def _logits_grad_(
    logits: torch.Tensor,
    target: torch.Tensor,
    lse: torch.Tensor,
    row_grad: torch.Tensor,
    ignore_index: int,
    triton_path: bool,
) -> torch.Tensor:
    """d loss / d logits for a chunk, written over `logits` (row_grad is already 0 on ignored rows)."""
    if triton_path:
        n, V = logits.shape
        _logits_grad_kernel[(n,)](logits, logits.stride(0), target, lse, row_grad, V, BLOCK_V=_block_v(V))
        return logits
    p = torch.exp(logits.float() - lse[:, None])
    rows = torch.arange(len(target), device=target.device)
    p[rows, target.masked_fill(target == ignore_index, 0)] -= 1.0
    return logits.copy_(p * row_grad[:, None])


def default_chunk_rows(n: int, d: int, V: int) -> int:
    """Rows per chunk so that a chunk's logits are about as large as x itself, but at least 256 rows:
    smaller chunks re-read dW too often (64 rows took 1.7x the time of 256 at d=256, V=32k on CPU)."""
    return max(1, min(n, triton.next_power_of_2(max(256, -(-n * d // V)))))


def _chunk_pass(x, weight, target, ignore_index: int, chunk_rows: int, triton_path: bool, lse=None, row_grad=None):
    """One pass over the row chunks. Without `lse` it computes (lse, per-token loss) per row; with
    `row_grad` (d loss / d per-token loss, 0 where ignored) it also accumulates dx and dW (float32)."""
    n = x.shape[0]
    stats = lse is None
    if stats:
        lse = torch.empty(n, device=x.device, dtype=torch.float32)
    per_token = torch.empty(n, device=x.device, dtype=torch.float32) if stats else None
    dx = dw = None
    if row_grad is not None:
        dx = torch.empty_like(x)
        dw = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
    for i in range(0, n, chunk_rows):
        rows = slice(i, i + chunk_rows)
        xc, logits = x[rows], x[rows] @ weight.T  # (rows, V): the only logits ever held
        if stats:
            lse[rows], per_token[rows] = _row_stats(logits, target[rows], ignore_index, triton_path)
        if row_grad is not None:
            dlogits = _logits_grad_(logits, target[rows], lse[rows], row_grad[rows], ignore_index, triton_path)
            dx[rows] = dlogits @ weight
            dw.addmm_(dlogits.T.float(), xc.float())
    return lse, per_token, dx, dw


class _LinearCrossEntropy(torch.autograd.Function):
    """Gradients of the mean are computed during the forward, as Liger-Kernel does, when any input needs
    them (the backward then only scales them); gradients through the per-token losses recompute logits."""

    @staticmethod
    def forward(ctx, x, weight, target, ignore_index: int, chunk_rows: int, triton_path: bool):
        ctx.set_materialize_grads(False)
        valid = target != ignore_index
        count = valid.sum()
        mean_grad = valid.float() / count if any(ctx.needs_input_grad[:2]) else None  # d mean / d per-token
        lse, per_token, dx, dw = _chunk_pass(
            x, weight, target, ignore_index, chunk_rows, triton_path, row_grad=mean_grad
        )
        ctx.save_for_backward(x, weight, target, lse, dx, dw)
        ctx.ignore_index, ctx.chunk_rows, ctx.triton_path = ignore_index, chunk_rows, triton_path
        return per_token.sum() / count, per_token

    @staticmethod
    def backward(ctx, grad_mean, grad_per_token):
        x, weight, target, lse, dx_mean, dw_mean = ctx.saved_tensors
        dx = torch.zeros_like(x)
        dw = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
        if grad_mean is not None:
            dx += dx_mean * grad_mean.to(x.dtype)
            dw += dw_mean * grad_mean.float()
        if grad_per_token is not None:
            row_grad = grad_per_token.float().masked_fill(target == ctx.ignore_index, 0.0)
            _, _, dx_tok, dw_tok = _chunk_pass(
                x, weight, target, ctx.ignore_index, ctx.chunk_rows, ctx.triton_path, lse=lse, row_grad=row_grad
            )
            dx += dx_tok
            dw += dw_tok
        return dx, dw.to(weight.dtype), None, None, None, None


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_rows: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of `x @ weight.T` (x: (N, d), weight: (V, d), target: (N,)) and per-token losses.

    Both outputs are differentiable; ignored targets (`ignore_index`) count neither in the mean nor in
    the per-token losses (0 there). As F.cross_entropy, the mean is NaN when every target is ignored.
    backend "auto" runs the Triton row kernels on CUDA tensors and the same chunked algorithm in PyTorch
    elsewhere; "triton" forces the kernels (on CPU tensors they need TRITON_INTERPRET=1), "torch" the
    PyTorch path.
    """
    if x.dim() != 2 or weight.dim() != 2 or target.shape != x.shape[:1] or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"linear_cross_entropy: need x (N, d), weight (V, d), target (N,); got x {tuple(x.shape)}, "
            f"weight {tuple(weight.shape)}, target {tuple(target.shape)}"
        )
    rows = chunk_rows or default_chunk_rows(x.shape[0], x.shape[1], weight.shape[0])
    triton_path = pick_triton(backend, x, weight)
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        # Evaluation: the log-sum-exp only; inside the Function, a weight that requires grad would
        # make the forward accumulate gradients nobody reads.
        _, per_token, _, _ = _chunk_pass(x, weight, target, ignore_index, rows, triton_path)
        return per_token.sum() / (target != ignore_index).sum(), per_token
    return _LinearCrossEntropy.apply(x, weight, target, ignore_index, rows, triton_path)
