"""The parts the non-Transformer architectures share: a language model made of pre-norm blocks whose
token mixers vary by layer (Based, JRT-RNN, H3), sliding-window attention with a KV cache, a gated
short convolution, and the recurrent step protocol.

A mixer maps x (B, T, C) to (B, T, C) with `forward(x, ctx)`, and one position (B, C) with
`step(x, state, ctx) -> (y, state)`, where `state` is None before the first token. `ctx` holds the
rotary tables (`cos`, `sin`) and, while stepping, the position `pos`. Stepping token by token
from empty states gives the parallel form's outputs (tests/test_architectures.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels import apply_rotary, rotary_tables
from models.transformer import Attention, RMSNorm, SwiGLU, lm_output


class WindowAttention(Attention):
    """Causal softmax attention with rotary positions over the last `window` tokens (all when None);
    stepping keeps a KV cache of that many tokens."""

    def __init__(self, cfg, window: int | None):
        super().__init__(cfg)
        self.window = window

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        return tuple(t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def forward(self, x: torch.Tensor, ctx: dict) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._heads(x)
        q, k = apply_rotary(q, ctx["cos"], ctx["sin"]), apply_rotary(k, ctx["cos"], ctx["sin"])
        if self.window is None or self.window >= T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            pos = torch.arange(T, device=x.device)
            mask = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < self.window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def step(self, x: torch.Tensor, state: tuple | None, ctx: dict) -> tuple[torch.Tensor, tuple]:
        B, C = x.shape
        q, k, v = self._heads(x[:, None])  # (B, H, 1, D)
        q, k = apply_rotary(q, ctx["cos"], ctx["sin"]), apply_rotary(k, ctx["cos"], ctx["sin"])
        if state is not None:
            k, v = torch.cat([state[0], k], dim=2), torch.cat([state[1], v], dim=2)
        if self.window is not None:
            k, v = k[:, :, -self.window :], v[:, :, -self.window :]
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.reshape(B, C)), (k, v)


class ShortConv(nn.Module):
    """Based's BaseConv: a gated short causal depthwise convolution, out(a * conv(b)).
    Not a kernels/ op: a kernel of 3 taps is one small torch conv1d."""

    def __init__(self, dim: int, kernel: int, expand: int):
        super().__init__()
        self.kernel = kernel
        self.inner = expand * dim
        self.in_proj = nn.Linear(dim, 2 * self.inner, bias=False)
        self.conv = nn.Conv1d(self.inner, self.inner, kernel, groups=self.inner)
        self.out_proj = nn.Linear(self.inner, dim, bias=False)

    def forward(self, x: torch.Tensor, ctx: dict) -> torch.Tensor:
        a, b = self.in_proj(x).chunk(2, dim=-1)
        b = self.conv(F.pad(b.transpose(1, 2), (self.kernel - 1, 0))).transpose(1, 2)
        return self.out_proj(a * b)

    def step(self, x: torch.Tensor, state: torch.Tensor | None, ctx: dict) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.in_proj(x).chunk(2, dim=-1)  # (B, inner)
        if state is None:
            state = b.new_zeros(b.shape[0], self.inner, self.kernel - 1)
        window = torch.cat([state, b[:, :, None]], dim=2)  # the last `kernel` inputs
        conv = (window * self.conv.weight[:, 0]).sum(-1) + self.conv.bias
        return self.out_proj(a * conv), window[:, :, 1:]


class MixerBlock(nn.Module):
    """Pre-norm block: x + mixer(norm(x)), then x + SwiGLU(norm(x))."""

    def __init__(self, cfg, mixer: nn.Module):
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, ctx: dict) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x), ctx)
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x: torch.Tensor, state, ctx: dict):
        y, state = self.mixer.step(self.mixer_norm(x), state, ctx)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), state


def mlp_width(n_embd: int) -> int:
    """SwiGLU width as the Transformer's default: 8/3 of the model width, rounded up to 64."""
    return 64 * math.ceil(8 * n_embd / 3 / 64)


class MixerLM(nn.Module):
    """Embedding, blocks of per-layer mixers, final norm, tied head; the same call as the Transformer.
    Subclasses give `mixer(layer)`. `features` and `output` are separate so add-ons (n-gram heads)
    can work between them."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(MixerBlock(config, self.mixer(i)) for i in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        cos, sin = rotary_tables(config.seq_len, config.n_embd // config.n_head, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2's scaled init of the projections into the residual stream
            for name, p in block.named_parameters():
                if name.endswith(("proj.weight", "out_proj.weight", "mlp.down.weight")):
                    nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))

    def mixer(self, layer: int) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def _check_length(self, T: int) -> None:
        if T > self.config.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than the model's seq_len {self.config.seq_len}")

    def context(self, T: int) -> dict:
        return {"cos": self.rope_cos[:T], "sin": self.rope_sin[:T]}

    def features(self, idx: torch.Tensor, ctx: dict | None = None) -> torch.Tensor:
        """The residual stream after the last block, (B, T, C)."""
        self._check_length(idx.shape[1])
        ctx = ctx or self.context(idx.shape[1])
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, ctx)
        return x

    def output(self, x: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        return lm_output(self.norm(x), self.embed.weight, targets, reduction)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        """Logits (B, T, V) without targets; with targets (B, T) the cross-entropy, a scalar for
        "mean" or (B, T) for "none" (ignored positions give 0)."""
        return self.output(self.features(idx), targets, reduction)

    @torch.no_grad()
    def step(self, token: torch.Tensor, states: list | None, pos: int) -> tuple[torch.Tensor, list]:
        """Next-token logits (B, V) after `token` (B,) at position `pos`, and the states after it
        (`states` None before the first token)."""
        self._check_length(pos + 1)
        states = states or [None] * len(self.blocks)
        ctx = {"cos": self.rope_cos[pos : pos + 1], "sin": self.rope_sin[pos : pos + 1], "pos": pos}
        x = self.embed(token)
        new = []
        for block, state in zip(self.blocks, states):
            x, state = block.step(x, state, ctx)
            new.append(state)
        return self.output(x[:, None])[:, 0], new
