"""Decoding filters against distributions worked out by hand."""

import math

import pytest
import torch

from models.sampling import Sampling, filter_logits, generate, next_token, top_k_filter, top_p_filter, typical_filter

# p = [0.5, 0.2, 0.15, 0.1, 0.05]. Entropy H = -sum p ln p = 1.33307 nats. Surprisals -ln p:
# 0.69315, 1.60944, 1.89712, 2.30259, 2.99573; distances |surprisal - H|: 0.63992, 0.27637,
# 0.56405, 0.96952, 1.66266. Ascending: token 1 (p .2), 2 (.15), 0 (.5), 3 (.1), 4 (.05).
PROBS = [0.5, 0.2, 0.15, 0.1, 0.05]
LOGITS = torch.log(torch.tensor(PROBS))


def kept(filtered: torch.Tensor) -> list[int]:
    return torch.isfinite(filtered).nonzero().flatten().tolist()


def renormalised(filtered: torch.Tensor) -> list[float]:
    return torch.softmax(filtered, dim=-1).tolist()


def test_entropy_and_distances_in_the_comment_are_right():
    h = -sum(p * math.log(p) for p in PROBS)
    assert h == pytest.approx(1.33307, abs=1e-5)
    distances = [abs(-math.log(p) - h) for p in PROBS]
    assert distances == pytest.approx([0.63992, 0.27637, 0.56405, 0.96952, 1.66266], abs=1e-5)


def test_typical_keeps_the_tokens_closest_to_the_entropy_not_the_most_likely():
    # mass 0.3: token 1 has 0.2 < 0.3, token 2 brings 0.35 >= 0.3: keep {1, 2}; the most likely token 0 is dropped
    f = typical_filter(LOGITS, 0.3)
    assert kept(f) == [1, 2]
    assert renormalised(f) == pytest.approx([0, 0.2 / 0.35, 0.15 / 0.35, 0, 0], abs=1e-6)
    # mass 0.9: 0.2, 0.35, 0.85, then token 3 reaches 0.95: keep {0, 1, 2, 3}
    f = typical_filter(LOGITS, 0.9)
    assert kept(f) == [0, 1, 2, 3]
    assert renormalised(f) == pytest.approx([0.5 / 0.95, 0.2 / 0.95, 0.15 / 0.95, 0.1 / 0.95, 0], abs=1e-6)
    # a tiny mass still keeps the single most typical token
    assert kept(typical_filter(LOGITS, 0.01)) == [1]


def test_top_p_keeps_the_smallest_likely_set_reaching_p():
    f = top_p_filter(LOGITS, 0.6)  # 0.5, then 0.7 >= 0.6
    assert kept(f) == [0, 1]
    assert renormalised(f) == pytest.approx([0.5 / 0.7, 0.2 / 0.7, 0, 0, 0], abs=1e-6)
    assert kept(top_p_filter(LOGITS, 0.5)) == [0]
    assert kept(top_p_filter(LOGITS, 0.96)) == [0, 1, 2, 3, 4]


def test_top_k_and_temperature():
    f = top_k_filter(LOGITS, 3)
    assert kept(f) == [0, 1, 2]
    assert renormalised(f) == pytest.approx([0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0], abs=1e-6)
    # temperature 2 flattens: p_i^(1/2) / sum_j p_j^(1/2)
    roots = [p**0.5 for p in PROBS]
    flat = renormalised(filter_logits(LOGITS, Sampling(temperature=2.0)))
    assert flat == pytest.approx([r / sum(roots) for r in roots], abs=1e-6)


def test_filters_work_row_by_row_on_a_batch():
    batch = torch.stack([LOGITS, LOGITS.flip(0)])
    f = typical_filter(batch, 0.3)
    assert kept(f[0]) == [1, 2] and kept(f[1]) == [2, 3]


def test_sampling_draws_only_kept_tokens_in_their_renormalised_proportions():
    g = torch.Generator().manual_seed(0)
    draws = next_token(LOGITS.expand(20000, -1), Sampling(typical_p=0.3), g)
    counts = torch.bincount(draws, minlength=5).tolist()
    assert counts[0] == counts[3] == counts[4] == 0
    assert counts[1] / 20000 == pytest.approx(0.2 / 0.35, abs=0.015)


def test_greedy_is_argmax_and_bad_settings_are_errors():
    assert next_token(torch.stack([LOGITS, LOGITS.flip(0)]), Sampling(temperature=0)).tolist() == [0, 4]
    with pytest.raises(ValueError, match="--typical-p"):
        Sampling(typical_p=1.5)
    with pytest.raises(ValueError, match="--top-k"):
        Sampling(top_k=0)


class Cycle(torch.nn.Module):
    """Predicts (last token + 1) mod V with certainty: logits [B, T, V]."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None, reduction="mean"):
        return torch.nn.functional.one_hot((idx + 1) % self.vocab, self.vocab).float() * 50


def test_generate_feeds_its_output_back_and_stops_at_the_stop_token():
    model = Cycle(5)
    assert generate(model, [1], max_tokens=3, context=2, sampling=Sampling(temperature=0)) == [2, 3, 4]
    assert generate(model, [2], max_tokens=10, context=2, sampling=Sampling(top_k=1), stop=0) == [3, 4]
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [], max_tokens=3, context=2, sampling=Sampling())
