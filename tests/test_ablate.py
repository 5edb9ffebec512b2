"""curate ablate: exact averaging, deterministic merge and evaluation, pool reuse, retried failures.
Real Ray, real training (models/train.py) and real indexes on minuscule models and data."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

from curate.cli import main
from models.ablate import AblationError, TrainJob, evaluate_model, load_eval_sets, run_ablation, train_model
from models.ablate_spec import AblateSpec, AblateSpecError, load_ablate_spec
from models.checkpoint import load_checkpoint
from models.merge import average_state_dicts, macro_merge, merge_checkpoints
from models.registry import build_model

DATA = Path(__file__).resolve().parent.parent / "data"
TINY = {
    "size": "tiny",
    "seq_len": 32,
    "batch_size": 4,
    "steps": 4,
    "warmup_steps": 1,
    "eval_every": 4,
    "eval_batches": 1,
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 16},
}


def _models(n: int) -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(
            build_model("transformer", {"n_layer": 1, "n_head": 2, "n_embd": 16, "seq_len": 16, "vocab_size": 50})
        )
    return out


def test_uniform_and_weighted_averages_are_the_means_of_the_parts():
    states = [m.state_dict() for m in _models(3)]
    for weights in (None, [3.0, 1.0, 0.5]):
        w = torch.tensor(weights or [1.0, 1.0, 1.0], dtype=torch.float64)
        merged = average_state_dicts(states, weights)
        assert list(merged) == list(states[0])
        for key, value in merged.items():
            stacked = torch.stack([s[key].double() for s in states])
            expected = (stacked * (w / w.sum()).view(-1, *[1] * (stacked.dim() - 1))).sum(0)
            torch.testing.assert_close(value, expected.float(), rtol=1e-7, atol=1e-7)
            assert value.dtype == states[0][key].dtype
    # a weighted average is not the uniform one (the test would pass for either otherwise)
    key = next(k for k in merged if merged[k].is_floating_point() and merged[k].numel() > 1)
    assert not torch.equal(average_state_dicts(states)[key], merged[key])


def test_average_refuses_mismatched_parts():
    a, b = (m.state_dict() for m in _models(2))
    with pytest.raises(ValueError, match="2 weights for 1 models"):
        average_state_dicts([a], [1, 2])
    b = {k: (v[:1] if v.dim() else v) for k, v in b.items()}
    with pytest.raises(ValueError, match="different shapes"):
        average_state_dicts([a, b])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three partitions (by `domain`) of real documents, and a base set for the seed."""
    root = tmp_path_factory.mktemp("ablate_data")
    rows = {}
    for name in ("code_rust_book", "legal_terms_licenses", "literature_shakespeare", "medical_medquad"):
        with gzip.open(DATA / "domains" / f"{name}.jsonl.gz", "rt") as f:
            rows[name] = [json.loads(line) for line in f][:20]
    for name in ("code_rust_book", "literature_shakespeare", "medical_medquad"):
        docs = [{**r, "text": r["text"][:1500]} for r in rows[name]]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    extra = [{**r, "text": r["text"][:1500]} for r in rows["legal_terms_licenses"]]
    (root / "new").mkdir()
    (root / "new" / "legal.jsonl").write_text("".join(json.dumps(d) + "\n" for d in extra))
    with gzip.open(DATA / "wiki" / "wikitext2_valid.jsonl.gz", "rt") as f:
        base = [json.loads(line) for line in f][:20]
    (root / "base").mkdir()
    (root / "base" / "base.jsonl").write_text("".join(json.dumps(d) + "\n" for d in base))
    return root


def _spec(corpus: Path, out: Path, inputs: list[str] | None = None) -> AblateSpec:
    return AblateSpec.model_validate(
        {
            "name": "t",
            "output": str(out),
            "base": [str(corpus / "base")],
            "vocab": 300,
            "seed_train": TINY,
            "partition_train": {"steps": 2, "lr": 0.001},
            "partitions": {"inputs": inputs or [str(corpus / "*.jsonl")], "by": "domain"},
            "mixtures": {
                "sizes": [2, 3],
                "real": 3,
                "weighted": [{"code": 2, "medical": 1}],
                "macro": [[["code", "medical"], ["literature"]]],
            },
            "eval": {"windows": 4},
        }
    )


def _recording(log_dir: Path, fail: dict[str, int] | None = None):
    """A training function (a test double around the real one) that leaves a file per call and
    fails the first fail[name] calls of a model."""
    log_dir.mkdir(parents=True, exist_ok=True)
    fail = fail or {}

    def train(job: TrainJob) -> dict:
        kind = job.out_dir.parent.name
        calls = sorted(log_dir.glob(f"{kind}-{job.name}-*"))
        (log_dir / f"{kind}-{job.name}-{len(calls)}").touch()
        if len(calls) < fail.get(job.name, 0):
            raise RuntimeError(f"injected failure of {job.name}")
        return train_model(job)

    return train


def _calls(log_dir: Path) -> list[str]:
    return sorted(p.name for p in log_dir.iterdir()) if log_dir.exists() else []


@pytest.fixture(scope="module")
def first_run(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ablate_run") / "out"
    report = run_ablation(_spec(corpus, out), log=lambda _: None)
    return out, report


def test_run_builds_pool_merges_and_reports(first_run):
    out, report = first_run
    assert sorted(report["pool"]) == ["code", "literature", "medical"]
    for name, card in report["pool"].items():
        assert not card["reused"] and (out / "pool" / name / "checkpoint" / "model.safetensors").is_file()
        assert card["tokens"] == 2 * 4 * 32 and card["init_from"].endswith("seed/checkpoint")
    assert sorted(report["candidates"]) == sorted(
        [
            "code+literature",
            "code+medical",
            "literature+medical",
            "code+literature+medical",
            "code*2+medical*1",
            "(code+medical)+(literature)",
        ]
    )
    assert set(report["eval_sets"]) == {"code", "literature", "medical"}
    assert len(report["real"]) == 3
    for name, real in report["real"].items():  # k partitions: k times a partition's budget
        assert real["tokens"] == len(report["candidates"][name]["parts"]) * 2 * 4 * 32
    for _e, c in report["correlations"].items():
        assert c["mixtures"] == 3 and len(c["proxy"]) == 3
        assert c["pearson"] is None or -1 <= c["pearson"] <= 1
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Spearman" in html
    assert json.loads((out / "report.json").read_text())["candidates"].keys() == report["candidates"].keys()


def test_merged_checkpoint_is_the_mean_and_curate_eval_reads_it(first_run, tmp_path, capsys):
    out, report = first_run
    parts = [out / "pool" / n / "checkpoint" for n in ("code", "medical")]
    merged = merge_checkpoints(parts, tmp_path / "m", [2, 1])
    model, meta = load_checkpoint(merged)
    a, b = (load_checkpoint(p)[0].state_dict() for p in parts)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ((2 * a[key].double() + b[key].double()) / 3).float(), rtol=1e-7, atol=1e-7)
    assert meta["merge"]["weights"] == pytest.approx([2 / 3, 1 / 3])
    # macro-merge: the mean of the group means
    macro, _ = load_checkpoint(macro_merge([parts, [out / "pool" / "literature" / "checkpoint"]], tmp_path / "M"))
    c = load_checkpoint(out / "pool" / "literature" / "checkpoint")[0].state_dict()
    for key, value in macro.state_dict().items():
        expected = ((a[key].double() + b[key].double()) / 2 + c[key].double()) / 2
        torch.testing.assert_close(value, expected.float(), rtol=1e-7, atol=1e-7)
    # deterministic: merging again gives the same bytes, and the run's merge evaluates as reported
    again = merge_checkpoints(parts, tmp_path / "m2", [2, 1])
    assert (again / "model.safetensors").read_bytes() == (merged / "model.safetensors").read_bytes()
    sets = load_eval_sets({"code": out / "indexes" / "p-code"}, _spec(Path("unused"), out))
    first, second = (evaluate_model(out / "merged" / "code+medical", sets)["eval"] for _ in range(2))
    assert first == second == {"code": report["candidates"]["code+medical"]["eval"]["code"]}
    # a merged model is an ordinary checkpoint: curate eval reads it
    assert (
        main(
            [
                "eval",
                str(out / "merged" / "code+medical"),
                "--data",
                str(out / "indexes" / "p-code"),
                "--max-docs",
                "2",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["overall"]["tokens"] > 0


def test_rerun_reuses_the_pool_and_a_new_partition_trains_only_its_model(first_run, corpus, tmp_path):
    out, report = first_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    calls = tmp_path / "calls"
    again = run_ablation(_spec(corpus, copy), log=lambda _: None, train_fn=_recording(calls))
    assert _calls(calls) == []  # nothing retrained: seed, pool and real models all reused
    assert all(c["reused"] for c in again["pool"].values())
    assert again["candidates"]["code+medical"]["eval"] == report["candidates"]["code+medical"]["eval"]
    grown = run_ablation(
        _spec(corpus, copy, [str(corpus / "*.jsonl"), str(corpus / "new")]),
        log=lambda _: None,
        train_fn=_recording(calls),
    )
    pool_calls = [c for c in _calls(calls) if c.startswith(("pool-", "seed-"))]
    assert pool_calls == ["pool-legal-0"]
    assert not grown["pool"]["legal"]["reused"] and grown["pool"]["code"]["reused"]
    assert "code+legal" in grown["candidates"]


def test_failed_partition_is_reported_and_retried(first_run, corpus, tmp_path):
    out, _ = first_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "pool" / "medical")
    calls = tmp_path / "calls"
    report = run_ablation(_spec(corpus, copy), log=lambda _: None, train_fn=_recording(calls, {"medical": 1}))
    assert [c for c in _calls(calls) if c.startswith("pool-")] == ["pool-medical-0", "pool-medical-1"]
    assert report["retried"] == [
        {"model": "medical", "attempt": 1, "error": "RuntimeError: injected failure of medical"}
    ]
    assert (copy / "pool" / "medical" / "card.json").is_file()
    # failing every attempt stops the run with an error that names the partition; the others stay
    shutil.rmtree(copy / "pool" / "medical")
    spec = _spec(corpus, copy)
    spec.retries = 1
    lines = []
    with pytest.raises(AblationError, match=r"training failed after 2 attempts: medical \(RuntimeError"):
        run_ablation(spec, log=lines.append, train_fn=_recording(tmp_path / "c2", {"medical": 5}))
    assert any("training medical failed (attempt 1 of 2)" in line and "retrying" in line for line in lines)
    assert not (copy / "pool" / "medical" / "card.json").exists()
    assert (copy / "pool" / "code" / "card.json").is_file()


def test_job_errors_name_the_key(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("base: [x]\npartitions: {inputs: [y], byy: source}\n")
    with pytest.raises(AblateSpecError, match="partitions.byy: Extra inputs"):
        load_ablate_spec(job)
    job.write_text("base: [x]\npartitions: {inputs: [y]}\nseed_train: {size: huge}\n")
    with pytest.raises(AblateSpecError, match="unknown size 'huge'"):
        load_ablate_spec(job)
    assert main(["ablate", str(tmp_path / "missing.yaml")]) == 2
