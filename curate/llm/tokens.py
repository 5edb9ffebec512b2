"""The LLM's own tokenizer, for chunk sizes and truncation: read from the GGUF file for the
local backend, else a Hugging Face `tokenizers` one (indexes.tokenizer holds both kinds)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from curate.llm.chunking import Tokenizer
from indexes.tokenizer import HFTokenizer, open_tokenizer


@lru_cache(maxsize=4)
def load_tokenizer(spec: str) -> Tokenizer:
    """`spec`: a .gguf file, a tokenizer.json, or a Hugging Face model id."""
    if spec.endswith(".gguf") or Path(spec).is_file():
        return open_tokenizer(spec)
    from tokenizers import Tokenizer as HF

    return HFTokenizer(HF.from_pretrained(spec), spec)
