"""`curate run` end to end on a local Ray with real KenLM models."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from curate import harmful
from curate.documents import read_texts
from curate.lm import LanguageModel, score_piece_lines
from curate.normalize import normalize_reference
from curate.splits import split_of
from curate.storage import sha256
from pipelines.runner import run_job
from pipelines.spec import SpecError, load_job

from .conftest import REPO, write_job


@pytest.fixture(scope="module")
def run(tmp_path_factory, inputs, models):
    out = tmp_path_factory.mktemp("run")
    manifest = run_job(load_job(write_job(out / "job.yaml", inputs, models)), out=out / "out")
    return out / "out", manifest


def _read(out, sub):
    files = sorted((out / sub).glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


def test_every_document_is_accounted_for(run):
    out, m = run
    assert m["input"] == 240 + 8
    assert m["quarantined"] == 7
    assert m["input"] == m["kept"] + sum(m["rejected"].values()) + m["quarantined"]
    assert set(m["sources"]) >= {"openwebtext", "common-crawl", "broken-fixture"}
    for source, c in m["sources"].items():
        assert c["input"] == c["kept"] + sum(c["rejected"].values()) + c["quarantined"], source
    kept, rejected, quarantine = _read(out, "kept"), _read(out, "rejected"), _read(out, "quarantine")
    assert (len(kept), len(rejected), len(quarantine)) == (m["kept"], sum(m["rejected"].values()), m["quarantined"])
    ids = pl.concat([kept["id"], rejected["id"], quarantine["id"]])
    assert ids.n_unique() == m["input"]


def test_manifest_checksums_and_config_hash(run):
    out, m = run
    for rel, info in m["shards"].items():
        assert sha256(out / rel) == info["sha256"]
        assert pl.read_parquet(out / rel).height == info["rows"]
    assert len(m["config_hash"]) == 16


def test_rejections_carry_stage_and_reason(run):
    out, m = run
    rejected = _read(out, "rejected")
    assert m["rejected"]["harmful"] > 0 and m["rejected"]["perplexity"] > 0
    assert rejected["reject_stage"].null_count() == 0 and rejected["reject_reason"].null_count() == 0
    ppl_rej = rejected.filter(pl.col("reject_stage") == "perplexity")
    assert (ppl_rej["ppl_bucket"] == "tail").all()
    assert ppl_rej["reject_reason"].str.contains("in bucket tail").all()
    harm_rej = rejected.filter(pl.col("reject_stage") == "harmful")
    assert harm_rej["is_harmful"].all()
    quarantine = _read(out, "quarantine")
    assert set(quarantine.columns) == {"id", "source", "input_file", "input_row", "error", "raw"}
    assert quarantine["error"].str.contains("broken.jsonl row ").all()


def test_buckets_use_this_runs_percentiles(run):
    out, m = run
    kept, rejected = _read(out, "kept"), _read(out, "rejected")
    reaching = pl.concat([kept, rejected.filter(pl.col("reject_stage") == "perplexity")], how="diagonal_relaxed")
    stage = next(s for s in m["stages"] if s["stage"] == "perplexity")
    ppl = reaching["ppl"].to_numpy()
    assert stage["cutoffs"]["head"] == pytest.approx(np.percentile(ppl, 30))
    assert stage["cutoffs"]["middle"] == pytest.approx(np.percentile(ppl, 60))
    assert set(kept["ppl_bucket"]) <= {"head", "middle"}
    assert (kept.filter(pl.col("ppl_bucket") == "head")["ppl"] < stage["cutoffs"]["head"]).all()


def test_ppl_matches_a_plain_ccnet_loop(run, models, inputs):
    """Score a few kept documents the way CCNet does, line by line, and compare."""
    out, _ = run
    kept = _read(out, "kept").head(5)
    model = LanguageModel(models["wiki"])
    for doc_id, text, ppl in zip(kept["id"], kept["text"], kept["ppl"]):
        lines = [model.sp.encode(normalize_reference(line), out_type=str) for line in text.split("\n")]
        log10_sum, tokens = score_piece_lines(model.kenlm, lines)
        assert ppl == pytest.approx(10 ** (-log10_sum / tokens), rel=1e-9), doc_id


def test_report_is_written(run):
    out, m = run
    report = json.loads((out / "report.json").read_text())
    assert set(report["histograms"]) == {"ppl", "harmful_score"}
    assert report["histograms"]["ppl"]["lines"].keys() == {"head cut-off", "middle cut-off"}
    assert report["samples"]["kept, bucket head"] and report["samples"]["rejected by harmful"]
    page = (out / "report.html").read_text()
    assert page.count("<img") == 2 and "rejected: perplexity" in page and "quarantined" in page
    assert report["seconds"]["perplexity"] > 0 and report["seconds"]["harmful"] > 0


def test_other_config_in_same_output_is_refused(run, inputs, models, tmp_path):
    out, _ = run
    job = load_job(write_job(tmp_path / "job.yaml", inputs, models, shard_docs=77))
    with pytest.raises(SpecError, match="another configuration"):
        run_job(job, out=out)


def _curate(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "curate.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_resume_after_kill_equals_uninterrupted_run(models, tmp_path):
    web = [{"path": str(REPO / "data" / "web")}]
    stages = [{"perplexity": {"model": models["wiki"], "keep": ["head", "middle"]}}]
    job = write_job(tmp_path / "job.yaml", tmp_path, models, inputs=web, stages=stages, shard_docs=100)
    reference_out = tmp_path / "reference"
    run_job(load_job(job), out=reference_out)

    out = tmp_path / "out"
    proc = _curate("run", str(job), "--out", str(out), start_new_session=True)
    deadline = time.time() + 240
    while len(list((out / "work").glob("shard-*.parquet"))) < 2:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no shard finished in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "work").glob("shard-*.parquet")}
    assert not (out / "manifest.json").exists()
    assert len(finished) < 17, "the run finished before it could be killed"

    rerun = _curate("run", str(job), "--out", str(out))
    log, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, log
    assert f"{len(finished)} already done" in log
    for name, mtime in finished.items():
        assert (out / "work" / name).stat().st_mtime_ns == mtime, f"{name} was redone"
    for sub in ("kept", "rejected"):
        assert _read(out, sub).equals(_read(reference_out, sub)), sub
    manifest, reference = (json.loads((d / "manifest.json").read_text()) for d in (out, reference_out))
    assert manifest["shards"] == reference["shards"]  # same files, same checksums


def test_cli_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninputs: []\n")
    proc = _curate("run", str(bad))
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "inputs: List should have at least 1 item" in log and "Traceback" not in log
    proc = _curate("lm", "score", str(tmp_path), str(bad))
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "is not a model directory" in log and "Traceback" not in log


def test_calibrated_card_and_scoring_cli(models):
    card = LanguageModel(models["harmful"]).card["thresholds"]["harmful"]
    assert card["default"] in ("perplexity", "contrastive")
    assert card["perplexity"]["test"]["n"] > 1000 and card["contrastive"]["candidates"] >= 100
    proc = _curate("kenlm", "score", models["wiki"], str(REPO / "data" / "samples" / "broken.jsonl"))
    log, _ = proc.communicate(timeout=60)
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [d["id"] for d in lines] == [d["id"] for d in read_texts([str(REPO / "data" / "samples" / "broken.jsonl")])]
    # each value recomputed with the kenlm and sentencepiece modules directly, CCNet's per-line convention
    import kenlm
    import sentencepiece

    from curate.lm import KENLM_BINARY, SP_MODEL

    ken = kenlm.Model(os.path.join(models["wiki"], KENLM_BINARY))
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(models["wiki"], SP_MODEL))
    for d, doc in zip(lines, read_texts([str(REPO / "data" / "samples" / "broken.jsonl")])):
        pieces = [sp.encode(normalize_reference(line), out_type=str) for line in doc["text"].split("\n")]
        log10_sum = sum(ken.score(" ".join(p), bos=True, eos=True) for p in pieces)
        tokens = sum(len(p) + 1 for p in pieces)
        assert (d["tokens"], d["log10_sum"]) == (tokens, pytest.approx(log10_sum, abs=1e-4)), d["id"]
        assert d["ppl"] == pytest.approx(10 ** (-log10_sum / tokens), abs=0.006), d["id"]


def test_calibrate_without_labels_finds_the_valley(models, tmp_path):
    """Harmful tweets score low under the harmful model and Wikipedia articles high: the valley
    threshold falls between the two groups."""
    tweets = [
        d
        for d in read_texts([str(REPO / "data" / "harmful" / "davidson_hate_offensive.jsonl.gz")])
        if d["harmful"] and split_of(d["id"]) == "test"
    ][:1500]
    wiki = list(read_texts([str(REPO / "data" / "wiki")]))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in tweets + wiki * 5))
    model_dir = tmp_path / "harmful"
    shutil.copytree(models["harmful"], model_dir)
    card = harmful.calibrate_valley(model_dir, [str(mixed)], log=lambda *_: None)
    model = LanguageModel(model_dir)
    tweet_ppl = np.median([model.perplexity(d["text"]) for d in tweets[:200]])
    wiki_ppl = np.median([model.perplexity(d["text"]) for d in wiki])
    assert card["default"] == "perplexity"
    assert tweet_ppl < card["perplexity"]["threshold"] < wiki_ppl
