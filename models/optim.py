"""Optimizers and the learning-rate schedule: AdamW, or SWAN (Ma et al. 2025, methods.md §F) on
the 2-D weights inside blocks with AdamW on embeddings, head and norms as in the paper's setup;
linear warm-up then cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.config import TrainConfig


def grad_norm_rows(g: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SWAN's GradNorm: standardise each row of g (m <= n) across its n columns."""
    mean = g.mean(dim=1, keepdim=True)
    std = (g - mean).pow(2).mean(dim=1, keepdim=True).sqrt()
    return (g - mean) / (std + eps)


def whiten(g: torch.Tensor, steps: int) -> torch.Tensor:
    """SWAN's GradWhitening (G G^T)^(-1/2) G for m <= n, by the coupled Newton-Schulz iteration:
    G is scaled to unit Frobenius norm so the eigenvalues of G G^T lie in (0, 1]."""
    g = g / (g.norm() + 1e-12)
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    y, z = g @ g.T, eye
    for _ in range(steps):
        t = 3 * eye - z @ y
        y, z = 0.5 * y @ t, 0.5 * t @ z
    return z @ g


class SWAN(torch.optim.Optimizer):
    """Stateless: W <- W - lr * sqrt(mn) * D / ||D||_F with D = GradWhitening(GradNorm(G))."""

    def __init__(self, params, lr: float, ns_steps: int = 10):
        super().__init__(params, {"lr": lr, "ns_steps": ns_steps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                transposed = g.shape[0] > g.shape[1]
                if transposed:
                    g = g.T
                d = whiten(grad_norm_rows(g), group["ns_steps"])
                d = d * (math.sqrt(d.numel()) / (d.norm() + 1e-12))
                p.add_(d.T if transposed else d, alpha=-group["lr"])


def build_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW with weight decay on 2-D weights only; with `swan`, the 2-D block weights go to SWAN."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [p for n, p in named if p.ndim == 2 and ".blocks." in f".{n}"] if cfg.optimizer == "swan" else []
    taken = {id(p) for p in matrices}
    decay = [p for n, p in named if p.ndim >= 2 and id(p) not in taken]
    no_decay = [p for n, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).is_cuda
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)
    optimizers: list[torch.optim.Optimizer] = [adamw]
    if matrices:
        optimizers.append(SWAN(matrices, lr=cfg.lr, ns_steps=cfg.swan_ns_steps))
    return optimizers


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then cosine to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
