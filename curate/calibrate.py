"""Thresholds for the harmful-content filter ("Perplexed by Quality", Jansen et al. 2022).

Both scores are oriented so that higher means more harmful:
- `perplexity`: minus log10 perplexity under the harmful-only model (the paper: a document is
  harmful when its perplexity is *below* the threshold);
- `contrastive`: log10 probability under the harmful model minus that under a benign reference
  model of the same genre, per harmful-model token (Moore-Lewis; `curate.harmful.CONTRASTS`).

With labels, the threshold maximises macro-F1 on the validation split over a sweep of candidate
thresholds (the paper sweeps 100); precision, recall and F1 are then measured on the test split.
Without labels it sits at the valley of the bimodal histogram of the score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SCORES = ("perplexity", "contrastive")


@dataclass
class Metrics:
    precision: float
    recall: float
    f1: float
    macro_f1: float
    accuracy: float
    n: int
    positives: int


def metrics(harmfulness: np.ndarray, labels: np.ndarray, threshold: float) -> Metrics:
    pred = harmfulness > threshold
    labels = labels.astype(bool)
    tp = int(np.sum(pred & labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    tn = int(np.sum(~pred & ~labels))
    f1_pos = _f1(tp, fp, fn)
    f1_neg = _f1(tn, fn, fp)
    return Metrics(
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        f1=f1_pos,
        macro_f1=(f1_pos + f1_neg) / 2,
        accuracy=(tp + tn) / len(labels) if len(labels) else 0.0,
        n=len(labels),
        positives=int(labels.sum()),
    )


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def sweep(harmfulness: np.ndarray, labels: np.ndarray, candidates: int = 200) -> tuple[float, Metrics]:
    """The candidate threshold with the best macro-F1. Candidates are midpoints between
    quantiles of the scores, so each one separates the data somewhere different."""
    if len(harmfulness) < 2:
        raise ValueError("need at least two labelled documents to calibrate")
    qs = np.unique(np.quantile(harmfulness, np.linspace(0, 1, candidates + 1)))
    thresholds = (qs[:-1] + qs[1:]) / 2 if len(qs) > 1 else qs
    best = max(thresholds, key=lambda t: metrics(harmfulness, labels, t).macro_f1)
    return float(best), metrics(harmfulness, labels, best)


def valley(harmfulness: np.ndarray, bins: int = 60, min_prominence: float = 0.1) -> float:
    """The lowest point of the smoothed histogram between its highest peak and the most
    prominent other peak; a second peak less prominent than `min_prominence` of the highest
    one is noise, and then there is no valley to find."""
    counts, edges = np.histogram(harmfulness, bins=bins)
    smooth = np.convolve(counts, np.ones(3) / 3, mode="same")
    padded = np.concatenate([[-1.0], smooth, [-1.0]])
    peaks = [i for i in range(len(smooth)) if padded[i + 1] > padded[i] and padded[i + 1] >= padded[i + 2]]
    top = max(peaks, key=lambda i: smooth[i])

    def low_between(i: int) -> int:
        lo, hi = sorted((top, i))
        return lo + int(np.argmin(smooth[lo : hi + 1]))

    others = [(smooth[i] - smooth[low_between(i)], i) for i in peaks if i != top]
    prominence, second = max(others, default=(0.0, top))
    if prominence < min_prominence * smooth[top]:
        raise ValueError("the score histogram has a single peak, not two: calibrate with labels or give a threshold")
    low = low_between(second)
    return float((edges[low] + edges[low + 1]) / 2)


def as_dict(m: Metrics) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(m).items()}
