"""The LLM's own tokenizer, for chunk sizes and truncation: read from the GGUF file for the
local backend (llama.cpp, vocabulary only, no weights), else a Hugging Face `tokenizers` one."""

from __future__ import annotations

import atexit
from functools import lru_cache
from pathlib import Path

from curate.llm.chunking import Tokenizer


class GgufTokenizer:
    def __init__(self, path: str):
        from llama_cpp import Llama

        self.llama = Llama(model_path=path, vocab_only=True, verbose=False)
        # free it before interpreter shutdown: llama.cpp's __del__ fails once its module is torn down
        atexit.register(self.llama.close)

    def encode(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def decode(self, ids: list[int]) -> str:
        return self.llama.detokenize(ids).decode("utf-8", errors="replace")


class HFTokenizer:
    def __init__(self, name_or_path: str):
        from tokenizers import Tokenizer as HF

        self.tok = HF.from_file(name_or_path) if Path(name_or_path).is_file() else HF.from_pretrained(name_or_path)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


@lru_cache(maxsize=4)
def load_tokenizer(spec: str) -> Tokenizer:
    """`spec`: a .gguf file, a tokenizer.json, or a Hugging Face model id."""
    return GgufTokenizer(spec) if spec.endswith(".gguf") else HFTokenizer(spec)
