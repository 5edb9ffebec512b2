"""One `curate run` from raw documents to a trained checkpoint: a job with `index:` and `train:`."""

from __future__ import annotations

import gzip
import itertools
import json

import pytest

from models.checkpoint import check_tokenizer, load_checkpoint
from pipelines.runner import run_job
from pipelines.spec import SpecError, load_job
from tests.index_support import DATA


def test_a_job_goes_from_raw_text_to_a_checkpoint_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_KERNELS_COMPILE", "0")  # a short run: kernels/ stays eager
    raw = tmp_path / "web.jsonl"
    with gzip.open(DATA / "web" / "openwebtext_1k.jsonl.gz", "rt", encoding="utf-8") as f:
        raw.write_text("".join(itertools.islice(f, 150)))
    train = {"size": "tiny", "seq_len": 32, "batch_size": 4, "steps": 6, "warmup_steps": 1, "eval_every": 3}
    spec = {"name": "t", "inputs": [{"path": str(raw)}], "shard_docs": 100, "index": {"vocab": 1000}, "train": train}
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(spec))
    run_job(load_job(job), out=tmp_path / "out")
    model, meta = load_checkpoint(tmp_path / "out" / "train")
    assert meta["step"] == 6 and meta["architecture"] == "transformer"
    check_tokenizer(meta, tmp_path / "out" / "index")
    metrics = (tmp_path / "out" / "train" / "metrics.jsonl").read_text().splitlines()
    # a longer schedule is another training config: the run refuses to mix it with the checkpoint,
    # while the curation part of the job (whose hash leaves `train` out) is not redone
    job.write_text(json.dumps({**spec, "train": {**train, "steps": 8}}))
    with pytest.raises(ValueError, match="another training config"):
        run_job(load_job(job), out=tmp_path / "out")
    job.write_text(json.dumps(spec))
    run_job(load_job(job), out=tmp_path / "out")  # finished: nothing retrained
    assert (tmp_path / "out" / "train" / "metrics.jsonl").read_text().splitlines() == metrics


def test_train_without_an_index_step_is_a_spec_error(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"name": "t", "inputs": [{"path": "x.jsonl"}], "train": {"steps": 5, "lr": 0.1}}))
    with pytest.raises(SpecError, match="add an `index:` section"):
        load_job(job)
    job.write_text(json.dumps({"name": "t", "inputs": [{"path": "x.jsonl"}], "index": {}, "train": {"stpes": 5}}))
    with pytest.raises(SpecError, match="train.stpes: Extra inputs are not permitted"):
        load_job(job)
