"""The harmful decision against an independent computation: scores computed by hand with the
`kenlm` and `sentencepiece` modules (tests/harmful_support.py), metrics with scikit-learn.

A sign error in the contrastive score, a flipped comparison with the threshold, or a default
score that is not the better one on validation would each fail here."""

import json
import math
import shutil

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from curate import harmful
from curate.documents import read_texts
from curate.lm import LanguageModel
from curate.perplexity.config import HarmfulConfig
from curate.perplexity.stages import HarmfulFilter

from .conftest import DATA, DAVIDSON
from .harmful_support import by_hand, contrast_by_hand, split_by_hand, sums_by_hand


@pytest.fixture(scope="module")
def labelled() -> dict[str, tuple[list[str], np.ndarray]]:
    """The Davidson val and test documents with their labels."""
    parts: dict[str, tuple[list[str], list[bool]]] = {"val": ([], []), "test": ([], [])}
    for doc in read_texts([DAVIDSON]):
        part = split_by_hand(doc["id"])
        if part in parts:
            parts[part][0].append(doc["text"])
            parts[part][1].append(doc["harmful"])
    return {k: (texts, np.asarray(labels)) for k, (texts, labels) in parts.items()}


@pytest.fixture(scope="module")
def hand_scores(models, labelled) -> dict[str, dict[str, np.ndarray]]:
    """Per split: the contrastive score and the harmful model's perplexity, by hand."""
    out = {}
    for part, (texts, _) in labelled.items():
        _, harm_ppl = by_hand(models["harmful"], texts)
        out[part] = {
            "contrastive": contrast_by_hand(models["harmful"], models["benign"], texts),
            "harmful_ppl": harm_ppl,
        }
    return out


def card_of(models) -> dict:
    return LanguageModel(models["harmful"]).card["thresholds"]["harmful"]


def straddling(score: np.ndarray, threshold: float, n: int = 4) -> np.ndarray:
    """Indices of the n documents just below and the n just above the threshold."""
    order = np.argsort(score)
    cut = int(np.searchsorted(score[order], threshold))
    return order[max(cut - n, 0) : cut + n]


def decide(models, texts: list[str], **config) -> pl.DataFrame:
    """The harmful stage as a job runs it: score, fit, decide."""
    stage = HarmfulFilter(HarmfulConfig(model=models["harmful"], **config))
    stage.setup()
    df = pl.DataFrame({"text": texts, **stage.score(texts)})
    return stage.decide(df, stage.fit(df))


def test_contrastive_score_is_harmful_minus_reference_log_probability(models, labelled, hand_scores):
    """The document's log10-probability under the harmful model minus that under the reference,
    over the harmful model's tokens (the two models' SentencePiece vocabularies differ)."""
    texts = labelled["test"][0][:40] + [d["text"] for d in list(read_texts([str(DATA / "wiki")]))[:3]]
    harm_sums, harm_tokens = sums_by_hand(models["harmful"], texts)
    ref_sums, ref_tokens = sums_by_hand(models["benign"], texts)
    assert not np.array_equal(harm_tokens, ref_tokens)  # two tokenizations: per-token means would not compare
    stage = HarmfulFilter(HarmfulConfig(model=models["harmful"], score="contrastive", reference=models["benign"]))
    stage.setup()
    got = stage.score(texts)
    score = (harm_sums - ref_sums) / harm_tokens
    np.testing.assert_allclose(got["harmful_score"], score, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got["harmful_ppl"], 10.0 ** (-harm_sums / harm_tokens), rtol=1e-9)
    np.testing.assert_allclose(got["harmful_ref_ppl"], 10.0 ** (-ref_sums / ref_tokens), rtol=1e-9)
    # harmful tweets are explained better by the harmful model: positive on average, Wikipedia negative
    labels = labelled["test"][1][:40]
    assert score[:40][labels].mean() > 0 > score[40:].max()


def test_a_card_calibrated_before_the_contrast_was_recorded_keeps_its_scale(models, labelled, tmp_path):
    """A card without `contrast` was calibrated on each model's own per-token mean: it is still
    scored that way, so its threshold keeps its meaning; an unknown contrast is refused."""
    old = tmp_path / "harmful"
    shutil.copytree(models["harmful"], old)
    card = json.loads((old / "card.json").read_text())
    assert card["thresholds"]["harmful"].pop("contrast") == harmful.CONTRAST == "harmful_tokens"
    (old / "card.json").write_text(json.dumps(card))
    texts = labelled["test"][0][:30]
    stage = HarmfulFilter(HarmfulConfig(model=str(old), score="contrastive", reference=models["benign"]))
    stage.setup()
    means = by_hand(models["harmful"], texts)[0] - by_hand(models["benign"], texts)[0]
    np.testing.assert_allclose(stage.score(texts)["harmful_score"], means, rtol=0, atol=1e-9)
    assert not np.allclose(means, contrast_by_hand(models["harmful"], models["benign"], texts))
    lm, ref = LanguageModel(old), LanguageModel(models["benign"])
    with pytest.raises(ValueError, match="contrast must be one of"):
        harmful.harmfulness(lm, ref, texts, contrast="characters")
    del lm.card["thresholds"]["harmful"]  # never calibrated: the current contrast
    assert harmful.contrast_of(lm.card) == harmful.CONTRAST


def test_contrastive_decision_flags_scores_above_the_threshold(models, labelled, hand_scores):
    """Documents just either side of the calibrated threshold: above it flagged, below it kept."""
    texts = labelled["test"][0]
    t = card_of(models)["contrastive"]["threshold"]
    rows = straddling(hand_scores["test"]["contrastive"], t)
    picked = [texts[i] for i in rows]
    expected = hand_scores["test"]["contrastive"][rows] > t
    assert expected.any() and not expected.all()
    df = decide(models, picked, score="contrastive", guard=False)
    assert df["is_harmful"].to_list() == expected.tolist()
    assert [r is not None for r in df["_reason"]] == expected.tolist()
    assert all(f"> {round(t, 3)}" in r for r in df["_reason"] if r)


def test_perplexity_decision_flags_perplexities_below_the_threshold(models, labelled, hand_scores):
    """The paper's rule: harmful when the harmful model's perplexity is *below* the threshold."""
    texts = labelled["test"][0]
    t = card_of(models)["perplexity"]["threshold"]
    ppl = hand_scores["test"]["harmful_ppl"]
    rows = straddling(ppl, t)
    expected = ppl[rows] < t
    assert expected.any() and not expected.all()
    df = decide(models, [texts[i] for i in rows], score="perplexity", guard=False)
    assert df["is_harmful"].to_list() == expected.tolist()
    np.testing.assert_allclose(df["harmful_ppl"].to_numpy(), ppl[rows], rtol=1e-9)


def test_guard_abstains_above_the_harmful_perplexity_level(models, labelled, hand_scores):
    """With the guard on, a document is flagged when its score is over the threshold *and* the
    harmful model's own perplexity is within the card's level; both conditions by hand."""
    card = card_of(models)
    t, level = card["contrastive"]["threshold"], card["guard"]["max_harmful_ppl"]
    texts = labelled["test"][0]
    score, ppl = hand_scores["test"]["contrastive"], hand_scores["test"]["harmful_ppl"]
    over = np.flatnonzero(score > t)
    unfamiliar = over[ppl[over] > level][:4]
    familiar = over[ppl[over] <= level][:4]
    assert len(unfamiliar) and len(familiar)
    rows = np.concatenate([unfamiliar, familiar])
    df = decide(models, [texts[i] for i in rows], score="contrastive")
    assert df["is_harmful"].to_list() == [False] * len(unfamiliar) + [True] * len(familiar)
    assert df["harmful_guarded"].to_list() == [True] * len(unfamiliar) + [False] * len(familiar)


def test_default_score_has_the_better_validation_macro_f1(models, labelled, hand_scores):
    """Each score's validation macro-F1 at its card threshold, with scikit-learn: the card's
    figures agree, its default is the better one, and each threshold is as good as a fine grid's best."""
    card = card_of(models)
    labels = labelled["val"][1]
    predictions = {
        "contrastive": hand_scores["val"]["contrastive"] > card["contrastive"]["threshold"],
        "perplexity": hand_scores["val"]["harmful_ppl"] < card["perplexity"]["threshold"],
    }
    f1 = {kind: f1_score(labels, pred, average="macro") for kind, pred in predictions.items()}
    for kind, value in f1.items():
        assert card[kind]["validation"]["macro_f1"] == pytest.approx(value, abs=1e-4), kind
    assert card["default"] == max(f1, key=f1.get)
    assert f1["contrastive"] != pytest.approx(f1["perplexity"], abs=1e-3)  # a real choice, not a tie
    for kind, harmfulness in (
        ("contrastive", hand_scores["val"]["contrastive"]),
        ("perplexity", -np.log10(hand_scores["val"]["harmful_ppl"])),
    ):
        grid = np.quantile(harmfulness, np.linspace(0.005, 0.995, 300))
        best = max(f1_score(labels, harmfulness > g, average="macro") for g in grid)
        assert f1[kind] >= best - 0.005, kind


def test_card_test_figures_match_scikit_learn(models, labelled, hand_scores):
    card = card_of(models)
    labels = labelled["test"][1]
    pred = hand_scores["test"]["contrastive"] > card["contrastive"]["threshold"]
    test = card["contrastive"]["test"]
    assert test["n"] == len(labels) and test["positives"] == int(labels.sum())
    assert test["precision"] == pytest.approx(precision_score(labels, pred), abs=1e-4)
    assert test["recall"] == pytest.approx(recall_score(labels, pred), abs=1e-4)
    assert test["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"), abs=1e-4)
    assert not math.isnan(test["f1"])
