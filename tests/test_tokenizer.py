"""The core tokenizer module: one `load_tokenizer` for every kind of spec, and fingerprints that
tell tokenizers apart by the ids they give."""

from __future__ import annotations

import pytest

from curate.local_model import GEMMA_NAME, gemma_path
from curate.tokenizer import GgufTokenizer, HFTokenizer, fingerprint, load_tokenizer, shared_tokenizer, train_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Perplexity filters keep the documents a reference model finds likely.",
    "Suffix arrays answer substring counts in logarithmic time.",
] * 20


def test_a_trained_tokenizer_loads_back_with_the_same_ids(tmp_path):
    trained = train_tokenizer(TEXTS, tmp_path / "tok" / "tokenizer.json", vocab_size=300)
    loaded = load_tokenizer(tmp_path / "tok" / "tokenizer.json")
    assert isinstance(loaded, HFTokenizer) and loaded.source == str(tmp_path / "tok" / "tokenizer.json")
    ids = loaded.encode(TEXTS[1])
    assert ids == trained.encode(TEXTS[1]) and loaded.decode(ids) == TEXTS[1]
    assert loaded.eos_token_id == loaded.tok.token_to_id("<|endoftext|>") and loaded.vocab_size == trained.vocab_size
    assert fingerprint(loaded) == fingerprint(trained)


def test_fingerprints_differ_when_the_ids_differ(tmp_path):
    small = train_tokenizer(TEXTS, tmp_path / "small.json", vocab_size=280)
    large = train_tokenizer(TEXTS, tmp_path / "large.json", vocab_size=320)
    assert len(fingerprint(small)) == 16 and fingerprint(small) != fingerprint(large)


def test_the_packaged_model_name_is_its_gguf_vocabulary():
    by_name, by_path = load_tokenizer(GEMMA_NAME), load_tokenizer(gemma_path())
    assert isinstance(by_name, GgufTokenizer) and by_name.source == gemma_path()
    assert fingerprint(by_name) == fingerprint(by_path) and by_name.vocab_size > 200_000


def test_shared_tokenizer_loads_once_per_spec(tmp_path):
    train_tokenizer(TEXTS, tmp_path / "tok.json", vocab_size=300)
    assert shared_tokenizer(str(tmp_path / "tok.json")) is shared_tokenizer(str(tmp_path / "tok.json"))


@pytest.mark.parametrize(
    "name, body, error",
    [
        ("missing.json", None, "tokenizer .*missing.json does not exist"),
        ("missing.gguf", None, "tokenizer .*missing.gguf does not exist"),
        ("broken.json", "{not json", "broken.json is not a Hugging Face tokenizer.json"),
    ],
)
def test_bad_files_are_clear_errors_that_name_them(tmp_path, name, body, error):
    if body is not None:
        (tmp_path / name).write_text(body)
    with pytest.raises((FileNotFoundError, ValueError), match=error):
        load_tokenizer(tmp_path / name)


def test_too_small_a_vocabulary_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 257"):
        train_tokenizer(TEXTS, tmp_path / "tok.json", vocab_size=100)
