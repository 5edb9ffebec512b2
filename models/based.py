"""Based (Arora et al., ICML 2024, arXiv 2402.18668): layers of Taylor-feature linear attention,
sliding-window softmax attention and gated short convolutions, each followed by a SwiGLU MLP.

Linear attention projects q and k to `feature_dim` per head, maps them with the 2nd-order Taylor
map phi (1 + f + f^2 features, phi(q).phi(k) ~ exp(q.k/sqrt(f))) and runs kernels' chunked linear
attention; generation continues from its state one token at a time (`MixerLM.step`), with O(1)
work per token in the linear-attention and convolution layers and a KV cache of `window` tokens
in the sliding-window layers. `pattern` names the mixer of each layer, cycled over the depth:
`l` linear attention, `s` sliding-window attention, `c` short convolution."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels import LinearAttentionState, linear_attention, linear_attention_step, taylor_feature_map
from models.mixers import MixerLM, ShortConv, WindowAttention, mlp_width

MIXERS = {"l": "linear attention", "s": "sliding-window attention", "c": "short convolution"}


@dataclass
class BasedConfig:
    vocab_size: int = 32000
    seq_len: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp_hidden: int | None = None  # SwiGLU width; default as the Transformer's
    feature_dim: int = 16  # q, k width per head before the Taylor map (273 features)
    window: int = 64  # sliding-window attention span, tokens
    conv_kernel: int = 3
    conv_expand: int = 2
    pattern: str = "clscc"  # as the Based/JRT 360M layouts: linear attention and window attention every 5
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must split into n_head ({self.n_head}) heads of even width")
        if not self.pattern or set(self.pattern) - set(MIXERS):
            raise ValueError(f"pattern {self.pattern!r}: letters must be from {MIXERS}")
        if self.mlp_hidden is None:
            self.mlp_hidden = mlp_width(self.n_embd)


class TaylorLinearAttention(nn.Module):
    """Causal linear attention with Based's Taylor feature map, through kernels.linear_attention."""

    def __init__(self, cfg: BasedConfig):
        super().__init__()
        self.n_head, self.f = cfg.n_head, cfg.feature_dim
        self.q = nn.Linear(cfg.n_embd, cfg.n_head * cfg.feature_dim, bias=False)
        self.k = nn.Linear(cfg.n_embd, cfg.n_head * cfg.feature_dim, bias=False)
        self.v = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def features(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> phi of the heads, (B, H, T, 1 + f + f^2)."""
        B, T, _ = x.shape
        return taylor_feature_map(proj(x).view(B, T, self.n_head, -1).transpose(1, 2))

    def values(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return proj(x).view(B, T, self.n_head, -1).transpose(1, 2)

    def initial_state(self, x: torch.Tensor, ctx: dict) -> LinearAttentionState | None:
        return None  # Based starts from nothing; JRT's prefix overrides this

    def forward(self, x: torch.Tensor, ctx: dict) -> torch.Tensor:
        B, T, C = x.shape
        y, _ = linear_attention(
            self.features(self.q, x), self.features(self.k, x), self.values(self.v, x), self.initial_state(x, ctx)
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def step(
        self, x: torch.Tensor, state: LinearAttentionState | None, ctx: dict
    ) -> tuple[torch.Tensor, LinearAttentionState]:
        q, k, v = self.features(self.q, x[:, None]), self.features(self.k, x[:, None]), self.values(self.v, x[:, None])
        if state is None:
            B, H, _, K = k.shape
            state = LinearAttentionState(
                x.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32), x.new_zeros(B, H, K, dtype=torch.float32)
            )
        y, state = linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], state)
        return self.proj(y.reshape(x.shape)), state


class Based(MixerLM):
    linear_attention_cls: type[nn.Module] = TaylorLinearAttention

    def mixer(self, layer: int) -> nn.Module:
        cfg = self.config
        kind = cfg.pattern[layer % len(cfg.pattern)]
        if kind == "l":
            return self.linear_attention_cls(cfg)
        if kind == "s":
            return WindowAttention(cfg, cfg.window)
        return ShortConv(cfg.n_embd, cfg.conv_kernel, cfg.conv_expand)
