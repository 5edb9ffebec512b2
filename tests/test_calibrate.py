import numpy as np
import pytest

from curate import harmful
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


def _web_scores(margins: list[float], scores: list[float]) -> dict[str, np.ndarray]:
    n = len(margins)
    return {
        "harmful_score": np.asarray(scores, dtype=float),
        "harmful_ppl": np.full(n, 100.0),
        "harmful_guard_margin": np.asarray(margins, dtype=float),
    }


def test_web_margin_is_raised_until_the_share_is_met():
    """Ten val pages, four over the threshold with margins 0.5, 0.3, 0.3, 0.1; at most 10% (one
    page) may stay flagged: the level falls halfway between 0.5 and the next lower margin, 0.3."""
    margins = [0.5, 0.3, 0.3, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    scores = [1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0]
    levels = {"max_harmful_ppl": 1000.0, "min_margin": -1.0, "from": "x"}
    fitted = harmful.fit_web_margin(levels, _web_scores(margins, scores), np.ones(10, bool), "contrastive", 0.0, 0.1)
    assert fitted["min_margin"] == pytest.approx(0.4)
    assert fitted["web"] == {"pages": 10, "share": 0.1, "floor": -1.0}
    flagged = harmful.flag_score(_web_scores(margins, scores), "contrastive", fitted) > 0.0
    assert flagged.sum() == 1
    # 20%: two pages may stay, but the two at 0.3 tie: only the one at 0.5 does
    fitted = harmful.fit_web_margin(levels, _web_scores(margins, scores), np.ones(10, bool), "contrastive", 0.0, 0.2)
    assert fitted["min_margin"] == pytest.approx(0.4)
    # pages outside the fitting split do not count, and the harmful tweets' own level is a floor
    pages = np.array([False] * 4 + [True] * 6)
    fitted = harmful.fit_web_margin(levels, _web_scores(margins, scores), pages, "contrastive", 0.0, 0.1)
    assert fitted["min_margin"] == -1.0


def test_web_margin_refuses_bad_shares_and_empty_splits():
    scores = _web_scores([0.1, 0.2], [1.0, 1.0])
    levels = {"max_harmful_ppl": 1000.0, "min_margin": 0.0, "from": "x"}
    with pytest.raises(ValueError, match="must lie in"):
        harmful.fit_web_margin(levels, scores, np.ones(2, bool), "contrastive", 0.0, 1.5)
    with pytest.raises(ValueError, match="no web page falls in the val split"):
        harmful.fit_web_margin(levels, scores, np.zeros(2, bool), "contrastive", 0.0, 0.1)
    top = harmful.fit_web_margin(levels, scores, np.ones(2, bool), "contrastive", 0.0, 0.0)
    assert top["min_margin"] > 0.2  # share 0: even the page with the highest margin abstains
