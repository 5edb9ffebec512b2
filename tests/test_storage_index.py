"""Model directories and indexes on object storage (issue 17), against a real S3-compatible server
(moto's, on 127.0.0.1; tests/s3_support.py): an index built from inputs in the bucket into the
bucket equals the local build file for file and answers the same queries; a model directory in the
bucket scores as the local one, is fetched once per version and fetched again when it changes; a
job trains into an `s3://` models_dir and reuses the uploaded model, a calibrated one naming its
reference model by URL; a job's index step writes to an `s3://` --out; the store's errors are one
`curate: error:` line."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import lm, remote_dirs, storage
from curate.cli import main
from curate.documents import read_texts
from curate.tokenizer import train_tokenizer
from indexes.build import build_index
from indexes.layout import CARD_NAME
from pipelines.runner import _resolve, prepare_models, run_job
from pipelines.spec import load_job

from . import s3_support
from .conftest import DATA, DAVIDSON
from .s3_support import aws_env, free_port

SAMPLE = DATA / "samples" / "openwebtext_short12.jsonl"


@pytest.fixture(scope="module")
def s3():
    with s3_support.serving() as server:
        yield server


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own, so that each test fetches what it uses."""
    root = tmp_path / "cache"
    monkeypatch.setattr(storage, "LOCAL_CACHE", root)
    monkeypatch.setattr(remote_dirs, "FETCHED", root / "fetched")
    monkeypatch.setattr(remote_dirs, "STAGING", root / "staging")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A JSON Lines file and a Parquet file of real web documents, and a BPE tokenizer of them."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "in").mkdir()
    shutil.copy(SAMPLE, root / "in" / "a.jsonl")
    docs = [d for _, d in zip(range(150), read_texts([str(DATA / "web" / "openwebtext_1k.jsonl.gz")]))]
    pq.write_table(
        pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]}), root / "in" / "b.parquet"
    )
    train_tokenizer((d["text"] for d in read_texts([str(root / "in")])), root / "tokenizer.json", 2000)
    return root


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _answer(capsys, index: str, *query: str) -> tuple[dict, str]:
    """The answer without its latency, and what the command said on stderr."""
    code, out, err = _cli(capsys, "index", "query", index, *query)
    assert code == 0, err
    return {k: v for k, v in json.loads(out).items() if "latency" not in k}, err


def test_an_index_built_from_and_into_the_bucket_equals_the_local_build(s3, corpus, tmp_path, capsys):
    bucket = s3.bucket("corpus")
    for f in sorted((corpus / "in").iterdir()):
        s3.upload(f, f"{bucket}/in/{f.name}")
    tokenizer = str(corpus / "tokenizer.json")
    local = tmp_path / "ix"
    build_index([str(corpus / "in")], tokenizer, local, log=lambda m: None)
    url = f"{bucket}/indexes/web"
    code, _, err = _cli(capsys, "index", "build", "--input", f"{bucket}/in", "--tokenizer", tokenizer, "--out", url)
    assert code == 0, err
    assert f"uploaded {len(list(local.iterdir()))} files to {url} ({CARD_NAME} last)" in err

    # the same files, byte for byte (the card differs only in the build's seconds)
    files = sorted(p.name for p in local.iterdir())
    assert s3.keys(url) == files and len(files) > 6
    for name in files:
        if name != CARD_NAME:
            assert s3.get(f"{url}/{name}") == (local / name).read_bytes(), name
    cards = [json.loads(text) for text in (s3.get(f"{url}/{CARD_NAME}"), (local / CARD_NAME).read_text())]
    assert [{k: v for k, v in c.items() if k != "build_seconds"} for c in cards[:1]] == [
        {k: v for k, v in c.items() if k != "build_seconds"} for c in cards[1:]
    ]
    # the same answers; the built folder became the cached copy, so the query fetched nothing
    for query in (("count", "the"), ("count", "of the"), ("ntd", "of the"), ("prob", "of the")):
        (answer, said), (expected, _) = _answer(capsys, url, *query), _answer(capsys, str(local), *query)
        assert answer == expected and answer.get("count", 1) > 0, query
        assert f"{url}: unchanged since it was fetched, using {remote_dirs.FETCHED}" in said
    # a rebuild into the same place needs --overwrite
    code, _, err = _cli(capsys, "index", "build", "--input", f"{bucket}/in", "--tokenizer", tokenizer, "--out", url)
    exists = f"{url} already exists and is not empty (pass --overwrite to replace it)"
    assert (code, err.strip().splitlines()[-1]) == (2, f"curate: error: {exists}")


def test_uploading_removes_the_old_card_first_and_writes_the_new_one_last(s3, tmp_path, monkeypatch):
    url = s3.bucket("order") + "/ix"
    old, new = tmp_path / "old", tmp_path / "new"
    for folder, names in ((old, ("table.0", "table.1", CARD_NAME)), (new, ("table.0", CARD_NAME))):
        folder.mkdir()
        for name in names:
            (folder / name).write_text(f"{folder.name} {name}")
    remote_dirs.upload(old, url, CARD_NAME)
    steps: list[str] = []
    copy, remove = remote_dirs._copy, storage.remove
    monkeypatch.setattr(remote_dirs, "_copy", lambda a, b: (steps.append(f"put {storage.name(b)}"), copy(a, b)))
    monkeypatch.setattr(storage, "remove", lambda a: (steps.append(f"delete {storage.name(a)}"), remove(a)))
    remote_dirs.upload(new, url, CARD_NAME)
    assert steps == [f"delete {CARD_NAME}", "delete table.1", "put table.0", f"put {CARD_NAME}"]
    assert s3.keys(url) == sorted(["table.0", CARD_NAME]) and s3.get(f"{url}/{CARD_NAME}") == b"new index.json"


def test_an_unfinished_or_missing_index_and_an_unreachable_store_are_one_error_line(s3, corpus, tmp_path, capsys):
    bucket = s3.bucket("broken")
    s3.upload(corpus / "tokenizer.json", f"{bucket}/half/table.0")  # shards without their card
    unfinished = f"no {CARD_NAME} there (not a finished directory: missing, or being written)"
    for index, message in (
        (f"{bucket}/half", f"{bucket}/half: {unfinished}"),
        ("s3://no-such-bucket/ix", "s3://no-such-bucket/ix: the bucket 'no-such-bucket' does not exist"),
    ):
        code, out, err = _cli(capsys, "index", "query", index, "count", "the")
        assert (code, out, err.strip()) == (2, "", f"curate: error: {message}")
    with aws_env({**s3.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}):
        code, out, err = _cli(capsys, "index", "query", f"{bucket}/ix", "count", "the")
    assert code == 2 and err.startswith("curate: error: ") and len(err.strip().splitlines()) == 1
    assert "cannot reach the object store's endpoint" in err
    code, _, err = _cli(
        capsys, "index", "build", "--input", "s3://no-such-bucket/in", "--tokenizer", str(corpus / "tokenizer.json"),
        "--out", str(tmp_path / "ix"),
    )  # fmt: skip
    missing = "input s3://no-such-bucket/in: no such file, folder or matching glob"
    assert (code, err.strip().splitlines()[-1]) == (2, f"curate: error: {missing}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    lm.train([lm.source(str(DATA / "wiki"))], path, order=3, vocab=1000, log=lambda m: None)
    return path


def test_a_model_directory_in_the_bucket_scores_as_the_local_one_and_is_fetched_once_per_version(
    s3, tiny_model, cache, capsys
):
    url = s3.bucket("models") + "/tiny"
    remote_dirs.upload(tiny_model, url, lm.CARD)
    texts = [d["text"] for d in read_texts([str(SAMPLE)])]
    remote = lm.LanguageModel(url)
    first = capsys.readouterr().err
    assert remote.dir.is_relative_to(cache / "fetched" / "s3" / "models" / "tiny")
    assert f"{url}: fetched 3 files to {remote.dir}" in first
    local_scores = lm.LanguageModel(tiny_model).score_many(texts)
    for got, expected in zip(remote.score_many(texts), local_scores):
        np.testing.assert_array_equal(got, expected)
    again = lm.LanguageModel(url)
    assert again.dir == remote.dir and "unchanged since it was fetched" in capsys.readouterr().err
    # the CLI reads it the same way
    code, out, err = _cli(capsys, "kenlm", "score", url, str(SAMPLE))
    assert code == 0 and [json.loads(line)["log10_sum"] for line in out.splitlines()] == [
        round(float(s), 4) for s in local_scores[0]
    ]
    # a changed card is a new version: fetched into a folder of its own, the old copy left as it was
    card = json.loads((tiny_model / lm.CARD).read_text())
    s3.client().put_object(Bucket="models", Key="tiny/card.json", Body=json.dumps({**card, "note": "x"}).encode())
    changed = lm.LanguageModel(url)
    assert f"{url}: fetched 3 files to {changed.dir}" in capsys.readouterr().err
    assert changed.dir != remote.dir and changed.card["note"] == "x" and "note" not in remote.card
    assert json.loads((remote.dir / lm.CARD).read_text()) == card
    code, _, err = _cli(capsys, "kenlm", "score", f"{s3.bucket('models')}/none", str(SAMPLE))
    assert (code, err.strip()) == (2, f"curate: error: s3://models/none: no {lm.CARD} there (not a finished "
                                      "directory: missing, or being written)")  # fmt: skip


def _model_job(tmp_path: Path, models_dir: str) -> Path:
    job = {
        "name": "m", "inputs": [{"path": str(SAMPLE)}], "models_dir": models_dir,
        "models": {"tiny": {"input": [str(DATA / "wiki")], "order": 3, "vocab": 1000}},
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job))
    return path


def test_a_job_trains_into_an_s3_models_dir_and_reuses_what_it_uploaded(s3, tmp_path):
    models = s3.bucket("trained") + "/kenlm"
    job = load_job(_model_job(tmp_path, models))
    lines: list[str] = []
    dirs = prepare_models(job, lines.append)
    assert dirs == {"tiny": f"{models}/tiny"} and _resolve("tiny", dirs) == _resolve(f"{models}/tiny", {})
    assert s3.keys(dirs["tiny"]) == sorted([lm.CARD, lm.SP_MODEL, lm.KENLM_BINARY])
    assert f"uploaded 3 files to {models}/tiny ({lm.CARD} last)" in lines
    before = remote_dirs.versions(dirs["tiny"])
    lines.clear()
    prepare_models(job, lines.append)
    assert any("up to date with its training config, not retraining" in line for line in lines)
    assert not any(line.startswith("uploaded") for line in lines) and remote_dirs.versions(dirs["tiny"]) == before


def test_a_jobs_index_step_writes_to_an_s3_out(s3, corpus, tmp_path):
    bucket = s3.bucket("runs")
    index = {"vocab": 1000, "dedup_min_tokens": 20}
    job = {"name": "ix", "inputs": [{"path": str(corpus / "in")}], "stages": [], "index": index}
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    manifest = run_job(load_job(tmp_path / "job.yaml"), out=f"{bucket}/run", log=lambda *a: None)
    keys = s3.keys(f"{bucket}/run")
    assert "manifest.json" in keys and "tokenizer.json" in keys and f"index/{CARD_NAME}" in keys
    card = json.loads(s3.get(f"{bucket}/run/index/{CARD_NAME}"))
    assert card["documents"] == manifest["kept"] > 0
    assert manifest["index"]["dir"] == f"{bucket}/run/index" and manifest["index"]["dedup"]["min_tokens"] == 20
    # dedup's scratch index stays on the driver's disk
    assert (storage.local_dir(f"{bucket}/run") / "work" / "dedup-index" / CARD_NAME).is_file()
    assert not [k for k in keys if "dedup-index" in k]


def test_calibrated_models_in_an_s3_models_dir_name_their_reference_by_url(s3, tmp_path):
    labelled = tmp_path / "davidson_head.jsonl"
    with gzip.open(DAVIDSON, "rt", encoding="utf-8") as f:
        labelled.write_text("".join(next(f) for _ in range(2000)))
    part = {"path": str(labelled), "split": "train"}
    models = {
        "harmful": {
            "input": [{**part, "where": {"harmful": True}}], "order": 3, "vocab": 400,
            "calibrate": {"labeled": [str(labelled)], "reference": "benign"},
        },
        "benign": {"input": [{**part, "where": {"harmful": False}}], "order": 3, "vocab": 300},
    }  # fmt: skip
    root = s3.bucket("calibrated") + "/kenlm"
    job = {"name": "c", "inputs": [{"path": str(labelled)}], "models_dir": root, "models": models}
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    lines: list[str] = []
    dirs = prepare_models(load_job(tmp_path / "job.yaml"), lines.append)
    assert any(line.startswith("calibrating harmful") for line in lines)
    for name in models:
        assert s3.keys(dirs[name]) == sorted([lm.CARD, lm.SP_MODEL, lm.KENLM_BINARY])
    card = json.loads(s3.get(f"{root}/harmful/{lm.CARD}"))
    assert card["thresholds"]["harmful"]["contrastive"]["reference"] == f"{root}/benign"
    assert lm.LanguageModel(card["thresholds"]["harmful"]["contrastive"]["reference"]).card["order"] == 3
    before = {name: remote_dirs.versions(d) for name, d in dirs.items()}
    lines.clear()
    prepare_models(load_job(tmp_path / "job.yaml"), lines.append)  # up to date: nothing trained, calibrated, uploaded
    assert not any(line.startswith(("calibrating", "uploaded", "training")) for line in lines)
    assert {name: remote_dirs.versions(d) for name, d in dirs.items()} == before
