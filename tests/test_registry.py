"""The stage registry: a stage registered from outside curate (tests/toy_stage.py) is validated by
the spec, run by the runner and drawn by the report; validating a job imports nothing heavy."""

import json
import subprocess
import sys

import polars as pl
import pytest

from curate import registry
from curate.atomic import atomic_path, write_text
from curate.stages import Resources
from pipelines.runner import run_job
from pipelines.spec import SpecError, load_job

from .conftest import REPO

SAMPLE = REPO / "data" / "samples" / "openwebtext_short12.jsonl"
HEAVY = ("kenlm", "numba", "ray", "torch", "sklearn", "sentencepiece", "llama_cpp", "vllm")


@pytest.fixture
def min_chars(monkeypatch):
    monkeypatch.setattr(registry, "STAGES", dict(registry.STAGES))  # undone after the test
    registry.register("min_chars", "tests.toy_stage:MinCharsConfig", "tests.toy_stage:MinChars")


def _job(tmp_path, stages, **extra):
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps({"name": "toy", "inputs": [{"path": str(SAMPLE)}], "stages": stages, **extra}))
    return path


def test_validating_jobs_imports_nothing_heavy():
    code = (
        "import sys; from pipelines.spec import load_job\n"
        "for job in ('jobs/demo.yaml', 'jobs/llm_demo.yaml'): load_job(job)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_registered_stage_loads_with_its_settings():
    for kind in registry.kinds():
        assert registry.stage_class(kind).name == kind
        assert issubclass(registry.config_class(kind), registry.Strict)
    with pytest.raises(KeyError, match="unknown stage 'nope'; the stages are: perplexity, harmful"):
        registry.stage_class("nope")


def test_a_registered_stage_is_validated_by_the_spec(tmp_path, min_chars):
    job = load_job(_job(tmp_path, [{"min_chars": {"min_chars": 200}}]))
    assert [(s.kind, s.config.min_chars) for s in job.stages] == [("min_chars", 200)]
    bad = _job(tmp_path, [{"min_chars": {"min_char": 1}}, {"min_chars": {"min_chars": 0}}])
    message = str(pytest.raises(SpecError, load_job, bad).value)
    assert "stages.0.min_chars.min_char: Extra inputs are not permitted" in message
    assert "stages.1.min_chars.min_chars: Input should be greater than or equal to 1" in message


def test_unregistered_kind_is_an_error_naming_the_key(tmp_path):
    message = str(pytest.raises(SpecError, load_job, _job(tmp_path, [{"min_chars": {"min_chars": 1}}])).value)
    assert "stages.0.min_chars: Extra inputs are not permitted" in message


def test_a_registered_stage_runs_and_is_reported(tmp_path, min_chars):
    texts = [json.loads(line)["text"] for line in SAMPLE.read_text().splitlines() if line.strip()]
    cut = sorted(len(t) for t in texts)[len(texts) // 2]
    job = load_job(_job(tmp_path, [{"min_chars": {"min_chars": cut}}], shard_docs=5))
    manifest = run_job(job, out=tmp_path / "out", log=lambda *_: None)
    short = sum(len(t) < cut for t in texts)
    assert 0 < short < len(texts)
    assert manifest["rejected"] == {"min_chars": short} and manifest["kept"] == len(texts) - short
    assert manifest["stages"] == [{"stage": "min_chars", "min_chars": cut}]
    kept = pl.read_parquet(tmp_path / "out" / "kept" / "*.parquet")
    assert kept["chars"].min() >= cut and sorted(kept["chars"]) == sorted(len(t) for t in texts if len(t) >= cut)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    histogram = report["histograms"]["chars"]
    assert histogram["axis"] == "log10 chars" and sum(histogram["counts"]) == len(texts)
    assert list(histogram["lines"]) == ["min_chars"]
    assert len(report["samples"]["rejected by min_chars"]) == min(3, short)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a" / "out.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_resources_default_to_a_share_and_the_jobs_workers():
    assert Resources().resolve(share=0.5, workers=4) == Resources(cpus=0.5, gpus=0.0, concurrency=4)
    gpu = Resources(cpus=2, gpus=1, concurrency=1).resolve(share=0.5, workers=4)
    assert gpu.ray_options() == {"num_cpus": 2, "num_gpus": 1} and gpu.concurrency == 1
