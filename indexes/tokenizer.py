"""Byte-level BPE tokenizers (Hugging Face `tokenizers`): train one, or load any tokenizer.json."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"
# Names other tokenizer.json files use for their end-of-document token, tried in order.
EOS_NAMES = (END_OF_TEXT, "</s>", "<|end_of_text|>", "<eos>")


def train_tokenizer(texts: Iterable[str], out_path: str | Path, vocab_size: int = 32000) -> Tokenizer:
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
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer.json, with an error that names the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path} does not exist")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise ValueError(f"{path} is not a Hugging Face tokenizer.json: {e}") from None


def find_eos_token_id(tokenizer: Tokenizer) -> int:
    """The id that stands for "end of document" in next-token distributions."""
    for name in EOS_NAMES:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return token_id
    raise ValueError(f"the tokenizer has none of the end-of-document tokens {', '.join(EOS_NAMES)}")
