"""The loader over an index's tokenized shards, on indexes built by indexes.build (u16 and u32, several
shards): documents come back exactly, separators become end-of-text and never join documents, the
order is a function of the seed and the step, and held-out documents never reach training batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curate.splits import split_of
from indexes.layout import IndexFormatError
from models.data import TokenShards, batches
from tests.train_support import synthetic_index

EOT = 3
SEQ = 16


def _corpus(n: int = 80) -> tuple[list[list[int]], list[str]]:
    """Documents of consecutive ids from disjoint ranges (document i owns base_i, base_i + 1, ...),
    so any adjacency in a batch tells which document a token came from and what may follow it."""
    rng = np.random.default_rng(7)
    docs, base = [], 10
    for i in range(n):
        length = int(rng.integers(1, 30)) if i % 10 else 0  # some empty documents
        docs.append(list(range(base, base + length)))
        base += length + 1
    assert base < 2000
    return docs, [f"doc-{i}" for i in range(n)]


@pytest.fixture(scope="module", params=[2000, 70000], ids=["u16", "u32"])
def index(request, tmp_path_factory):
    vocab = request.param
    docs, ids = _corpus()
    if vocab > 65535:  # ids past u16 range
        docs = [[t + 65000 if t > 20 else t for t in d] for d in docs]
    root = tmp_path_factory.mktemp(f"ix{vocab}")
    card = synthetic_index(root / "ix", docs, ids, vocab, EOT, shard_tokens=400)
    return {"dir": root / "ix", "card": card, "docs": docs, "ids": ids}


def test_documents_come_back_exactly_per_split(index):
    shards = TokenShards(index["dir"])
    assert index["card"]["shards"] >= 3
    assert shards.dtype.itemsize == (2 if shards.vocab_size == 2000 else 4)
    assert shards.eot_id == EOT and shards.vocab_size == index["card"]["vocab_size"]
    for split in ("train", "val", "test"):
        got = [(i, s, t.tolist()) for i, s, t in shards.documents(split)]
        pairs = enumerate(zip(index["ids"], index["docs"]))
        want = [(i, f"src{n % 3}", d) for n, (i, d) in pairs if split_of(i) == split]
        assert got == want and got


def _check_stream(x: torch.Tensor, y: torch.Tensor, docs: list[list[int]]) -> None:
    """Every window is a slice of [EOT, doc, EOT, doc, ...]: inside a document each token follows its
    predecessor, and a change of document happens only through an end-of-text token."""
    firsts = {d[0] for d in docs if d}
    lasts = {d[-1] for d in docs if d}
    successor = {a: b for d in docs for a, b in zip(d, d[1:])}
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row in torch.cat([x, y[:, -1:]], dim=1).tolist():
        for a, b in zip(row, row[1:]):
            if a != EOT and b != EOT:
                assert successor.get(a) == b, f"{a} -> {b} joins two documents"
            elif b == EOT and a != EOT:
                assert a in lasts, f"end-of-text after {a}, which does not end a document"
            elif a == EOT and b != EOT:
                assert b in firsts, f"{b} after end-of-text does not start a document"


def test_separators_become_end_of_text_and_never_join_documents(index):
    shards = TokenShards(index["dir"])
    for x, y in _take(batches(shards, "train", SEQ, 4, seed=1), 40):  # several epochs
        assert x.dtype == torch.long and x.shape == (4, SEQ)
        assert int(x.max()) < shards.vocab_size  # the 0xFF..FF separator never shows
        _check_stream(x, y, index["docs"])


def test_held_out_documents_never_reach_training_batches(index):
    shards = TokenShards(index["dir"])
    owner = {t: i for i, d in zip(index["ids"], index["docs"]) for t in d}
    train_ids = {i for i in index["ids"] if split_of(i) == "train"}
    seen = set()
    for x, y in _take(batches(shards, "train", SEQ, 4, seed=0), 60):
        seen |= {owner[t] for t in torch.cat([x, y], 1).flatten().tolist() if t != EOT}
    assert seen <= train_ids
    nonempty_train = {i for i, d in zip(index["ids"], index["docs"]) if d and i in train_ids}
    assert len(seen) >= 0.9 * len(nonempty_train)  # an epoch covers the split (less the last partial window)
    val_batches = _take(batches(shards, "val", SEQ, 4, seed=0), 10)
    val = {owner[t] for x, _ in val_batches for t in x.flatten().tolist() if t != EOT}
    assert val and not val & train_ids


def test_order_is_a_function_of_seed_step_and_rank(index):
    shards = TokenShards(index["dir"])
    a = _take(batches(shards, "train", SEQ, 4, seed=5), 12)
    b = _take(batches(shards, "train", SEQ, 4, seed=5), 12)
    c = _take(batches(shards, "train", SEQ, 4, seed=6), 12)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    resumed = _take(batches(shards, "train", SEQ, 4, seed=5, start_step=7), 5)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a[7:], resumed))
    ranks = [_take(batches(shards, "train", SEQ, 2, seed=5, rank=r, world=2), 12) for r in (0, 1)]
    for k in range(12):  # two ranks of 2 read exactly one rank's batch of 4
        assert torch.equal(torch.cat([ranks[0][k][0], ranks[1][k][0]]), a[k][0])


def test_missing_index_and_tiny_split_are_clear_errors(tmp_path, index):
    with pytest.raises(IndexFormatError, match="does not exist"):
        TokenShards(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="fewer than one sequence"):
        next(batches(TokenShards(index["dir"]), "val", 100_000, 1, seed=0))
    with pytest.raises(ValueError, match="unknown split"):
        TokenShards(index["dir"]).split_docs("dev")


def _take(it, n: int) -> list:
    return [next(it) for _ in range(n)]
