"""Helpers shared by the training tests: small real indexes and the causality check that every
registered architecture must pass."""

from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import torch

from indexes.build import build_index, write_index
from models.registry import build_model, model_configs
from tests.index_support import DATA, small_tokenizer


def quiet(_: str) -> None:
    pass


def synthetic_index(out: Path, docs: list[list[int]], ids: list[str], vocab: int, eos: int, shard_tokens: int) -> dict:
    """An index of given token lists, each document with an `id` and a `source` in its metadata."""
    pairs = [
        (tokens, {"path": "synthetic.jsonl", "linenum": i, "metadata": {"id": ids[i], "source": f"src{i % 3}"}})
        for i, tokens in enumerate(docs)
    ]
    return write_index(pairs, out, vocab, eos, shard_tokens=shard_tokens, log=quiet)


def demo_index(root: Path, vocab: int = 2000, docs_per_file: int = 250) -> Path:
    """The first documents of each shipped web and wiki sample, indexed with a small byte-level BPE."""
    sample = root / "sample"
    if not sample.exists():
        sample.mkdir()
        for path in sorted(DATA.glob("web/*.jsonl.gz")) + sorted(DATA.glob("wiki/*.jsonl.gz")):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                (sample / path.name.removesuffix(".gz")).write_text("".join(itertools.islice(f, docs_per_file)))
    tok = small_tokenizer(root / f"tok{vocab}.json", vocab)
    build_index([str(sample)], tok, root / f"ix{vocab}", log=quiet)
    return root / f"ix{vocab}"


def same_outputs(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal, or within the float rounding a model declares as `causal_tolerance` (relative to the
    outputs' scale: FFT convolutions mix every position's rounding into every output)."""
    tolerance = getattr(model, "causal_tolerance", 0.0)
    if not tolerance:
        return torch.equal(a, b)
    return bool((a - b).abs().max() <= tolerance * b.abs().max())


def assert_causal(arch: str, size: str = "tiny", vocab: int = 97, seq_len: int = 24, seed: int = 0) -> None:
    """Changing token t+1 (and everything after it) never changes the outputs at positions <= t."""
    torch.manual_seed(seed)
    model = build_model(arch, {**model_configs(arch)[size], "vocab_size": vocab, "seq_len": seq_len}).eval()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, vocab, (2, seq_len), generator=gen)
    with torch.no_grad():
        base = model(idx)
        assert base.shape == (2, seq_len, vocab)
        for t in range(seq_len - 1):
            changed = idx.clone()
            changed[:, t + 1 :] = torch.randint(0, vocab, (2, seq_len - t - 1), generator=gen)
            out = model(changed)
            assert same_outputs(model, out[:, : t + 1], base[:, : t + 1]), f"{arch}: position <= {t} saw a later token"
            assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :]), f"{arch}: later positions ignore their tokens"
