import numpy as np
import pytest

from curate.calibrate import metrics, sweep, valley
from curate.splits import split_of


def test_metrics_by_hand():
    h = np.array([0.9, 0.8, 0.2, 0.7, 0.1])
    y = np.array([True, True, True, False, False])
    m = metrics(h, y, threshold=0.5)  # predicted harmful: 0.9, 0.8, 0.7 -> TP 2, FP 1, FN 1, TN 1
    assert (m.precision, m.recall) == pytest.approx((2 / 3, 2 / 3))
    assert m.f1 == pytest.approx(2 / 3)
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.5) / 2)  # negative class: TN 1, FN 1, FP 1 -> F1 0.5
    assert m.accuracy == pytest.approx(0.6)


def test_sweep_finds_the_separating_threshold():
    rng = np.random.default_rng(0)
    h = np.concatenate([rng.uniform(0, 1, 300), rng.uniform(2, 3, 100)])
    y = np.concatenate([np.zeros(300, bool), np.ones(100, bool)])
    threshold, m = sweep(h, y, candidates=100)
    assert 1 <= threshold < 2
    assert m.macro_f1 == 1.0


def test_valley_of_a_bimodal_histogram():
    rng = np.random.default_rng(1)
    h = np.concatenate([rng.normal(-3, 0.3, 2000), rng.normal(-1, 0.3, 300)])
    assert -2.4 < valley(h) < -1.6


def test_valley_refuses_a_single_peak():
    with pytest.raises(ValueError, match="single peak"):
        valley(np.random.default_rng(2).normal(0, 1, 5000))


def test_split_is_stable_and_roughly_60_20_20():
    ids = [f"doc-{i}" for i in range(10000)]
    parts = [split_of(i) for i in ids]
    assert parts == [split_of(i) for i in ids]
    shares = {p: parts.count(p) / len(parts) for p in ("train", "val", "test")}
    assert shares["train"] == pytest.approx(0.6, abs=0.02) and shares["val"] == pytest.approx(0.2, abs=0.02)
