"""n-gram heads (Akyurek, Wang, Kim, Andreas, ICML 2024, arXiv 2401.12973) as an add-on to any backbone.

An n-gram head attends, with uniform weights and no learned scores, to the token after every earlier
occurrence of the n-gram that ends at the query: M[i, j] = 1 iff the n tokens ending at j - 1 equal
the n tokens ending at i, with j <= i; rows are normalised and rows without a match give 0. Its
output is t0(M h) + t1(h), two linear maps, added to the residual stream. The add-on runs one head
per order in `ngram_orders` on the backbone's last residual stream, before its final norm and head:
`<arch>+ngram` for every registered backbone (`with_ngram_heads`), configs being the backbone's
plus `ngram_orders`. Cost: a dense (T, T) match per order, as the paper's reference; kernels/ has no
op for it."""

from __future__ import annotations

from dataclasses import field, make_dataclass

import torch
from torch import nn

from models.transformer import RMSNorm


def ngram_matches(idx: torch.Tensor, n: int) -> torch.Tensor:
    """M (B, T, T) float, row-normalised: query i attends to j when the n-gram ending at j - 1 is the
    n-gram ending at i (j <= i)."""
    B, T = idx.shape
    same = idx[:, :, None] == idx[:, None, :]  # [b, i, j]: token i equals token j
    match = same.clone()
    for m in range(1, n):  # and token i - m equals token j - m (both must exist)
        shifted = torch.zeros_like(same)
        shifted[:, m:, m:] = same[:, :-m, :-m]
        match &= shifted
    after = torch.zeros_like(match)
    after[:, :, 1:] = match[:, :, :-1]  # attend to the token after the earlier occurrence
    pos = torch.arange(T, device=idx.device)
    after &= pos[None, :] <= pos[:, None]
    weights = after.float()
    return weights / weights.sum(-1, keepdim=True).clamp(min=1)


class NGramHead(nn.Module):
    def __init__(self, dim: int, n: int, eps: float):
        super().__init__()
        self.n = n
        self.norm = RMSNorm(dim, eps)
        self.t0 = nn.Linear(dim, dim, bias=False)
        self.t1 = nn.Linear(dim, dim, bias=False)
        for w in (self.t0.weight, self.t1.weight):
            nn.init.normal_(w, std=0.02)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.t0(ngram_matches(idx, self.n).to(h.dtype) @ h) + self.t1(h)


def with_ngram_heads(name: str, config_cls: type, model_cls: type) -> tuple[type, type]:
    """The config dataclass and module class of backbone `name` with n-gram heads on top."""
    config = make_dataclass(
        f"{config_cls.__name__}NGram",
        [("ngram_orders", list[int], field(default_factory=lambda: [1, 2, 3]))],
        bases=(config_cls,),
    )

    class NGramModel(model_cls):
        def __init__(self, cfg):
            if not cfg.ngram_orders or any(n < 1 for n in cfg.ngram_orders):
                raise ValueError(f"ngram_orders must be a non-empty list of orders >= 1, got {cfg.ngram_orders}")
            super().__init__(cfg)
            self.ngram_heads = nn.ModuleList(NGramHead(cfg.n_embd, n, cfg.norm_eps) for n in cfg.ngram_orders)

        def features(self, idx: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            x = super().features(idx, *args, **kwargs)
            for head in self.ngram_heads:
                x = head(x, idx)
            return x

        def step(self, *args, **kwargs):
            raise NotImplementedError(f"{name}+ngram has no recurrent form: n-gram heads look at every earlier token")

    NGramModel.__name__ = NGramModel.__qualname__ = f"{model_cls.__name__}NGram"
    return config, NGramModel
