"""The one tokenizer module: indexes, LLM stages and the trainer take their token ids from here.

Two kinds of file behind one interface (`TextTokenizer`): a Hugging Face tokenizer.json (train a
byte-level BPE with `train_tokenizer`, or load any) and a GGUF model's own vocabulary (llama.cpp,
vocabulary only, no weights), so an index can share token ids with a neural model.

- `load_tokenizer(spec)`: a tokenizer.json, a .gguf file, "gemma-3-270m" (the packaged Gemma 3
  270M's vocabulary) or a Hugging Face model id. `shared_tokenizer(spec)` is the same, loaded once
  per process (for Ray batch functions that ask for it on every batch).
- `fingerprint(tokenizer)`: a 16-hex-digit hash of the ids a tokenizer gives, equal for tokenizers
  that tokenize alike. An index records it in its card (`index.json`, field
  `tokenizer_fingerprint`, read with `indexes.layout.read_card`); a model trained on that index
  keeps the card's value, and comparing it with `fingerprint(load_tokenizer(...))` of another index
  or text tokenizer says whether their ids mean the same tokens.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from curate.local_model import GEMMA_NAME, gemma_path

END_OF_TEXT = "<|endoftext|>"
# Names other tokenizer.json files use for their end-of-document token, tried in order.
EOS_NAMES = (END_OF_TEXT, "</s>", "<|end_of_text|>", "<eos>")
# Encoded for the fingerprint: words, digits, punctuation, whitespace runs and several scripts.
FINGERPRINT_TEXT = (
    "The Quick-brown fox's 1,234.5 jumps\n\n\tover naïve Ünïcödé: 東京, Москва, القاهرة — 🙂 <eos> code();"
)


class TextTokenizer(Protocol):
    """What indexes, LLM stages and the trainer need from a tokenizer. Text never produces
    special tokens."""

    source: str  # the file (or Hugging Face model id) it was loaded from

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets in `text` of each token of `encode(text)`."""
        ...

    def id_to_token(self, token_id: int) -> str | None: ...

    def normalize(self, text: str) -> str:
        """`text` as the tokenizer sees it before splitting (its normalizer, if any)."""
        ...

    def pieces(self) -> list[bytes]:
        """The bytes of text each token id stands for (b"" for special tokens), so that a decoded
        token stream is the concatenation of its pieces: what phrase queries match against."""
        ...


def fingerprint(tokenizer: TextTokenizer) -> str:
    """Equal for tokenizers that give the same ids: vocabulary size, EOS and a probe text's ids."""
    probe = [tokenizer.vocab_size, tokenizer.eos_token_id, tokenizer.encode(FINGERPRINT_TEXT)]
    return hashlib.sha256(json.dumps(probe).encode()).hexdigest()[:16]


def load_tokenizer(spec: str | Path) -> TextTokenizer:
    """`spec`: a .gguf file, a tokenizer.json, "gemma-3-270m", or a Hugging Face model id."""
    spec = str(spec)
    if spec == GEMMA_NAME:
        return GgufTokenizer(gemma_path())
    path = Path(spec)
    if path.suffix == ".gguf":
        return GgufTokenizer(path)
    if path.is_file() or path.suffix == ".json" or path.is_absolute() or spec.startswith("."):
        return HFTokenizer(_read_tokenizer_json(path), spec)
    return HFTokenizer(Tokenizer.from_pretrained(spec), spec)


@lru_cache(maxsize=4)
def shared_tokenizer(spec: str) -> TextTokenizer:
    """`load_tokenizer`, once per process: for functions Ray calls on every batch."""
    return load_tokenizer(spec)


def train_tokenizer(texts: Iterable[str], out_path: str | Path, vocab_size: int = 32000) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style: no unknown tokens, lossless decoding) and save it."""
    if vocab_size < 257:
        raise ValueError(f"--vocab must be at least 257 (256 bytes plus {END_OF_TEXT}), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_path))
    return HFTokenizer(tokenizer, str(out_path))


def _read_tokenizer_json(path: Path) -> Tokenizer:
    """Load a tokenizer.json, with an error that names the file when it is not one."""
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} does not exist")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise ValueError(f"{path} is not a Hugging Face tokenizer.json: {e}") from None


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer (from a tokenizer.json or the Hub)."""

    def __init__(self, tokenizer: Tokenizer, source: str):
        self.tok, self.source = tokenizer, source

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def eos_token_id(self) -> int:
        """The id that stands for "end of document" in next-token distributions."""
        for name in EOS_NAMES:
            token_id = self.tok.token_to_id(name)
            if token_id is not None:
                return token_id
        raise ValueError(f"tokenizer {self.source} has none of the end-of-document tokens {', '.join(EOS_NAMES)}")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return self.tok.encode(text, add_special_tokens=False).offsets

    def id_to_token(self, token_id: int) -> str | None:
        return self.tok.id_to_token(token_id)

    def normalize(self, text: str) -> str:
        normalizer = self.tok.normalizer
        return text if normalizer is None else normalizer.normalize_str(text).replace("▁", " ")

    def pieces(self) -> list[bytes]:
        """From the vocabulary strings, read the way the decoder reads them: byte-level BPE maps
        each character back to its byte; SentencePiece-style "▁" is a space and <0xNN> a byte."""
        decoder = json.loads(self.tok.to_str()).get("decoder") or {}
        kinds = {d.get("type") for d in decoder.get("decoders", [decoder])}
        byte_of = {c: b for b, c in _byte_level_alphabet().items()}
        special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        out = []
        for token_id in range(self.vocab_size):
            token = self.tok.id_to_token(token_id)
            if token is None or token in special:
                out.append(b"")
            elif "ByteLevel" in kinds:
                out.append(bytes(byte_of[c] for c in token) if all(c in byte_of for c in token) else token.encode())
            elif "ByteFallback" in kinds and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                out.append(bytes([int(token[3:5], 16)]))
            else:
                out.append(token.replace("▁", " ").encode())
        return out


class GgufTokenizer:
    """A GGUF model's vocabulary through llama.cpp; `llama` reuses a model already loaded."""

    def __init__(self, path: str | Path, llama=None):
        from llama_cpp import Llama

        self.source = str(path)
        if llama is None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"tokenizer {path} does not exist")
            llama = Llama(model_path=str(path), vocab_only=True, verbose=False)
            # free it before interpreter shutdown: llama.cpp's __del__ fails once its module is torn down
            atexit.register(llama.close)
        self.llama = llama

    @property
    def vocab_size(self) -> int:
        return self.llama.n_vocab()

    @property
    def eos_token_id(self) -> int:
        return self.llama.token_eos()

    def encode(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return self.llama.detokenize(ids).decode("utf-8", errors="replace")

    def offsets(self, text: str) -> list[tuple[int, int]]:
        # Each token's bytes are its piece (the pieces concatenate to the text); a token that ends
        # inside a multi-byte character extends to the end of that character.
        ids = self.encode(text)
        ends = np.cumsum([len(self.llama.detokenize([i])) for i in ids], dtype=np.int64)
        starts = ends - np.diff(ends, prepend=0)
        char_of_byte = np.repeat(np.arange(len(text)), [len(c.encode("utf-8")) for c in text])
        char_of_byte = np.append(char_of_byte, len(text))
        return [
            (int(char_of_byte[s]), int(char_of_byte[e - 1]) + 1 if e > s else int(char_of_byte[s]))
            for s, e in zip(starts, ends)
        ]

    def id_to_token(self, token_id: int) -> str | None:
        return self.llama._model.token_get_text(token_id) if 0 <= token_id < self.vocab_size else None

    def normalize(self, text: str) -> str:
        return text  # llama.cpp's SentencePiece and BPE vocabularies tokenize the text as it is

    def pieces(self) -> list[bytes]:
        """llama.cpp's own piece of each token (special tokens give b""). Through the C call with
        a buffer that grows: `Llama.detokenize` gives b"" for pieces longer than its buffer."""
        import llama_cpp

        vocab = self.llama._model.vocab
        buf = ctypes.create_string_buffer(64)
        out = []
        for token_id in range(self.vocab_size):
            n = llama_cpp.llama_token_to_piece(vocab, token_id, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(vocab, token_id, buf, len(buf), 0, False)
            out.append(buf.raw[:n])
        return out


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other bytes
    for the characters from U+0100 on, in byte order (the mapping `ByteLevel` encodes with)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}
