"""Block Transformer (Ho, Bae et al., NeurIPS 2024, arXiv 2406.02657): global-to-local decoding.

1. Embedder: each token is looked up at width n_embd / block_len and the block_len embeddings of a
   block are concatenated into one block embedding of width n_embd.
2. Block decoder: a causal Transformer over the T / block_len block embeddings.
3. Token decoder: for block b, the block decoder's output for block b - 1 (a learned start vector
   for the first block) is expanded by a linear layer into `n_prefix` prefix vectors; a small causal
   Transformer runs over [prefix; tokens of block b], all blocks as one batch of short sequences.
The output at token j of block b has seen blocks before b (through the prefix) and tokens <= j of
block b: causal. A sequence that does not fill its last block is padded at the end, which nothing
earlier can see. The decoders' blocks are the Transformer's (models/transformer.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kernels import rotary_tables
from models.mixers import mlp_width
from models.transformer import Block, RMSNorm, TransformerConfig, lm_output


@dataclass
class BlockConfig:
    vocab_size: int = 32000
    seq_len: int = 1024
    block_len: int = 4
    n_prefix: int = 2  # the expansion ratio: prefix vectors per block from the block decoder
    block_layers: int = 6
    token_layers: int = 6
    n_head: int = 12
    n_embd: int = 768
    mlp_hidden: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must split into n_head ({self.n_head}) heads of even width")
        if self.block_len < 1 or self.n_embd % self.block_len:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of block_len ({self.block_len})")
        if self.n_prefix < 1:
            raise ValueError(f"n_prefix must be >= 1, got {self.n_prefix}")
        if self.mlp_hidden is None:
            self.mlp_hidden = mlp_width(self.n_embd)


class Decoder(nn.Module):
    """A stack of Transformer blocks with its own rotary table, and a final norm."""

    def __init__(self, cfg: BlockConfig, n_layer: int, length: int):
        super().__init__()
        block_cfg = TransformerConfig(
            n_layer=n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, mlp_hidden=cfg.mlp_hidden, norm_eps=cfg.norm_eps
        )
        self.blocks = nn.ModuleList(Block(block_cfg) for _ in range(n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        cos, sin = rotary_tables(length, cfg.n_embd // cfg.n_head, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        for block in self.blocks:
            x = block(x, self.rope_cos[:T], self.rope_sin[:T])
        return self.norm(x)


class BlockTransformer(nn.Module):
    def __init__(self, config: BlockConfig):
        super().__init__()
        self.config = config
        c = config
        self.n_blocks = math.ceil(c.seq_len / c.block_len)
        self.block_embed = nn.Embedding(c.vocab_size, c.n_embd // c.block_len)
        self.block_decoder = Decoder(c, c.block_layers, self.n_blocks)
        self.start = nn.Parameter(torch.zeros(c.n_embd))
        self.expand = nn.Linear(c.n_embd, c.n_prefix * c.n_embd, bias=False)
        self.embed = nn.Embedding(c.vocab_size, c.n_embd)  # the token decoder's, tied to the head
        self.token_decoder = Decoder(c, c.token_layers, c.n_prefix + c.block_len)
        self.token_decoder.norm = nn.Identity()  # `output` applies the final norm
        self.norm = RMSNorm(c.n_embd, c.norm_eps)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.normal_(self.start, std=0.02)
        for decoder in (self.block_decoder, self.token_decoder):
            for block in decoder.blocks:
                for w in (block.attn.proj.weight, block.mlp.down.weight):
                    nn.init.normal_(w, std=0.02 / math.sqrt(2 * len(decoder.blocks)))

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """The token decoder's outputs before the final norm, (B, T, C)."""
        c = self.config
        B, T = idx.shape
        if T > c.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than the model's seq_len {c.seq_len}")
        L = c.block_len
        N = math.ceil(T / L)
        idx = F.pad(idx, (0, N * L - T))  # the padded tail comes after every real token
        blocks = self.block_decoder(self.block_embed(idx).view(B, N, c.n_embd))  # (B, N, C)
        context = torch.cat([self.start.expand(B, 1, -1), blocks[:, :-1]], dim=1)  # block b sees blocks < b
        prefix = self.expand(context).view(B * N, c.n_prefix, c.n_embd)
        tokens = self.embed(idx).view(B * N, L, c.n_embd)
        out = self.token_decoder(torch.cat([prefix, tokens], dim=1))[:, c.n_prefix :]  # (B * N, L, C)
        return out.reshape(B, N * L, c.n_embd)[:, :T]

    def output(self, x: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        return lm_output(self.norm(x), self.embed.weight, targets, reduction)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        """Logits (B, T, V) without targets; with targets (B, T) the cross-entropy, a scalar for
        "mean" or (B, T) for "none" (ignored positions give 0)."""
        return self.output(self.features(idx), targets, reduction)
