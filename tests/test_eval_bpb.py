"""Bits per byte and the sliding-window protocol, on a bigram table whose NLL is known by hand."""

import math

import pytest
import torch

from models.evaluate import IGNORE, bits_per_byte, document_losses, evaluate, evenly_spaced, format_table, windows

# token 0 is end-of-text; P[prev][next]
P = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.25, 0.5, 0.25]])


class Bigram(torch.nn.Module):
    """The model interface (`model(idx, targets, reduction)`) over a fixed bigram table."""

    def __init__(self):
        super().__init__()
        self.logp = torch.nn.Parameter(P.log())

    def forward(self, idx, targets=None, reduction="mean"):
        logits = self.logp[idx]
        if targets is None:
            return logits
        logits = logits.transpose(1, 2)
        return torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction=reduction)


def test_bits_per_byte_by_hand():
    # "aba" = tokens [1, 2, 1] after end-of-text: -log2 P[0][1] - log2 P[1][2] - log2 P[2][1]
    bits = -math.log2(0.6) - math.log2(0.5) - math.log2(0.5)  # 0.736966 + 1 + 1 = 2.736966
    report = evaluate(Bigram(), [("s", [1, 2, 1], 3)], bos=0, context=8)
    assert report["overall"]["bits_per_byte"] == pytest.approx(bits / 3, rel=1e-6)
    assert report["overall"]["bits_per_byte"] == pytest.approx(0.912322, abs=1e-6)
    assert report["overall"]["loss"] == pytest.approx(bits * math.log(2) / 3)
    assert report["overall"]["perplexity"] == pytest.approx(math.exp(bits * math.log(2) / 3))
    assert bits_per_byte(math.log(2) * 12, 4) == 3.0


def test_sources_are_grouped_and_overall_is_total_bits_over_total_bytes():
    docs = [("web", [1, 2, 1], 3), ("wiki", [2, 2], 5), ("web", [1], 1)]
    report = evaluate(Bigram(), docs, bos=0, context=8, batch_size=2)
    web_bits = (-math.log2(0.6) + 2) + (-math.log2(0.6))  # "aba" and "a"
    wiki_bits = -math.log2(0.3) - math.log2(0.25)
    assert report["sources"]["web"] | {"bits_per_byte": None} == {
        "docs": 2,
        "tokens": 4,
        "bytes": 4,
        "loss": pytest.approx(web_bits * math.log(2) / 4),
        "perplexity": pytest.approx(2 ** (web_bits / 4)),
        "bits_per_byte": None,
    }
    assert report["sources"]["web"]["bits_per_byte"] == pytest.approx(web_bits / 4)
    assert report["sources"]["wiki"]["bits_per_byte"] == pytest.approx(wiki_bits / 5)
    assert report["overall"]["bits_per_byte"] == pytest.approx((web_bits + wiki_bits) / 9)
    table = format_table(report)
    assert table.splitlines()[-1].startswith("overall") and "wiki" in table


def test_windows_score_every_token_once_with_the_stated_context():
    tokens = list(range(1, 11))  # 10 tokens after end-of-text 0
    wins = list(windows(tokens, bos=0, context=4, stride=2))
    assert wins[0] == ([0, 1, 2, 3], [1, 2, 3, 4])
    assert wins[1] == ([2, 3, 4, 5], [IGNORE, IGNORE, 5, 6])
    assert wins[-1] == ([6, 7, 8, 9], [IGNORE, IGNORE, 9, 10])
    scored = [t for _, ys in wins for t in ys if t != IGNORE]
    assert scored == tokens
    for xs, ys in wins:  # each target is the input's next token
        seq = [0, *tokens]
        for x, y in zip(xs, ys):
            assert y == IGNORE or y == seq[seq.index(x) + 1]
    with pytest.raises(ValueError, match="stride"):
        list(windows(tokens, 0, 4, 5))


def test_sliding_windows_give_the_full_context_result_for_a_bigram_model():
    rng = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, 3, (n,), generator=rng).tolist() for n in (1, 7, 30, 3, 64)]
    full = list(document_losses(Bigram(), docs, bos=0, context=128))
    for context, stride, batch in ((4, 2, 3), (5, 5, 1), (8, 1, 16)):
        slid = list(document_losses(Bigram(), docs, bos=0, context=context, stride=stride, batch_size=batch))
        assert [n for n, _ in slid] == [len(d) for d in docs]
        assert [nll for _, nll in slid] == pytest.approx([nll for _, nll in full], rel=1e-5)


def test_no_documents_is_an_error():
    with pytest.raises(ValueError, match="no documents"):
        evaluate(Bigram(), [("s", [], 0)], bos=0, context=4)


def test_evenly_spaced_keeps_both_ends_and_every_part():
    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly_spaced(list(range(3)), 5) == [0, 1, 2]
    assert evenly_spaced(list(range(10)), 1) == [0]
    with pytest.raises(ValueError, match="max_docs"):
        evenly_spaced([1], 0)
