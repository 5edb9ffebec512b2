"""Architectures by name: each is a config dataclass and the nn.Module built from it, so the
trainer, checkpoints and evaluation handle every architecture the same way. A new architecture
joins by adding one entry to ARCHITECTURES and its named sizes to SIZES."""

from __future__ import annotations

import dataclasses

from torch import nn

from models.based import Based, BasedConfig
from models.block import BlockConfig, BlockTransformer
from models.h3 import H3, H3Config
from models.jrt import JRT, JRTConfig
from models.ngram import with_ngram_heads
from models.transformer import Transformer, TransformerConfig

ARCHITECTURES: dict[str, tuple[type, type]] = {
    "transformer": (TransformerConfig, Transformer),
    "based": (BasedConfig, Based),
    "jrt": (JRTConfig, JRT),
    "h3": (H3Config, H3),
    "block": (BlockConfig, BlockTransformer),
}

# Named sizes per architecture (vocab_size comes from the data at training time).
SIZES: dict[str, dict[str, dict]] = {
    "transformer": {
        "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 64, "seq_len": 128},  # trains in a minute on 2 CPU cores
        "small": {"n_layer": 4, "n_head": 4, "n_embd": 128, "seq_len": 256},
        "mini": {"n_layer": 6, "n_head": 6, "n_embd": 384, "seq_len": 512},
        "125m": {"n_layer": 12, "n_head": 12, "n_embd": 768, "seq_len": 1024},  # GPT-2 small's shape
    },
    # sizes of the other architectures: near the Transformer's parameter count at each size
    "based": {
        "tiny": {
            "n_layer": 3,
            "n_head": 4,
            "n_embd": 64,
            "seq_len": 128,
            "feature_dim": 8,
            "window": 16,
            "pattern": "cls",
        },
        "small": {"n_layer": 4, "n_head": 4, "n_embd": 128, "seq_len": 256, "window": 32},
        "mini": {"n_layer": 6, "n_head": 6, "n_embd": 384, "seq_len": 512},
        "125m": {"n_layer": 12, "n_head": 12, "n_embd": 768, "seq_len": 1024},
    },
    "h3": {
        "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 64, "seq_len": 128, "d_state": 16, "attn_layers": [1]},
        "small": {"n_layer": 4, "n_head": 4, "n_embd": 128, "seq_len": 256, "attn_layers": [1]},
        "mini": {"n_layer": 6, "n_head": 6, "n_embd": 384, "seq_len": 512, "attn_layers": [1, 4]},
        "125m": {"n_layer": 12, "n_head": 12, "n_embd": 768, "seq_len": 1024, "attn_layers": [1, 8]},  # the paper's
    },
    "block": {
        "tiny": {"block_layers": 1, "token_layers": 1, "n_head": 4, "n_embd": 64, "seq_len": 128},
        "small": {"block_layers": 2, "token_layers": 2, "n_head": 4, "n_embd": 128, "seq_len": 256},
        "mini": {"block_layers": 3, "token_layers": 3, "n_head": 6, "n_embd": 384, "seq_len": 512},
        "125m": {"block_layers": 6, "token_layers": 6, "n_head": 12, "n_embd": 768, "seq_len": 1024},
    },
}

# JRT-RNN is Based with a read-twice prefix: the same shapes, plus the prefix length per size
_JRT_PREFIX = {"tiny": 8, "small": 128, "mini": 256, "125m": 512}
SIZES["jrt"] = {size: {**shape, "prefix_len": _JRT_PREFIX[size]} for size, shape in SIZES["based"].items()}

# n-gram heads on top of every backbone: `transformer+ngram`, `based+ngram`, ... (models/ngram.py)
for _name in list(ARCHITECTURES):
    ARCHITECTURES[f"{_name}+ngram"] = with_ngram_heads(_name, *ARCHITECTURES[_name])
    SIZES[f"{_name}+ngram"] = SIZES[_name]


def _check_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")


def config_fields(arch: str) -> list[str]:
    """The keys a config of `arch` accepts."""
    _check_arch(arch)
    return [f.name for f in dataclasses.fields(ARCHITECTURES[arch][0])]


def check_config_keys(arch: str, config: dict) -> None:
    """A clear error naming every key the architecture's config does not have."""
    unknown = sorted(set(config) - set(config_fields(arch)))
    if unknown:
        known = ", ".join(config_fields(arch))
        raise ValueError(f"unknown {arch} config key(s): {', '.join(unknown)} (known: {known})")


def make_config(arch: str, config: dict):
    """The architecture's config dataclass from a plain dict."""
    check_config_keys(arch, config)
    return ARCHITECTURES[arch][0](**config)


def build_model(arch: str, config: dict) -> nn.Module:
    """A freshly initialised model of `arch` (initialise the torch seed first for reproducibility)."""
    cfg = make_config(arch, config)
    return ARCHITECTURES[arch][1](cfg)


def model_configs(arch: str) -> dict[str, dict]:
    """Named sizes of `arch`, smallest first."""
    _check_arch(arch)
    return {name: dict(cfg) for name, cfg in SIZES.get(arch, {}).items()}


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def architecture_of(model: nn.Module) -> str:
    """The registered name of a model's architecture."""
    model = getattr(model, "module", model)  # DDP-wrapped
    for name, (_, cls) in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered architecture")
