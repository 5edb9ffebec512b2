"""Decoding: greedy, top-k, top-p (nucleus) and locally typical sampling (Meister et al., TACL 2023)
as filters over next-token logits, and the autoregressive loop that `curate generate` runs.

Each filter takes logits of shape [..., V] and returns them with the removed tokens set to -inf,
so filters compose (temperature, then top-k, then top-p, then typical, as in Hugging Face's
order of warpers) and softmax of the result is the renormalised distribution that is sampled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token. temperature 0 means greedy (the filters are then moot)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {self.top_k}")
        for name, value in (("--top-p", self.top_p), ("--typical-p", self.typical_p)):
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k most likely tokens (ties at the k-th value are all kept)."""
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability adds up to at least p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    return _keep_ranked_mass(logits, order, torch.softmax(sorted_logits, dim=-1), p)


def typical_filter(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling: rank tokens by |surprisal - entropy| (how far their information
    content is from the expected one), keep the smallest such prefix with probability >= mass."""
    logp = torch.log_softmax(logits, dim=-1)
    probs = logp.exp()
    entropy = -torch.nansum(probs * logp, dim=-1, keepdim=True)
    distance = (-logp - entropy).abs()
    order = torch.sort(distance, dim=-1).indices
    return _keep_ranked_mass(logits, order, probs.gather(-1, order), mass)


def _keep_ranked_mass(
    logits: torch.Tensor, order: torch.Tensor, sorted_probs: torch.Tensor, mass: float
) -> torch.Tensor:
    """Keep the shortest prefix of the ranking `order` whose probability reaches `mass`: a token is
    dropped when the tokens ranked before it already reach it; the first always stays."""
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop_sorted = mass_before >= mass
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def filter_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Temperature, then each filter that is set; softmax of the result is what gets sampled."""
    logits = logits.float() / sampling.temperature
    if sampling.top_k is not None:
        logits = top_k_filter(logits, sampling.top_k)
    if sampling.top_p is not None and sampling.top_p < 1:
        logits = top_p_filter(logits, sampling.top_p)
    if sampling.typical_p is not None and sampling.typical_p < 1:
        logits = typical_filter(logits, sampling.typical_p)
    return logits


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `logits` [B, V]."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, sampling), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt: list[int],
    max_tokens: int,
    context: int,
    sampling: Sampling,
    seed: int | None = None,
    stop: int | None = None,
) -> list[int]:
    """Continue `prompt` by up to `max_tokens` ids (fewer when `stop` is produced; it is not
    returned). The model sees at most the last `context` ids; there is no KV cache, so each step
    reruns the window, which is fine for the small models this trains."""
    if not prompt:
        raise ValueError("the prompt must have at least one token")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    out: list[int] = []
    for _ in range(max_tokens):
        logits = model(ids[:, -context:])[:, -1, :]
        token = next_token(logits, sampling, generator)
        if stop is not None and int(token) == stop:
            break
        out.append(int(token))
        ids = torch.cat([ids, token.view(1, 1)], dim=1)
    return out


def generate_text(
    model_dir: str | Path,
    prompt: str,
    index_dir: str | Path | None = None,
    max_tokens: int = 100,
    sampling: Sampling = Sampling(),
    seed: int | None = None,
    device: str = "cpu",
) -> str:
    """`curate generate`: the prompt's continuation, encoded and decoded with the tokenizer of the
    index the checkpoint was trained on (or `index_dir`). Generation starts after an end-of-text
    token, as documents do in training, and stops at the next one."""
    from models.checkpoint import check_tokenizer, load_checkpoint
    from models.data import TokenShards
    from models.evaluate import index_tokenizer

    model, meta = load_checkpoint(model_dir, device)
    index_dir = index_dir or meta.get("data", {}).get("index")
    if not index_dir:
        raise ValueError(f"{model_dir} does not record the index it was trained on: give --data INDEX_DIR")
    check_tokenizer(meta, index_dir)
    shards = TokenShards(index_dir)
    tokenizer = index_tokenizer(shards)
    ids = [shards.eot_id, *tokenizer.encode(prompt)]
    out = generate(model, ids, max_tokens, model.config.seq_len, sampling, seed, stop=shards.eot_id)
    return tokenizer.decode(out)
