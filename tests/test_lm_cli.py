"""`curate kenlm train/calibrate/evaluate` as a user types them, the job's model step (skip when
up to date, recalibrate after a retrain), and the harmful stage's threshold options in a job.
Expected values come from the data and from scores computed by hand (tests/harmful_support.py)."""

import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import sentencepiece as spm
from sklearn.metrics import f1_score, precision_score, recall_score

from curate import calibrate, harmful, lm
from curate.cli import main
from curate.documents import read_texts
from curate.lm import LanguageModel, kenlm_tool
from curate.normalize import normalize_reference
from pipelines.runner import prepare_models, run_job
from pipelines.spec import load_job

from .conftest import DATA, DAVIDSON
from .harmful_support import by_hand, contrast_by_hand, split_by_hand

JIGSAW = str(DATA / "harmful" / "jigsaw_toxic_sample.jsonl.gz")


def curate(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def davidson_head(tmp_path_factory) -> Path:
    """The first 3,000 Davidson tweets, labels and ids as shipped."""
    path = tmp_path_factory.mktemp("labelled") / "davidson_head.jsonl"
    with gzip.open(DAVIDSON, "rt", encoding="utf-8") as f:
        path.write_text("".join(next(f) for _ in range(3000)))
    return path


@pytest.fixture
def lmplz_capture(tmp_path, monkeypatch) -> Path:
    """A CURATE_KENLM_BIN whose lmplz copies the text it is handed to a file, then runs the real lmplz."""
    bin_dir, capture = tmp_path / "bin", tmp_path / "lmplz_input.txt"
    bin_dir.mkdir()
    real_lmplz, real_build = kenlm_tool("lmplz"), kenlm_tool("build_binary")
    (bin_dir / "lmplz").write_text(f'#!/bin/sh\ntee "{capture}" | "{real_lmplz}" "$@"\n')
    (bin_dir / "lmplz").chmod(0o755)
    (bin_dir / "build_binary").symlink_to(real_build)
    monkeypatch.setenv("CURATE_KENLM_BIN", str(bin_dir))
    return capture


def test_split_train_and_where_keep_other_documents_out_of_the_training_text(capsys, davidson_head, lmplz_capture):
    """The text lmplz receives is exactly the lines of the harmful tweets of the train split:
    no validation or test tweet, no benign tweet."""
    out = lmplz_capture.parent / "harmful"
    argv = ["kenlm", "train", "--input", str(davidson_head), "--where", "harmful=true", "--split", "train"]
    rc, _, _ = curate(capsys, *argv, "--out", str(out), "--vocab", "400", "--order", "3")
    assert rc == 0
    sp = spm.SentencePieceProcessor(model_file=str(out / "sp.model"))

    def piece_lines(docs: list[dict]) -> Counter:
        lines = (normalize_reference(line) for d in docs for line in d["text"].split("\n"))
        return Counter(" ".join(sp.encode(line, out_type=str)) for line in lines if line)

    docs = list(read_texts([str(davidson_head)]))
    train = [d for d in docs if d["harmful"] is True and split_by_hand(d["id"]) == "train"]
    held_out = [d for d in docs if d["harmful"] is True and split_by_hand(d["id"]) != "train"]
    benign = [d for d in docs if d["harmful"] is False and split_by_hand(d["id"]) == "train"]
    handed = Counter(lmplz_capture.read_text(encoding="utf-8").splitlines())
    assert handed == piece_lines(train)
    assert piece_lines(held_out) - handed and piece_lines(benign) - handed  # they had lines of their own to leak
    card = LanguageModel(out).card
    assert card["training"]["documents"] == len(train)
    assert card["training"]["config"]["inputs"][0]["where"] == {"harmful": True}
    assert card["training"]["config"]["inputs"][0]["split"] == "train"


def test_train_refuses_a_where_without_a_value(capsys, tmp_path):
    rc, _, err = curate(capsys, "kenlm", "train", "--input", DAVIDSON, "--where", "harmful", "--out", str(tmp_path))
    assert rc == 2 and err.strip() == "curate: error: --where takes FIELD=VALUE, got 'harmful'"


def _metrics_lines(log: str) -> dict[str, dict[str, float]]:
    """`kind on FILES: precision P recall R F1 F macro-F1 M (n=N, harmful=H)` lines, parsed."""
    out = {}
    for line in log.splitlines():
        if " on " in line and "precision" in line:
            kind, _, rest = line.partition(" on ")
            words = rest.split(": ", 1)[1].replace("(", "").replace(")", "").replace(",", "").split()
            out[kind.strip()] = {words[i]: float(words[i + 1]) for i in range(0, 8, 2)}
    return out


def test_evaluate_reports_the_card_thresholds_on_unseen_labels(capsys, models):
    """`curate kenlm evaluate` on the Jigsaw comments: each line agrees with scikit-learn on
    decisions computed by hand from the card's thresholds."""
    rc, log, _ = curate(capsys, "kenlm", "evaluate", models["harmful"], "--labeled", JIGSAW)
    assert rc == 0
    card = LanguageModel(models["harmful"]).card["thresholds"]["harmful"]
    docs = list(read_texts([JIGSAW]))
    labels = np.asarray([d["harmful"] for d in docs])
    texts = [d["text"] for d in docs]
    _, harm_ppl = by_hand(models["harmful"], texts)
    contrastive = contrast_by_hand(models["harmful"], models["benign"], texts) > card["contrastive"]["threshold"]
    predictions = {
        "perplexity": harm_ppl < card["perplexity"]["threshold"],
        "contrastive": contrastive,
    }
    predictions[f"{card['default']} + guard"] = predictions[card["default"]] & (
        harm_ppl <= card["guard"]["max_harmful_ppl"]
    )
    reported = _metrics_lines(log)
    assert set(reported) == set(predictions)
    for kind, pred in predictions.items():
        got = reported[kind]
        assert got["precision"] == pytest.approx(precision_score(labels, pred), abs=6e-4), kind
        assert got["recall"] == pytest.approx(recall_score(labels, pred), abs=6e-4), kind
        assert got["macro-F1"] == pytest.approx(f1_score(labels, pred, average="macro"), abs=6e-4), kind


def test_calibrate_command_with_labels_reference_candidates_and_web(capsys, models, davidson_head, tmp_path):
    """`--labeled --reference --candidates 100 --guard --web --web-flagged`: the card records the
    sweep and its validation figures agree with scikit-learn; the guard's margin level flags at
    most the stated share of the web pages of the val split; the shares printed per split are
    those computed by hand (without the guard, and with its two levels)."""
    model = tmp_path / "harmful"
    shutil.copytree(models["harmful"], model)
    web = tmp_path / "web.jsonl"
    with gzip.open(DATA / "web" / "openwebtext_1k.jsonl.gz", "rt", encoding="utf-8") as f:
        web.write_text("".join(next(f) for _ in range(120)))
    argv = ["kenlm", "calibrate", str(model), "--labeled", str(davidson_head), "--reference", models["benign"]]
    argv += ["--candidates", "100", "--guard", models["wiki"], "--web", str(web), "--web-flagged", "0.05"]
    rc, log, _ = curate(capsys, *argv)
    assert rc == 0
    card = LanguageModel(model).card["thresholds"]["harmful"]
    assert card["contrastive"]["candidates"] == 100 and card["contrastive"]["labeled"] == [str(davidson_head)]
    assert card["guard"]["reference"] == str(Path(models["wiki"]).resolve())

    val = [d for d in read_texts([str(davidson_head)]) if split_by_hand(d["id"]) == "val"]
    labels = np.asarray([d["harmful"] for d in val])
    texts = [d["text"] for d in val]
    score = contrast_by_hand(model, models["benign"], texts)
    f1 = f1_score(labels, score > card["contrastive"]["threshold"], average="macro")
    assert card["contrastive"]["validation"]["macro_f1"] == pytest.approx(f1, abs=1e-4)

    kind, t, levels = card["default"], card[card["default"]]["threshold"], card["guard"]
    pages = list(read_texts([str(web)]))
    split = np.asarray([split_by_hand(d["id"]) for d in pages])
    page_texts = [d["text"] for d in pages]
    _, harm_ppl = by_hand(model, page_texts)
    raw = contrast_by_hand(model, models["benign"], page_texts) > t
    raw = raw if kind == "contrastive" else harm_ppl < t
    known = raw & (harm_ppl <= levels["max_harmful_ppl"])
    margin = contrast_by_hand(model, models["wiki"], page_texts)
    guarded = known & (margin >= levels["min_margin"])
    val_pages, allowed = split == "val", int(0.05 * (split == "val").sum())
    assert levels["web"] == {"pages": int(val_pages.sum()), "share": 0.05, "floor": levels["web"]["floor"]}
    assert guarded[val_pages].sum() <= allowed
    if levels["min_margin"] > levels["web"]["floor"]:  # raised: the harmful tweets' own level flagged too many
        assert (known & val_pages & (margin >= levels["web"]["floor"])).sum() > allowed
    else:
        assert levels["min_margin"] == levels["web"]["floor"]
    assert f"unlabelled web text (120 documents of {web}) flagged:" in log
    for part, note in (("val", ", the guard's margin fitted here"), ("test", "")):
        where = split == part
        bare, kept = (raw & where).sum() / where.sum(), (guarded & where).sum() / where.sum()
        assert f"  {part} split ({where.sum()} pages{note}): {bare:.1%} without the guard, {kept:.1%} with it" in log


def test_calibrate_command_refuses_too_few_candidates(capsys, models, davidson_head):
    argv = ["kenlm", "calibrate", models["harmful"], "--labeled", str(davidson_head), "--candidates", "50"]
    rc, _, err = curate(capsys, *argv)
    assert rc == 2 and err.strip() == "curate: error: --candidates must be at least 100"


def test_calibrate_command_without_labels_takes_the_valley(capsys, models, tmp_path):
    """`--unlabeled`: harmful tweets and Wikipedia articles mixed; the card's perplexity threshold
    is the valley of the histogram of log-perplexities computed by hand."""
    tweets = [d for d in read_texts([DAVIDSON]) if d["harmful"] and split_by_hand(d["id"]) == "test"][:1500]
    wiki = list(read_texts([str(DATA / "wiki")]))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in tweets + wiki * 5))
    model = tmp_path / "harmful"
    shutil.copytree(models["harmful"], model)
    rc, log, _ = curate(capsys, "kenlm", "calibrate", str(model), "--unlabeled", str(mixed))
    assert rc == 0
    card = LanguageModel(model).card["thresholds"]["harmful"]
    lp, ppl = by_hand(model, [d["text"] for d in tweets + wiki * 5])
    assert card["default"] == "perplexity"
    assert card["perplexity"]["threshold"] == pytest.approx(10.0 ** (-calibrate.valley(lp)), rel=1e-9)
    assert f"{int(np.sum(ppl < card['perplexity']['threshold']))} of {len(ppl)} documents fall below it" in log


# ------------------------------------------------------------------ the job's model step


def _job(path: Path, models: dict, models_dir: Path, inputs: list[str], stages: list[dict]) -> Path:
    job = {"name": "t", "models_dir": str(models_dir), "models": models, "inputs": [{"path": p} for p in inputs]}
    job.update(stages=stages, shard_docs=200, batch_docs=64, workers=1, max_doc_bytes=200_000)
    path.write_text(json.dumps(job))  # JSON is YAML
    return path


def test_models_are_skipped_when_up_to_date_and_recalibrated_after_a_retrain(davidson_head, tmp_path):
    labelled = str(davidson_head)
    spec = {
        "harmful": {
            "input": [{"path": labelled, "where": {"harmful": True}, "split": "train"}],
            "order": 3,
            "vocab": 400,
            "calibrate": {"labeled": [labelled], "reference": "benign"},
        },
        "benign": {
            "input": [{"path": labelled, "where": {"harmful": False}, "split": "train"}],
            "order": 3,
            "vocab": 300,
        },
    }
    stages = [{"harmful": {"model": "unused"}}]
    root = tmp_path / "kenlm"
    logs: list[str] = []

    def prepare(models: dict) -> dict[str, str]:
        logs.clear()
        return prepare_models(load_job(_job(tmp_path / "job.yaml", models, root, [labelled], stages)), logs.append)

    dirs = prepare(spec)
    assert any(line.startswith("calibrating harmful") for line in logs)
    first = {name: (Path(d) / "card.json").read_text() for name, d in dirs.items()}
    binary = (Path(dirs["harmful"]) / "lm.binary").stat().st_mtime_ns

    prepare(spec)  # nothing changed: neither trained nor calibrated again
    assert sum("is up to date with its training config, not retraining" in line for line in logs) == 2
    assert not any(line.startswith("calibrating") for line in logs)
    assert {name: (Path(d) / "card.json").read_text() for name, d in dirs.items()} == first

    spec["benign"]["vocab"] = 500  # the reference is retrained: the harmful model is recalibrated, not retrained
    prepare(spec)
    assert any(line.startswith("calibrating harmful") for line in logs)
    assert (Path(dirs["harmful"]) / "lm.binary").stat().st_mtime_ns == binary
    card = LanguageModel(dirs["harmful"]).card["thresholds"]["harmful"]
    val = [d for d in read_texts([labelled]) if split_by_hand(d["id"]) == "val"]
    texts, labels = [d["text"] for d in val], np.asarray([d["harmful"] for d in val])
    score = contrast_by_hand(dirs["harmful"], dirs["benign"], texts)  # under the new reference
    f1 = f1_score(labels, score > card["contrastive"]["threshold"], average="macro")
    assert card["contrastive"]["validation"]["macro_f1"] == pytest.approx(f1, abs=1e-4)
    assert json.loads(first["harmful"])["thresholds"] != LanguageModel(dirs["harmful"]).card["thresholds"]

    spec["harmful"]["vocab"] = 600  # the harmful model itself is retrained: its new card is calibrated again
    prepare(spec)
    card = LanguageModel(dirs["harmful"]).card
    assert card["training"]["config"]["vocab"] == 600
    assert card["thresholds"]["harmful"]["default"] in ("perplexity", "contrastive")
    assert (Path(dirs["harmful"]) / "lm.binary").stat().st_mtime_ns != binary

    del card["thresholds"]["harmful"]["contrast"]  # calibrated before the contrast was recorded: on another scale
    lm.write_card(Path(dirs["harmful"]), card)
    prepare(spec)
    assert any(line.startswith("calibrating harmful") for line in logs)
    assert LanguageModel(dirs["harmful"]).card["thresholds"]["harmful"]["contrast"] == harmful.CONTRAST


# ------------------------------------------------------------------ threshold options in a job


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory) -> Path:
    """300 Davidson test tweets (both labels) and the 120 Wikipedia articles: a bimodal mix."""
    tweets = [d for d in read_texts([DAVIDSON]) if split_by_hand(d["id"]) == "test"][:300]
    wiki = list(read_texts([str(DATA / "wiki")]))
    path = tmp_path_factory.mktemp("mixed") / "mixed.jsonl"
    path.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in tweets + wiki))
    return path


def _run_harmful(tmp_path: Path, models: dict, mixed: Path, stage: dict) -> tuple[dict, dict[str, bool], list[dict]]:
    """Run a job with one harmful stage: its fitted parameters and, per document id, rejected or not."""
    job = _job(tmp_path / "job.yaml", {}, tmp_path / "kenlm", [str(mixed)], [{"harmful": stage}])
    manifest = run_job(load_job(job), out=tmp_path / "out")
    kept = pl.read_parquet(tmp_path / "out" / "kept" / "*.parquet")
    rejected = pl.read_parquet(tmp_path / "out" / "rejected" / "*.parquet")
    assert set(rejected["reject_stage"]) <= {"harmful"}
    decided = {**dict.fromkeys(kept["id"], False), **dict.fromkeys(rejected["id"], True)}
    return manifest["stages"][0], decided, list(read_texts([str(mixed)]))


def test_job_threshold_valley_with_the_perplexity_score(models, mixed_input, tmp_path):
    stage = {"model": models["harmful"], "score": "perplexity", "threshold": "valley", "guard": False}
    params, rejected, docs = _run_harmful(tmp_path, models, mixed_input, stage)
    lp, ppl = by_hand(models["harmful"], [d["text"] for d in docs])
    assert params["score"] == "perplexity" and params["threshold_from"].startswith("valley")
    assert params["threshold"] == pytest.approx(10.0 ** (-calibrate.valley(lp)), rel=1e-9)
    assert [rejected[d["id"]] for d in docs] == (ppl < params["threshold"]).tolist()
    assert 0 < sum(rejected.values()) < len(docs)


def test_job_numeric_threshold_on_the_default_contrastive_score(models, mixed_input, tmp_path):
    card = LanguageModel(models["harmful"]).card["thresholds"]["harmful"]
    assert card["default"] == "contrastive"
    params, rejected, docs = _run_harmful(tmp_path, models, mixed_input, {"model": models["harmful"], "threshold": 0.2})
    texts = [d["text"] for d in docs]
    _, harm_ppl = by_hand(models["harmful"], texts)
    score = contrast_by_hand(models["harmful"], models["benign"], texts)
    expected = (score > 0.2) & (harm_ppl <= card["guard"]["max_harmful_ppl"])  # the card's guard is on by default
    assert (params["score"], params["threshold"], params["threshold_from"]) == ("contrastive", 0.2, "given")
    assert [rejected[d["id"]] for d in docs] == expected.tolist()
    assert 0 < expected.sum() < len(docs)


def test_job_score_override_uses_that_scores_card_threshold(models, mixed_input, tmp_path):
    card = LanguageModel(models["harmful"]).card["thresholds"]["harmful"]
    stage = {"model": models["harmful"], "score": "perplexity", "guard": False}
    params, rejected, docs = _run_harmful(tmp_path, models, mixed_input, stage)
    _, ppl = by_hand(models["harmful"], [d["text"] for d in docs])
    assert params["threshold"] == card["perplexity"]["threshold"] and params["column"] == "harmful_ppl"
    assert [rejected[d["id"]] for d in docs] == (ppl < card["perplexity"]["threshold"]).tolist()
