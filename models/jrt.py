"""JRT-RNN (Arora et al. 2024, arXiv 2407.05483, "Just read twice"): Based with prefix linear
attention. The first `prefix_len` tokens are read twice: once non-causally by an encoder (separate
key/value projections, summed into a state that every position sees) and once causally, as Based
reads them. So prefix linear attention is kernels' linear attention started from
`prefix_state(phi(k_enc), v_enc)`: no kernel of its own.

Two ways to call it:
- prefix mode, `model(idx, prefix_len=P)`: the paper's layer; outputs inside the prefix see the
  whole prefix, outputs after it see only what precedes them. Generation uses it: `read_twice`
  encodes a prompt as the prefix and steps the decoder through it, then `step` continues.
- the language-model call, `model(idx, targets)` (training, `curate eval`): next-token losses must
  not see the token they predict, and a position inside the prefix would. So positions from
  P - 1 on (P = min(prefix_len, T)) come from the prefix mode, whose prefix then lies at or before
  them, and positions before P - 1 from a causal pass over those tokens alone (the decoder without
  the encoder state). Every output sees only tokens at or before it, and every token is scored.
  The paper instead trains the prefix with a masked-language-model loss; that is left out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels import LinearAttentionState, prefix_state
from models.based import Based, BasedConfig, TaylorLinearAttention


@dataclass
class JRTConfig(BasedConfig):
    prefix_len: int = 512  # tokens the encoder reads non-causally (the paper: half of the window)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prefix_len < 0:
            raise ValueError(f"prefix_len must be >= 0, got {self.prefix_len}")


class PrefixLinearAttention(TaylorLinearAttention):
    """Linear attention from the encoder's state over the first ctx["prefix_len"] positions."""

    def __init__(self, cfg: JRTConfig):
        super().__init__(cfg)
        self.k_enc = nn.Linear(cfg.n_embd, cfg.n_head * cfg.feature_dim, bias=False)
        self.v_enc = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def initial_state(self, x: torch.Tensor, ctx: dict) -> LinearAttentionState | None:
        P = ctx.get("prefix_len", 0)
        if not P:
            return None
        state = prefix_state(self.features(self.k_enc, x[:, :P]), self.values(self.v_enc, x[:, :P]))
        if "encoder_states" in ctx:
            ctx["encoder_states"][id(self)] = state
        return state


class JRT(Based):
    linear_attention_cls = PrefixLinearAttention

    def features(self, idx: torch.Tensor, ctx: dict | None = None, prefix_len: int | None = None) -> torch.Tensor:
        """The residual stream; prefix mode with `prefix_len`, else the causal language-model call."""
        T = idx.shape[1]
        if prefix_len is not None:
            if not 0 <= prefix_len <= T:
                raise ValueError(f"prefix_len must be between 0 and the sequence length {T}, got {prefix_len}")
            return super().features(idx, {**(ctx or self.context(T)), "prefix_len": prefix_len})
        P = min(self.config.prefix_len, T)
        x = super().features(idx, {**self.context(T), "prefix_len": P})
        if P <= 1:
            return x
        head = super().features(idx[:, : P - 1], self.context(P - 1))  # causal: no encoder state
        return torch.cat([head, x[:, P - 1 :]], dim=1)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
        prefix_len: int | None = None,
    ) -> torch.Tensor:
        """As the Transformer's call; `prefix_len` turns on prefix mode (see the module's docstring)."""
        return self.output(self.features(idx, prefix_len=prefix_len), targets, reduction)

    @torch.no_grad()
    def read_twice(self, prompt: torch.Tensor) -> tuple[torch.Tensor, list]:
        """JRT prompting: the encoder reads the prompt (B, P) whole, then the decoder steps through it
        from the encoder's state. Returns the next-token logits (B, V) and the states `step` continues
        from at position P."""
        P = prompt.shape[1]
        ctx = {**self.context(P), "prefix_len": P, "encoder_states": {}}
        super().features(prompt, ctx)
        states = [ctx["encoder_states"].get(id(block.mixer)) for block in self.blocks]
        for pos in range(P):
            logits, states = self.step(prompt[:, pos], states, pos)
        return logits, states
