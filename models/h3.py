"""H3 (Fu, Dao et al., ICLR 2023, arXiv 2212.14052), the hybrid: H3 layers with softmax attention at
`attn_layers` (the paper's 125M keeps attention at layers 1 and 8 of 12), each layer followed by a
SwiGLU MLP. Per channel (head_dim 1, as every released config):

    q, k, v = W_q u, W_k u, W_v u
    k' = shift_ssm(k) + D_k k          a learned causal filter of d_state taps
    y  = diag_ssm(k' * v) + D (k' * v) S4D-Lin: K[l] = 2 Re sum_n C_n Bbar_n exp(dt A_n)^l
    out = W_o (q * y)

Both convolutions run through kernels.fft_conv (zero-padded, so causal). Generation steps the same
layer as a recurrence: a buffer of the last d_state keys for the shift filter and the complex modes
x_t = exp(dt A) x_{t-1} + Bbar u_t for the diagonal SSM, y_t = 2 Re(C . x_t) + D u_t."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from kernels import fft_conv
from models.mixers import MixerLM, WindowAttention, mlp_width


@dataclass
class H3Config:
    vocab_size: int = 32000
    seq_len: int = 1024
    n_layer: int = 12
    n_head: int = 12  # of the attention layers
    n_embd: int = 768
    mlp_hidden: int | None = None
    d_state: int = 64  # shift filter taps; the diagonal SSM has d_state / 2 complex modes (conjugate pairs)
    attn_layers: list[int] = field(default_factory=lambda: [1, 8])
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must split into n_head ({self.n_head}) heads of even width")
        if self.d_state < 2 or self.d_state % 2:
            raise ValueError(f"d_state must be an even number >= 2, got {self.d_state}")
        self.attn_layers = list(self.attn_layers)
        if any(not 0 <= i < self.n_layer for i in self.attn_layers):
            raise ValueError(f"attn_layers {self.attn_layers} must be layer numbers below n_layer {self.n_layer}")
        if self.mlp_hidden is None:
            self.mlp_hidden = mlp_width(self.n_embd)


class H3Layer(nn.Module):
    def __init__(self, cfg: H3Config):
        super().__init__()
        C, N, modes = cfg.n_embd, cfg.d_state, cfg.d_state // 2
        self.qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C, bias=False)
        self.shift = nn.Parameter(torch.randn(C, N) / math.sqrt(N))
        self.shift_D = nn.Parameter(torch.randn(C))
        # S4D-Lin initialisation: A_n = -1/2 + i pi n, dt log-uniform in [1e-3, 1e-1], B = 1
        self.log_dt = nn.Parameter(torch.empty(C).uniform_(math.log(1e-3), math.log(1e-1)))
        self.log_A_re = nn.Parameter(torch.full((C, modes), math.log(0.5)))
        self.A_im = nn.Parameter(math.pi * torch.arange(modes, dtype=torch.float32).repeat(C, 1))
        self.C_re = nn.Parameter(torch.randn(C, modes) * math.sqrt(0.5))
        self.C_im = nn.Parameter(torch.randn(C, modes) * math.sqrt(0.5))
        self.D = nn.Parameter(torch.randn(C))

    def _discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """dt A and C * Bbar (zero-order hold with B = 1), each (C, modes) complex."""
        A = torch.complex(-torch.exp(self.log_A_re), self.A_im)
        dtA = torch.exp(self.log_dt)[:, None] * A
        return dtA, torch.complex(self.C_re, self.C_im) * (torch.exp(dtA) - 1) / A

    def ssm_kernel(self, L: int) -> torch.Tensor:
        """The diagonal SSM's convolution kernel K (C, L)."""
        dtA, cb = self._discrete()
        powers = torch.exp(dtA[..., None] * torch.arange(L, device=dtA.device))  # (C, modes, L)
        return 2 * torch.einsum("cn,cnl->cl", cb, powers).real

    def forward(self, x: torch.Tensor, ctx: dict) -> torch.Tensor:
        T = x.shape[1]
        q, k, v = self.qkv(x).transpose(1, 2).chunk(3, dim=1)  # each (B, C, T)
        k = fft_conv(k, self.shift[:, :T], self.shift_D)
        y = fft_conv(k * v, self.ssm_kernel(T), self.D)
        return self.proj((q * y).transpose(1, 2))

    def step(self, x: torch.Tensor, state: tuple | None, ctx: dict) -> tuple[torch.Tensor, tuple]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (B, C)
        dtA, cb = self._discrete()
        lam = torch.exp(dtA)
        if state is None:
            state = (k.new_zeros(*k.shape, self.shift.shape[1]), torch.zeros(*k.shape, lam.shape[1], dtype=lam.dtype))
        keys, modes = state
        keys = torch.cat([k[..., None], keys[..., :-1]], dim=-1)  # newest first, as the filter's taps
        k = (keys * self.shift).sum(-1) + self.shift_D * k
        u = k * v
        modes = lam * modes + u[..., None]  # Bbar and C are folded into cb
        y = 2 * (cb * modes).sum(-1).real + self.D * u
        return self.proj(q * y), (keys, modes)


class H3(MixerLM):
    # torch.fft rounding spreads to every position (~1e-7 of the outputs' scale); a real leak, such as an
    # unpadded circular convolution, moves earlier outputs by their own order of magnitude
    causal_tolerance = 1e-5

    def mixer(self, layer: int) -> nn.Module:
        if layer in self.config.attn_layers:
            return WindowAttention(self.config, window=None)
        return H3Layer(self.config)
