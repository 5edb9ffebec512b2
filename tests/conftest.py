"""Shared fixtures: small real models (real lmplz) and a small real input mix, built once."""

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest

from curate import harmful, lm

# Without a GPU the kernel tests (tests/test_kernels_*.py) run the Triton kernels in Triton's interpreter;
# this must happen before anything imports triton (nothing above does).
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
# kernels/ compiles some CPU paths on first use (tens of seconds); tests run them eager, except the one
# test of the compiled paths (tests/test_kernels_compiled.py)
os.environ.setdefault("CURATE_KERNELS_COMPILE", "0")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
DAVIDSON = str(DATA / "harmful" / "davidson_hate_offensive.jsonl.gz")
# Files of real-model tests that take minutes on 2 cores (llama.cpp and Gemma, a Ray cluster for
# `ray job submit`): marked `slow`, which `make test-fast` (pytest -m "not slow") leaves out.
SLOW_FILES = {"test_llm_local.py", "test_ray_job_submit.py", "test_index_neural.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
    """A Wikipedia quality model, a harmful-only model and a benign reference, calibrated."""
    root = tmp_path_factory.mktemp("models")
    dirs = {name: str(root / name) for name in ("wiki", "harmful", "benign")}
    lm.train([lm.source(str(DATA / "wiki"))], dirs["wiki"], vocab=4000)
    lm.train([lm.source(DAVIDSON, {"harmful": True}, "train")], dirs["harmful"], vocab=4000)
    lm.train(
        [lm.source(DAVIDSON, {"harmful": False}, "train"), lm.source(str(DATA / "wiki"))], dirs["benign"], vocab=4000
    )
    harmful.calibrate_model(dirs["harmful"], [DAVIDSON], reference=dirs["benign"])
    return dirs


def _head(path: Path, n: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [next(f) for _ in range(n)]


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> Path:
    """240 real documents in three files plus the broken-records fixture (8 records, 7 bad)."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "owt.jsonl").write_text("".join(_head(DATA / "web" / "openwebtext_1k.jsonl.gz", 140)))
    (root / "cc.jsonl").write_text("".join(_head(DATA / "web" / "dolma_cc_2019.jsonl.gz", 60)))
    (root / "talk.jsonl").write_text("".join(_head(DATA / "harmful" / "jigsaw_toxic_sample.jsonl.gz", 40)))
    shutil.copy(DATA / "samples" / "broken.jsonl", root / "broken.jsonl")
    return root


def write_job(path: Path, input_dir: Path, models: dict[str, str], **overrides) -> Path:
    job = {
        "name": "t",
        "inputs": [{"path": str(input_dir / n)} for n in ("owt.jsonl", "cc.jsonl", "talk.jsonl", "broken.jsonl")],
        "shard_docs": 50,
        "batch_docs": 32,
        "max_doc_bytes": 200_000,
        "workers": 2,
        "stages": [
            {"harmful": {"model": models["harmful"]}},
            {"perplexity": {"model": models["wiki"], "keep": ["head", "middle"]}},
        ],
    }
    job.update(overrides)
    path.write_text(json.dumps(job))  # JSON is YAML
    return path
