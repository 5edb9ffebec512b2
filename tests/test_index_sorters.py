"""The two suffix sorters (libsais over tokens, pydivsufsort over bytes) write the same table, and
both equal a plain sort of the token-aligned suffixes by their little-endian bytes."""

from __future__ import annotations

import numpy as np
import pytest

from indexes import suffix_array
from indexes.build import write_index
from indexes.layout import pointer_width, shard_path
from indexes.suffix_array import SortError, build_suffix_array, choose_sorter

# Ids whose numeric and byte orders differ (0x0100 sorts before 0x0001 in memcmp of LE bytes).
U16_IDS = [1, 2, 255, 256, 257, 511, 0x0100, 0x1234, 0x3412, 65534]
U32_IDS = [5, 65534, 65535 + 1000, 70000, 0x010000, 0x000101, 123456, 0x00FFFFF0]


def naive_table(tokenized: bytes, width: int) -> bytes:
    """The table by definition: every token-aligned suffix, sorted by its bytes."""
    order = sorted(range(0, len(tokenized), width), key=lambda p: tokenized[p:])
    pw = pointer_width(len(tokenized))
    return b"".join(p.to_bytes(pw, "little") for p in order)


def build_with(tmp_path, docs, vocab_size, sorter, name):
    card = write_index(
        ((d, {}) for d in docs),
        tmp_path / name,
        vocab_size=vocab_size,
        eos_token_id=0,
        log=lambda m: None,
        sorter=sorter,
    )
    assert card["sorter"] == sorter
    return tmp_path / name


@pytest.mark.parametrize("ids,vocab_size", [(U16_IDS, 65535), (U32_IDS, 2**24)], ids=["u16", "u32"])
def test_sorters_agree_with_the_definition(tmp_path, ids, vocab_size):
    rng = np.random.default_rng(7)
    for trial in range(4):
        # few distinct ids and short documents: many long repeats and ties up to a separator
        docs = [
            rng.choice(ids[: 2 + trial * 2], size=rng.integers(0, 12)).tolist() for _ in range(int(rng.integers(1, 60)))
        ]
        tables = {}
        for sorter in ("libsais", "pydivsufsort"):
            index = build_with(tmp_path, docs, vocab_size, sorter, f"{sorter}-{trial}")
            tables[sorter] = shard_path(index, "table", 0).read_bytes()
        tokenized = shard_path(index, "tokenized", 0).read_bytes()
        assert tables["libsais"] == tables["pydivsufsort"] == naive_table(tokenized, 4 if vocab_size > 65535 else 2)


def test_sorters_agree_on_a_longer_text(tmp_path):
    rng = np.random.default_rng(3)
    text = rng.integers(0, 32000, size=3000)
    docs = [
        text[i : i + n].tolist() for i, n in zip(rng.integers(0, 2900, 400), rng.integers(1, 100, 400))
    ]  # overlapping cuts
    tables = [
        shard_path(build_with(tmp_path, docs, 32000, s, s), "table", 0).read_bytes()
        for s in ("libsais", "pydivsufsort")
    ]
    assert tables[0] == tables[1]


def test_one_token_shard(tmp_path):
    index = build_with(tmp_path, [[]], 100, "libsais", "one")  # a lone separator
    assert shard_path(index, "table", 0).read_bytes() == b"\x00"


def test_auto_uses_libsais_when_built_and_falls_back(tmp_path, monkeypatch):
    assert choose_sorter("auto", 1000) == "libsais"
    assert choose_sorter("auto", suffix_array.LIBSAIS_MAX_TOKENS + 1) == "pydivsufsort"
    monkeypatch.setattr(suffix_array, "LIBSAIS_CACHE", tmp_path / "nowhere")
    assert choose_sorter("auto", 1000) == "pydivsufsort"
    with pytest.raises(ValueError, match="unknown sorter 'quick'"):
        choose_sorter("quick", 1000)


def test_ids_beyond_libsais_rank_table_fall_back_under_auto(tmp_path):
    docs = [[2**25, 7, 2**30], [7, 2**30, 2**25, 2**25]]  # e.g. hashed ids, not a tokenizer's
    card = write_index(((d, {}) for d in docs), tmp_path / "auto", vocab_size=2**31, eos_token_id=0, log=lambda m: None)
    assert card["sorter"] == "pydivsufsort"
    tokenized = shard_path(tmp_path / "auto", "tokenized", 0).read_bytes()
    assert shard_path(tmp_path / "auto", "table", 0).read_bytes() == naive_table(tokenized, 4)
    with pytest.raises(SortError, match="token ids of 2\\^24 or more") as error:
        write_index(
            ((d, {}) for d in docs),
            tmp_path / "forced",
            vocab_size=2**31,
            eos_token_id=0,
            log=lambda m: None,
            sorter="libsais",
        )
    assert type(error.value) is SortError and "ray::" not in str(error.value)  # the task's error, not Ray's wrapper
    assert not (tmp_path / "forced").exists() and not (tmp_path / ".forced.building").exists()


def test_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "tokenized.0").write_bytes(b"\xff\xff\x01")  # not a whole number of u16 tokens
    with pytest.raises(SortError, match=r"tokenized.0: its size is not a multiple of the token width"):
        build_suffix_array(tmp_path, 0, 2, "libsais")
    (tmp_path / "tokenized.1").write_bytes(b"")
    with pytest.raises(SortError, match=r"tokenized.1: the shard is empty"):
        build_suffix_array(tmp_path, 1, 2, "libsais")
    assert not list(tmp_path.glob("table.*")) and not list(tmp_path.glob(".table.*"))

    monkeypatch.setattr(suffix_array, "LIBSAIS_CACHE", tmp_path / "nowhere")
    suffix_array._sort_shard_function.cache_clear()
    try:
        (tmp_path / "tokenized.2").write_bytes(b"\xff\xff\x01\x00")
        with pytest.raises(SortError, match="is not built: run `make setup`"):
            build_suffix_array(tmp_path, 2, 2, "libsais")
    finally:
        suffix_array._sort_shard_function.cache_clear()
