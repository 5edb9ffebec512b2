import pytest

from pipelines.spec import SpecError, load_job


def _job(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_demo_job_is_valid():
    job = load_job("jobs/demo.yaml")
    assert [s.kind for s in job.stages] == ["langid", "harmful", "perplexity"]
    assert job.models["harmful"].calibrate.reference == "benign" and job.models["harmful"].calibrate.guard == "web"


def test_unknown_key_names_its_path(tmp_path):
    path = _job(tmp_path, "name: x\ninputs: [{path: a.jsonl}]\nstages:\n  - perplexity: {model: m, kep: [head]}\n")
    with pytest.raises(SpecError) as e:
        load_job(path)
    assert "stages.0.perplexity.kep: Extra inputs are not permitted" in str(e.value)


def test_wrong_type_names_its_path(tmp_path):
    path = _job(
        tmp_path,
        "name: x\ninputs: [{path: a.jsonl}]\nshard_docs: many\nstages:\n  - perplexity: {model: m, keep: [top]}\n",
    )
    message = str(pytest.raises(SpecError, load_job, path).value)
    assert "shard_docs: Input should be a valid integer" in message
    assert "stages.0.perplexity.keep.0: Input should be 'head', 'middle' or 'tail'" in message


def test_stage_entry_needs_exactly_one_kind(tmp_path):
    path = _job(tmp_path, "name: x\ninputs: [{path: a.jsonl}]\nstages:\n  - {}\n")
    assert "exactly one key" in str(pytest.raises(SpecError, load_job, path).value)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    assert "YAML mapping" in str(pytest.raises(SpecError, load_job, _job(tmp_path, "- a\n- b\n")).value)
    assert "not valid YAML" in str(pytest.raises(SpecError, load_job, _job(tmp_path, "a: [\n")).value)
    assert "not found" in str(pytest.raises(SpecError, load_job, tmp_path / "nope.yaml").value)


def test_config_hash_ignores_where_output_goes(tmp_path):
    base = "name: x\ninputs: [{path: a.jsonl}]\n"
    a = load_job(_job(tmp_path, base + "output: out/a\n"))
    b = load_job(_job(tmp_path, base + "output: out/b\n"))
    c = load_job(_job(tmp_path, base + "shard_docs: 7\n"))
    assert a.config_hash() == b.config_hash() != c.config_hash()
